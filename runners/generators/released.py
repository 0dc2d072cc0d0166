"""The authors' released ELM generators (AR `L-2-10.pth` and the like, MLM `mlmL-1-16.pth`) as project modules.

A released generator file is a plain state dict of the authors' module. Its tensors map one to one onto
ARGenerator / MLMGenerator tensors of the same shape, under these names (i: block, k: sub-token index):

    authors' key                              project key                         note
    cls_embedding.embedding_table.weight      class_embedding.weight              (classes + 1, C)
    tok_embedder.weight          (AR, K = 1)  token_embeddings.0.weight           (2^c, C)
    tok_embedder.{k}.weight      (AR, K > 1)  token_embeddings.{k}.weight         (2^c, C)
    proj.weight                  (AR, K > 1)  token_projection.weight             (C, K C)
    tok_embedder.weight          (MLM)        token_embedding.weight              (2^c + 1, C), last row [MASK]
    layers.{i}.attention.wqkv.weight          blocks.{i}.attention.qkv.weight     (3 C, C)
    layers.{i}.attention.wo.weight            blocks.{i}.attention.proj.weight    (C, C)
    layers.{i}.feed_forward.w{1,2,3}.weight   blocks.{i}.mlp.w{1,2,3}.weight
    layers.{i}.attention_norm.weight          blocks.{i}.attention_norm.weight
    layers.{i}.ffn_norm.weight                blocks.{i}.mlp_norm.weight
    norm.weight                               norm.weight
    output.weight                (AR, K = 1)  heads.0.weight                      (2^c, C)
    output.{k}.weight            (AR, K > 1)  heads.{k}.weight                    (2^c, C)
    mlm_layer.fc.{weight,bias}   (MLM)        head.fc.{weight,bias}
    mlm_layer.ln.{weight,bias}   (MLM)        head.norm.{weight,bias}
    mlm_layer.bias               (MLM)        head.bias                           (1, 1, 2^c + 1) -> (2^c + 1,)

The authors' MLM module also holds tensors its forward never reads: a frozen position table
`pos_embed.weight` (N, C), `proj.weight` (C, K C) for K > 1 and zero-initialised output heads
`output[.k].weight` (2^c + 1, C). They are accepted when present (their shapes checked, `pos_embed`
also tells the grid) and left out; the released MLM files hold no output heads (their sizes say so).
Nothing else is accepted: a missing or unknown key, or a shape that differs, is refused.

The architecture is read from the shapes: C from `norm.weight`, the depth from the `layers.{i}` indices,
the size rung from (depth, C), the classes from the class table (one extra row: the null class), the
vocabulary K-c from the token tables (MLM: K from `proj` / `output` when present, else the caller's
vocabulary, else 1, as every released MLM is 1-16). The latent grid is not in an AR file: 16 x 16 (256 px
images, downsampling 16) unless the caller says otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from runners.generators.ar import GENERATOR_SIZES, ARGenerator, GeneratorConfig
from runners.generators.mlm import MLMGenerator
from runners.generators.mlm import parameter_count as mlm_parameter_count

RELEASED_GRID = (16, 16)
"""latent grid of every released generator: 256 px images, downsampling 16"""

_BLOCK_RENAMES = {
    "attention.wqkv.weight": "attention.qkv.weight",
    "attention.wo.weight": "attention.proj.weight",
    "feed_forward.w1.weight": "mlp.w1.weight",
    "feed_forward.w2.weight": "mlp.w2.weight",
    "feed_forward.w3.weight": "mlp.w3.weight",
    "attention_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "mlp_norm.weight",
}
_MLM_HEAD_RENAMES = {
    "mlm_layer.fc.weight": "head.fc.weight",
    "mlm_layer.fc.bias": "head.fc.bias",
    "mlm_layer.ln.weight": "head.norm.weight",
    "mlm_layer.ln.bias": "head.norm.bias",
    "mlm_layer.bias": "head.bias",
}


def key_map(modeling: str, config: GeneratorConfig) -> dict[str, str]:
    """authors' key -> project key, for every tensor the project module holds (the table above)."""
    K = config.token_each
    keys = {"cls_embedding.embedding_table.weight": "class_embedding.weight", "norm.weight": "norm.weight"}
    for i in range(config.layers):
        keys.update({f"layers.{i}.{theirs}": f"blocks.{i}.{ours}" for theirs, ours in _BLOCK_RENAMES.items()})
    if modeling == "ar":
        if K == 1:
            keys.update({"tok_embedder.weight": "token_embeddings.0.weight", "output.weight": "heads.0.weight"})
        else:
            keys.update({f"tok_embedder.{k}.weight": f"token_embeddings.{k}.weight" for k in range(K)})
            keys.update({f"output.{k}.weight": f"heads.{k}.weight" for k in range(K)})
            keys["proj.weight"] = "token_projection.weight"
    elif modeling == "mlm":
        keys["tok_embedder.weight"] = "token_embedding.weight"
        keys.update(_MLM_HEAD_RENAMES)
    else:
        raise ValueError(f"modeling must be 'ar' or 'mlm', but got modeling={modeling!r}")
    return keys


def unused_mlm_tensors(config: GeneratorConfig) -> dict[str, tuple[int, ...]]:
    """Tensors of the authors' MLM module its forward never reads: key -> shape (accepted, then left out)."""
    C, K, V = config.width, config.token_each, config.vocab_size
    unused: dict[str, tuple[int, ...]] = {"pos_embed.weight": (config.seq_len, C)}
    if K > 1:
        unused["proj.weight"] = (C, K * C)
        unused.update({f"output.{k}.weight": (V + 1, C) for k in range(K)})
    else:
        unused["output.weight"] = (V + 1, C)
    return unused


def authors_parameter_count(modeling: str, config: GeneratorConfig) -> int:
    """What sum(p.numel()) over the authors' module gives: the project count for AR; for MLM the project
    count plus the tensors the authors' forward never reads (position table, output heads, projection)."""
    if modeling == "ar":
        from runners.generators.ar import parameter_count

        return parameter_count(config)
    return mlm_parameter_count(config) + sum(math.prod(shape) for shape in unused_mlm_tensors(config).values())


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"the checkpoint has no tensor {key!r}, which every released ELM generator holds; "
                         f"is it a generator file of the authors (e.g. L-2-10.pth, mlmL-1-16.pth)?")
    return tuple(state[key].shape)


def _log2(rows: int, key: str) -> int:
    bits = rows.bit_length() - 1
    if rows < 2 or 2**bits != rows:
        raise ValueError(f"{key} has {rows} rows, which is no power of two (2^c ids per sub-token); "
                         f"the file fits no ELM vocabulary")
    return bits


def parse_vocab(text: str) -> tuple[int, int]:
    """'K-c' -> (K, c), e.g. '2-10' -> (2, 10)."""
    match = re.fullmatch(r"\s*(\d+)-(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(f"vocab must read K-c (sub-tokens per position - bits each), e.g. 2-10, but got {text!r}")
    return int(match.group(1)), int(match.group(2))


def infer_config(
    state: Mapping[str, Tensor],
    modeling: str,
    *,
    vocab: tuple[int, int] | None = None,
    size: str | None = None,
    num_classes: int | None = None,
    grid: tuple[int, int] | None = None,
) -> GeneratorConfig:
    """The GeneratorConfig a released state dict was made with, read from its shapes and checked against
    what the caller says (vocab (K, c), size, num_classes, grid); ValueError naming the field on a mismatch."""
    if modeling not in ("ar", "mlm"):
        raise ValueError(f"modeling must be 'ar' or 'mlm', but got modeling={modeling!r}")
    width = _shape(state, "norm.weight")[0]
    blocks = sorted({int(m.group(1)) for key in state if (m := re.match(r"layers\.(\d+)\.", key))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f"the checkpoint's transformer blocks must be layers.0 .. layers.L-1, but it holds "
                         f"{blocks[:5]}{'...' if len(blocks) > 5 else ''}; is it an ELM generator file?")
    fits = [name for name, rung in GENERATOR_SIZES.items() if (rung.layers, rung.width) == (len(blocks), width)]
    if not fits:
        known = ", ".join(f"{n} {r.layers}x{r.width}" for n, r in GENERATOR_SIZES.items())
        raise ValueError(f"a generator with {len(blocks)} blocks of width {width} fits no size rung ({known}); "
                         f"the file is no ELM generator of a known size")
    found_size = fits[0]
    if size is not None and size != found_size:
        raise ValueError(f"size: the flag says {size!r}, but the checkpoint's {len(blocks)} blocks of width {width} "
                         f"are size {found_size!r}; drop --size or pass --size {found_size}")
    classes = _shape(state, "cls_embedding.embedding_table.weight")[0] - 1
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"num_classes: the flag says {num_classes}, but the class table holds {classes} classes "
                         f"(+ the null class); pass --num-classes {classes}")

    if modeling == "ar":
        if "tok_embedder.weight" in state:
            tables = ["tok_embedder.weight"]
        else:
            tables = [f"tok_embedder.{k}.weight" for k in range(len(state)) if f"tok_embedder.{k}.weight" in state]
            if not tables:
                raise ValueError("the checkpoint has no token table (tok_embedder.weight or tok_embedder.0.weight); "
                                 "is it an AR generator file of the authors?")
        token_each = len(tables)
        bits = _log2(_shape(state, tables[0])[0], tables[0])
        heads = ["output.weight"] if token_each == 1 else [f"output.{k}.weight" for k in range(token_each)]
        for head in heads:
            if head in state and tuple(state[head].shape)[0] != 2**bits:
                raise ValueError(f"vocab: the token tables give 2^{bits} ids per sub-token, but head {head} has "
                                 f"{tuple(state[head].shape)[0]} outputs; the file is inconsistent")
    else:
        bits = _log2(_shape(state, "tok_embedder.weight")[0] - 1, "tok_embedder.weight (less the [MASK] row)")
        if "proj.weight" in state:
            token_each = _shape(state, "proj.weight")[1] // width
        elif "output.0.weight" in state:
            token_each = len([k for k in range(len(state)) if f"output.{k}.weight" in state])
        elif "output.weight" in state:
            token_each = 1
        else:  # nothing in the file tells K: the caller's vocabulary, else 1 (every released MLM is 1-16)
            token_each = vocab[0] if vocab is not None else 1
        if "pos_embed.weight" in state:
            positions = _shape(state, "pos_embed.weight")[0]
            side = math.isqrt(positions)
            if grid is None:
                if side * side != positions:
                    raise ValueError(f"pos_embed.weight has {positions} rows, no square grid; pass --grid HxW")
                grid = (side, side)
            elif grid[0] * grid[1] != positions:
                raise ValueError(f"grid: the flag says {grid[0]}x{grid[1]} = {grid[0] * grid[1]} positions, but "
                                 f"pos_embed.weight holds {positions}; pass --grid {side}x{side}")
    if vocab is not None and vocab != (token_each, bits):
        raise ValueError(f"vocab: the flag says {vocab[0]}-{vocab[1]}, but the checkpoint's tables and heads are "
                         f"{token_each}-{bits}; pass --vocab {token_each}-{bits}")
    height, width_cells = grid if grid is not None else RELEASED_GRID
    return GeneratorConfig(size=found_size, grid_height=height, grid_width=width_cells, token_each=token_each,
                           bits_each=bits, num_classes=classes)


def project_state(state: Mapping[str, Tensor], modeling: str, config: GeneratorConfig) -> dict[str, Tensor]:
    """Rename a released state dict into the project module's keys (the table above), checking every shape.

    Refuses (ValueError) a missing tensor, an unknown one, or a shape that differs from the module's."""
    model = _on_meta(modeling, config)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    renames = key_map(modeling, config)
    unused = unused_mlm_tensors(config) if modeling == "mlm" else {}
    missing = sorted(set(renames) - set(state))
    unknown = sorted(set(state) - set(renames) - set(unused))
    if missing or unknown:
        raise ValueError(
            f"the checkpoint does not hold the tensors of an ELM {modeling} generator {config.size} "
            f"{config.token_each}-{config.bits_each}: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unknown {unknown[:4]}{'...' if len(unknown) > 4 else ''}"
        )
    for key, shape in unused.items():
        if key in state and tuple(state[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(state[key].shape)}, but an ELM {modeling} generator "
                             f"{config.size} {config.token_each}-{config.bits_each} has {shape}")
    out: dict[str, Tensor] = {}
    for theirs, ours in renames.items():
        tensor = state[theirs]
        if theirs == "mlm_layer.bias" and tensor.dim() == 3 and tensor.shape[:2] == (1, 1):
            tensor = tensor.reshape(-1)  # (1, 1, V + 1) -> (V + 1,)
        if tuple(tensor.shape) != expected[ours]:
            raise ValueError(f"{theirs} has shape {tuple(state[theirs].shape)}, but {ours} of an ELM {modeling} "
                             f"generator {config.size} {config.token_each}-{config.bits_each} has {expected[ours]}")
        if not tensor.is_floating_point():
            raise ValueError(f"{theirs} holds {tensor.dtype} values; a generator's weights are floating point")
        out[ours] = tensor
    return out


def _on_meta(modeling: str, config: GeneratorConfig) -> nn.Module:
    with torch.device("meta"):
        return (ARGenerator if modeling == "ar" else MLMGenerator)(config)


def generator_from_released(
    state: Mapping[str, Tensor],
    modeling: str,
    *,
    vocab: tuple[int, int] | None = None,
    size: str | None = None,
    num_classes: int | None = None,
    grid: tuple[int, int] | None = None,
) -> tuple[nn.Module, GeneratorConfig]:
    """A released generator state dict -> (project module with its weights, loaded strictly, float32, eval
    mode; its GeneratorConfig). ValueError naming the field and the fix when the file fits no architecture
    or disagrees with the flags."""
    config = infer_config(state, modeling, vocab=vocab, size=size, num_classes=num_classes, grid=grid)
    weights = project_state(state, modeling, config)
    model = _on_meta(modeling, config)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True, assign=True)
    return model.eval(), config
