"""The evaluation protocol, recorded next to every metric (ELM.md "Evaluation").

Sample count, class balance, reference set, feature extractor and k change FID / precision / recall
by more than many ablation effects, so every result row carries a flat protocol record:

    protocol_extractor           feature space name (metrics.feature_extractor_name)
    protocol_extractor_sha256    checksum of the extractor's weights (file sha256 for Inception; sha256
                                 of the safetensors serialisation of the state dict for a classifier)
    protocol_samples             number of generated samples scored
    protocol_samples_per_class   samples per class (class-balanced sampling; 0 = not balanced)
    protocol_image_size          image side in pixels, as generated (before any extractor resize)
    protocol_reference           what the reference set is (e.g. "digits/heldout", a file name)
    protocol_reference_sha256    checksum of the reference (file sha256, or `array_sha256` of features)
    protocol_pr_k                k of precision / recall
    protocol_versions            "torch-fidelity=X;torch=Y"
    protocol_sampling_seed       seed of the sampler that produced the samples
    protocol_sampling_precision  fp32 or bf16: the precision of the generator's forward passes while sampling
                                 (bf16 changes the sampled tokens, so fp32 and bf16 numbers never compare)

`protocol_id(record)` hashes the fields that decide whether two numbers are comparable: all of the
above except the sampling seed (a seed is a repeat of the same protocol) and the library versions
(recorded for audit; they move numbers at rounding level, and would split every comparison at an
upgrade). A field whose value is its `PROTOCOL_DEFAULTS` entry (protocol_sampling_precision fp32) is left out
of the hash, so the ids of records made before the field existed, all fp32, are unchanged; a record without it
counts as holding that default.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version

import numpy as np
import torch
from torch import Tensor

from runners.evaluation.metrics import FeatureExtractor, feature_extractor_name
from space.protocol import PROTOCOL_DEFAULTS, PROTOCOL_ID_KEYS, PROTOCOL_KEYS  # torch-free: reports read them too


def array_sha256(array: np.ndarray | Tensor) -> str:
    """Hex sha256 of an array's values as little-endian float64 in C order, with its shape.

    The same features or statistics give the same checksum whatever their dtype or device.
    """
    if isinstance(array, Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    values = np.ascontiguousarray(np.asarray(array, dtype="<f8"))
    digest = hashlib.sha256(repr(values.shape).encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


def statistics_sha256(statistics: dict[str, np.ndarray]) -> str:
    """Hex sha256 of FID statistics {"mu", "sigma"} (or any dict of arrays), keys in sorted order."""
    digest = hashlib.sha256()
    for key in sorted(statistics):
        digest.update(key.encode())
        digest.update(array_sha256(statistics[key]).encode())
    return digest.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Hex sha256 of a module's state dict serialised by safetensors (CPU, contiguous, no metadata)."""
    from safetensors.torch import save

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    return hashlib.sha256(save(state)).hexdigest()


def extractor_sha256(extractor: FeatureExtractor) -> str:
    """Checksum of an extractor's weights: its `weights_sha256` (Inception's file), else its state dict's."""
    checksum = getattr(extractor, "weights_sha256", None)
    if checksum is not None:
        return str(checksum)
    if isinstance(extractor, torch.nn.Module):
        return state_dict_sha256(extractor)
    raise ValueError(
        f"cannot checksum extractor {type(extractor).__name__}: it is neither an nn.Module nor has weights_sha256; "
        f"give it a weights_sha256 attribute"
    )


def protocol(
    *,
    extractor: FeatureExtractor,
    num_samples: int,
    samples_per_class: int,
    image_size: int,
    reference: str,
    reference_checksum: str,
    k: int,
    sampling_seed: int,
    sampling_precision: str = "fp32",
) -> dict[str, str | int]:
    """The flat protocol record (PROTOCOL_KEYS, in order) of one evaluation."""
    if sampling_precision not in ("fp32", "bf16"):
        raise ValueError(f"sampling_precision must be one of ['fp32', 'bf16'], but got {sampling_precision!r}")
    for name, value in (("num_samples", num_samples), ("image_size", image_size), ("k", k)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, but got {name}={value!r}")
    if not isinstance(samples_per_class, int) or samples_per_class < 0:
        raise ValueError(
            f"samples_per_class must be an int >= 0 (0 = not class-balanced), but got {samples_per_class!r}"
        )
    if not reference or not reference_checksum:
        raise ValueError(
            f"reference and reference_checksum must be non-empty, but got {reference!r}, {reference_checksum!r}; "
            f"checksum the reference file (inception.file_sha256) or its features (array_sha256)"
        )
    return {
        "protocol_extractor": feature_extractor_name(extractor),
        "protocol_extractor_sha256": extractor_sha256(extractor),
        "protocol_samples": num_samples,
        "protocol_samples_per_class": samples_per_class,
        "protocol_image_size": image_size,
        "protocol_reference": reference,
        "protocol_reference_sha256": reference_checksum,
        "protocol_pr_k": k,
        "protocol_versions": f"torch-fidelity={version('torch-fidelity')};torch={torch.__version__}",
        "protocol_sampling_seed": int(sampling_seed),
        "protocol_sampling_precision": sampling_precision,
    }


def protocol_id(record: dict[str, str | int]) -> str:
    """12-hex-digit id of the comparable part of a protocol record (PROTOCOL_ID_KEYS; no seed, no versions; a
    field at its PROTOCOL_DEFAULTS value, or absent, is left out)."""
    record = {**PROTOCOL_DEFAULTS, **record}
    missing = [key for key in PROTOCOL_ID_KEYS if key not in record]
    if missing:
        raise ValueError(
            f"a protocol record must hold {list(PROTOCOL_ID_KEYS)}, but it lacks {missing}; build it with protocol()"
        )
    hashed = [key for key in PROTOCOL_ID_KEYS if key not in PROTOCOL_DEFAULTS or record[key] != PROTOCOL_DEFAULTS[key]]
    canonical = json.dumps({key: record[key] for key in hashed}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
