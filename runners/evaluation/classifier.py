"""A small CNN classifier of the dataset's images: the feature extractor for FID / KID on small datasets.

On ImageNet the evaluator is Inception-v3 (pool features, 2048-d). On small datasets such as 16x16 digits,
Inception features of upsampled thumbnails mean little, so we train a small classifier on the dataset itself
and use its penultimate layer as the feature space (the same idea as Inception's pool3, at our scale). The
same classifier also scores class-conditional samples: the share of generated images it labels as the class
they were generated for (`class_accuracy` in runners/evaluation/metrics.py).

Architecture (any image_size that is a multiple of 8; shapes for a (B, C, 16, 16) input):

    conv3x3 C->16, GN, ReLU                    # (B, 16, 16, 16)
    conv3x3 stride 2 16->32, GN, ReLU          # (B, 32, 8, 8)
    conv3x3 stride 2 32->64, GN, ReLU          # (B, 64, 4, 4)
    conv3x3 stride 2 64->128, GN, ReLU         # (B, 128, 2, 2)  (= H / 8)
    global average pool                        # (B, 128)
    linear 128->feature_dim, ReLU -> features  # (B, feature_dim)
    linear feature_dim->num_classes -> logits  # (B, num_classes)

GroupNorm rather than BatchNorm: the network computes the same function in train and eval mode, so the
features of a batch never depend on what else is in the batch (generated and real images are featurised
in different batches).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from runners.data import LabelledTensors, LoaderSettings, item_shape, loader as make_loader, stream

CLASSIFIER_CODE_VERSION = "classifier-1"

# Defaults of train_classifier, tuned on digits 16x16 (1437 training images): about 8 s on 2 CPU cores,
# held-out accuracy about 0.98 (see tests/runners_tests/test_evaluation.py).
DEFAULT_STEPS = 300
DEFAULT_LR = 3e-3
DEFAULT_BATCH_SIZE = 64
DEFAULT_WEIGHT_DECAY = 1e-4


def _check_images(images: Tensor, *, channels: int, image_size: int, name: str = "images") -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (channels, image_size, image_size):
        raise ValueError(
            f"{name} must be (B, {channels}, {image_size}, {image_size}) float in [0, 1], but got shape "
            f"{tuple(images.shape)}; pass images of the dataset the classifier was trained on"
        )


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # 8 groups (or fewer for thin layers): normalises each image on its own, see the module docstring.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class DatasetClassifier(nn.Module):
    """A small CNN over images `(B, C, H, W)` in [0, 1] with a `feature_dim` penultimate layer.

    `forward` gives logits `(B, num_classes)`; `features` gives the penultimate activations
    `(B, feature_dim)` used as the FID / KID feature space.
    """

    def __init__(self, *, channels: int, image_size: int, num_classes: int, feature_dim: int = 64) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, but got channels={channels}; try 1 (digits) or 3 (RGB)")
        if image_size < 8 or image_size % 8 != 0:
            raise ValueError(
                f"image_size must be a positive multiple of 8 (three stride-2 stages), but got "
                f"image_size={image_size}; try {max(8, image_size // 8 * 8)}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, but got num_classes={num_classes}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, but got feature_dim={feature_dim}; try 64 or 128")
        self.channels = channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.trunk = nn.Sequential(
            _conv_block(channels, 16, 1),  # (B, 16, H, W)
            _conv_block(16, 32, 2),  # (B, 32, H/2, W/2)
            _conv_block(32, 64, 2),  # (B, 64, H/4, W/4)
            _conv_block(64, 128, 2),  # (B, 128, H/8, W/8)
        )
        self.to_features = nn.Linear(128, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict[str, int]:
        """The constructor kwargs (what config.json holds)."""
        return {
            "channels": self.channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
        }

    def features(self, images: Tensor) -> Tensor:
        """Images `(B, C, H, W)` in [0, 1] -> penultimate features `(B, feature_dim)` (post-ReLU)."""
        _check_images(images, channels=self.channels, image_size=self.image_size)
        x = images * 2.0 - 1.0  # centre the inputs: [0, 1] -> [-1, 1]
        x = self.trunk(x)  # (B, 128, H/8, W/8)
        x = x.mean(dim=(2, 3))  # (B, 128), global average pool
        return F.relu(self.to_features(x))  # (B, feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        """Images `(B, C, H, W)` in [0, 1] -> logits `(B, num_classes)`."""
        return self.head(self.features(images))


# ----------------------------------------------------------------------------------------------------------------
# training


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by its own random integer offset in [-max_shift, max_shift] on each axis.

    Pixels shifted in are zero (the background of digits; dark borders elsewhere). Offsets come from
    `generator`, which must live on the images' device. Returns a new tensor `(B, C, H, W)`.
    """
    if max_shift == 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))  # (B, C, H+2s, W+2s)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator, device=images.device)  # (2, B)
    rows = offsets[0][:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[1][:, None] + torch.arange(w, device=images.device)  # (B, W)
    batch_index = torch.arange(b, device=images.device)[:, None, None, None]  # (B, 1, 1, 1)
    channel_index = torch.arange(c, device=images.device)[None, :, None, None]  # (1, C, 1, 1)
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def train_classifier(
    train_images: Tensor | Dataset,
    train_labels: Tensor | None = None,
    *,
    num_classes: int,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    augment: bool = True,
    feature_dim: int = 64,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    loader: LoaderSettings | None = None,
    device: torch.device | str | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 50,
) -> DatasetClassifier:
    """Train a `DatasetClassifier` on `(train_images (N, C, H, W) in [0, 1], train_labels (N,) int64)`, or on a
    dataset of (image, label) items streamed through a DataLoader (`loader`: workers, pinned memory).

    AdamW with a cosine learning-rate decay to 0 over `steps`, minibatches drawn with replacement.
    With `augment`, each image is shifted by up to image_size/16 pixels (1 px at 16x16) so the classifier
    does not rely on exact pixel placement, which generated images do not reproduce.
    Deterministic given `seed` (weights, batches and shifts come from seeded generators; the global RNG is
    left untouched) on a given device and thread count, whatever the loader's workers. Trains on `device`
    (default: the images' device, or the CPU for a dataset); returns the model in eval mode there.
    on_log(step, {"loss": mean since the previous log, "lr"}) every `log_every` steps and at the last
    (runners.train_speed.RateMeter adds the throughput).
    """
    if isinstance(train_images, Tensor):
        if train_images.ndim != 4:
            raise ValueError(
                f"train_images must be (N, C, H, W), but got shape {tuple(train_images.shape)}; add a channel axis"
            )
        n = train_images.shape[0]
        if train_labels is None or train_labels.shape != (n,):
            raise ValueError(
                f"train_labels must be (N,) = ({n},) to match train_images, but got "
                f"{None if train_labels is None else tuple(train_labels.shape)}"
            )
        labels = train_labels.long()
        if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"labels must lie in [0, num_classes) = [0, {num_classes}), but got labels in "
                f"[{int(labels.min())}, {int(labels.max())}]; pass the dataset's num_classes"
            )
        device = train_images.device if device is None else device
        dataset: Dataset = LabelledTensors(train_images.detach().cpu(), labels.cpu())
    else:
        dataset = train_images
    device = torch.device(device if device is not None else "cpu")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("train_images must hold at least one image, but got N=0")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"steps, batch_size and lr must be positive, but got steps={steps}, batch_size={batch_size}, lr={lr}; "
            f"try steps={DEFAULT_STEPS}, batch_size={DEFAULT_BATCH_SIZE}, lr={DEFAULT_LR}"
        )
    channels, height, width = item_shape(dataset)
    if height != width:
        raise ValueError(f"images must be square, but got H={height}, W={width}; centre-crop them first")
    # Initialise under a forked global RNG: nn.Module init draws from it, and we must not disturb the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DatasetClassifier(channels=channels, image_size=height, num_classes=num_classes,
                                  feature_dim=feature_dim)
    model.to(device)
    model.train()

    # Weight decay on matrices / conv kernels only, not on biases and norm gains.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    max_shift = max(1, height // 16) if augment else 0
    # One seeded stream drives the item indices and the shifts of every step, in turn (index draw, then shift
    # draw). The loader reads ahead, so its sampler replays the stream skipping the shift draws, and the loop
    # replays it skipping the index draws: the same batches and shifts as reading in step, with any workers.
    generator = torch.Generator(device=device).manual_seed(seed)
    sampler_generator = torch.Generator(device=device).manual_seed(seed)

    def index_batches() -> Iterator[list[int]]:  # what the loader reads, step by step
        for _ in range(steps):
            index = torch.randint(0, n, (batch_size,), generator=sampler_generator, device=device)  # (B,)
            if augment:
                torch.randint(0, 2 * max_shift + 1, (2, batch_size), generator=sampler_generator, device=device)
            yield index.tolist()

    feed = stream(make_loader(dataset, loader or LoaderSettings(), batch_sampler=index_batches()))
    since_log: list[Tensor] = []
    for step, (batch, batch_labels) in enumerate(feed):
        if int(batch_labels.min()) < 0 or int(batch_labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, num_classes) = [0, {num_classes}), but got "
                             f"{int(batch_labels.min())}..{int(batch_labels.max())}; pass the dataset's num_classes")
        # Cosine decay from lr to 0: a short schedule that still ends on a settled model.
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        torch.randint(0, n, (batch_size,), generator=generator, device=device)  # the sampler's draw (see above)
        batch = batch.to(device, non_blocking=True)  # (B, C, H, W)
        if augment:
            batch = random_shift(batch, max_shift, generator)
        loss = F.cross_entropy(model(batch), batch_labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_log is not None:
            since_log.append(loss.detach())
            if (step + 1) % log_every == 0 or step == steps - 1:  # one device sync per log, not per step
                on_log(step, {"loss": torch.stack(since_log).mean().item(), "lr": optimizer.param_groups[0]["lr"]})
                since_log = []
    model.eval()
    return model


def classifier_train_flops(channels: int, image_size: int, num_classes: int, feature_dim: int = 64) -> float:
    """Training FLOPs per image of the classifier `train_classifier` builds: 3 x its forward's counted
    convolution and matmul FLOPs on one image (runners.train_speed.measured_train_flops)."""
    from runners.train_speed import measured_train_flops

    model = DatasetClassifier(channels=channels, image_size=image_size, num_classes=num_classes,
                              feature_dim=feature_dim)
    image = torch.zeros(1, channels, image_size, image_size)
    return measured_train_flops(lambda: model(image))


# ----------------------------------------------------------------------------------------------------------------
# inference


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: DatasetClassifier, images: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted labels `(N,)` int64 (on the images' device) of images `(N, C, H, W)` in [0, 1].

    Batches are moved to the model's device; the model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    try:
        out = [
            model(images[i : i + batch_size].to(device).float()).argmax(dim=-1)  # (b,)
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, dtype=torch.int64, device=images.device)
    return torch.cat(out).to(images.device)  # (N,)


def accuracy(model: DatasetClassifier, images: Tensor, labels: Tensor) -> float:
    """Share of images `(N, C, H, W)` whose predicted label equals `labels (N,)`; in [0, 1]."""
    if labels.shape != (len(images),):
        raise ValueError(
            f"labels must be (N,) = ({len(images)},) to match images, but got shape {tuple(labels.shape)}"
        )
    if len(images) == 0:
        raise ValueError("accuracy needs at least one image, but got N=0")
    predicted = predict(model, images)
    return float((predicted == labels.to(predicted.device)).double().mean())


@torch.no_grad()
def accuracy_of_batches(model: DatasetClassifier, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """`accuracy` over (images, labels) batches, e.g. a held-out split streamed by `runners.data.batches`."""
    correct, total = 0, 0
    for images, labels in batches:
        predicted = predict(model, images)
        correct += int((predicted == labels.to(predicted.device)).sum())
        total += len(labels)
    if total == 0:
        raise ValueError("accuracy needs at least one image, but got N=0")
    return correct / total


# ----------------------------------------------------------------------------------------------------------------
# persistence


def save_classifier(model: DatasetClassifier, folder: str | Path) -> None:
    """Write `model.safetensors` (the weights, on CPU) and `config.json` (the constructor kwargs) into folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"code_version": CLASSIFIER_CODE_VERSION})
    (folder / "config.json").write_text(json.dumps(model.config(), indent=2, sort_keys=True) + "\n")


def load_classifier(folder: str | Path) -> DatasetClassifier:
    """Read a classifier written by `save_classifier`; returned on CPU in eval mode (move it with `.to`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(
            f"a saved classifier folder must hold model.safetensors and config.json, but {str(folder)!r} lacks "
            f"{', '.join(p.name for p in (weights, config) if not p.is_file())}; run the classifier stage first"
        )
    model = DatasetClassifier(**json.loads(config.read_text()))
    model.load_state_dict(load_file(str(weights), device="cpu"))
    model.eval()
    return model
