"""Intermediate evaluations: FID / KID / class accuracy of a generator at steps N, 2N, ... of its training.

A generator stage with `intermediate_every = N > 0` hands an `IntermediateEvaluator` to the training loop
as a hook (runners/train_generator.py `Hook`). Every N completed steps it

    samples a fixed class-balanced set     `intermediate_samples_per_class` per class, one fixed seed
                                           (the same noise at every step: the curve shows the model change)
    scores it against the reference        the reference stage's features (KID, precision / recall) and
                                           stats (FID); class accuracy by the dataset classifier
    appends a row                          {step, fid, kid, kid_std, precision, recall, class_accuracy,
                                            num_samples, protocol_*, protocol_id, intermediate: True}

The hook runs on the model in eval mode without gradients and draws only from its own seeded generators,
never from torch's global RNG, so the trained weights are bit-identical with or without it (tested).

Durability (like sweep/worker.py's LossLog): rows go to `intermediate.jsonl` in the stage's checkpoint
folder as they are made. A stage resumed after a kill keeps them and skips steps already scored (the
weights at a step are bit-identical after a resume, so the row would be too); `catch_up` scores the step
of the checkpoint it resumed from when the kill came between that checkpoint and its evaluation. At the
end `finish` scores the last step (if it is a multiple of N) and writes `intermediate.parquet` into the
artifact. `sweep.results.Results.intermediate()` reads them back, never mixed into the evaluations.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor, nn

from runners.evaluation.classifier import DatasetClassifier
from runners.evaluation.metrics import FeatureExtractor
from runners.evaluation.reference import ReferenceFeatures
from runners.evaluation.streaming import StreamingScorer
from runners.train_generator import Hook

INTERMEDIATE_FILE = "intermediate.parquet"
"""In the generator's artifact (sweep/results.py reads this name)."""
INTERMEDIATE_LOG = "intermediate.jsonl"
"""In the generator's checkpoint folder while it trains."""
INTERMEDIATE_CODE_VERSION = "intermediate-1"
INTERMEDIATE_COLUMNS: tuple[str, ...] = (
    "step", "fid", "kid", "kid_std", "precision", "recall", "class_accuracy", "num_samples", "intermediate", "protocol_id",
)
"""Columns of every intermediate row, besides the protocol_* record (reports draw FID over training from them)."""

Sampler = Callable[[nn.Module], Iterable[Tensor]]
"""model (eval mode) -> image batches (b, C, H, W) in [0, 1], M images in all in the order of `labels`, always
from the same seed; each batch is scored before the next is asked for (one batch of images held at a time)."""


class IntermediateLog:
    """Rows by step, appended to a jsonl file (None: in memory only); the last row written for a step wins."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[int, dict[str, Any]] = {}
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                self.entries[int(entry["step"])] = entry

    def __contains__(self, step: int) -> bool:
        return step in self.entries

    def append(self, row: dict[str, Any]) -> None:
        self.entries[int(row["step"])] = row
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        return [self.entries[step] for step in sorted(self.entries)]


@dataclass
class IntermediateEvaluator:
    """The hook of intermediate evaluations (see the module docstring). Call `hook()` for the training loop."""

    every: int
    sample: Sampler
    labels: Tensor  # (M,) the class of each sampled image, class-balanced
    classifier: DatasetClassifier | None  # judge of class accuracy (None: not scored, NaN)
    extractor: FeatureExtractor  # the reference's feature space
    reference: ReferenceFeatures
    record: dict[str, Any]  # protocol record (protocol_*) and protocol_id of these evaluations
    log: IntermediateLog

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1 step, but got every={self.every}; set intermediate_every > 0")
        self.reference.check_extractor(str(self.record["protocol_extractor_sha256"]))

    def hook(self) -> Hook:
        return (self.every, self)

    def __call__(self, completed: int, model: nn.Module) -> None:
        """Score `model` after `completed` steps (unless that step is scored already); never stops training."""
        if completed in self.log:
            return None
        with tempfile.TemporaryDirectory(prefix="intermediate-") as folder, \
                StreamingScorer(self.extractor, self.classifier, folder) as scorer:
            for images in self.sample(model):
                start = scorer.count
                scorer.add(images.clamp(0, 1), self.labels[start : start + len(images)])  # (b, C, H, W), (b,)
            if scorer.count != len(self.labels):
                raise ValueError(f"the sampler must give {len(self.labels)} images (one per label), but gave "
                                 f"{scorer.count}")
            metrics = scorer.metrics(self.reference.features, self.reference.statistics)
        self.log.append({
            "step": int(completed), "fid": metrics["fid"], "kid": metrics["kid"], "kid_std": metrics["kid_std"],
            "precision": metrics["precision"], "recall": metrics["recall"],
            "class_accuracy": metrics["class_accuracy"], "num_samples": int(len(self.labels)),
            **self.record, "intermediate": True,
        })
        return None

    def catch_up(self, state: dict[str, Any] | None, model: nn.Module) -> None:
        """After a resume from checkpoint `state`: score its step if it is due and was not scored before the kill.

        The training loop resumes after the checkpoint's step, so its hook for that step would never run
        again; the checkpoint holds exactly the weights it would have seen.
        """
        if state is None:
            return
        step = int(state["step"])
        if step % self.every or step in self.log:
            return
        weights = copy.deepcopy(model)  # the training model stays untouched (its own state is restored by the loop)
        weights.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        weights.eval()
        with torch.no_grad():
            self(step, weights)

    def finish(self, completed: int, model: nn.Module, out: Path) -> list[dict[str, Any]]:
        """Score the last step if it is due (the loop runs no hook after its last step); write the rows to `out`."""
        if completed % self.every == 0:
            model.eval()
            with torch.no_grad():
                self(completed, model)
        rows = self.log.rows()
        pd.DataFrame(rows).to_parquet(Path(out) / INTERMEDIATE_FILE, index=False)
        return rows
