"""The stage layer: plain functions of (stage settings, input artifacts) that write one folder, one module per kind.

    classifier  dataset            -> classifier weights        (feature extractor of FID/KID, class accuracy)
    reference   (classifier)       -> held-out features + stats (once per dataset x feature extractor)
    tokenizer   dataset            -> tokenizer weights         (+ held-out reconstruction metrics)
    reconstruction tokenizer, reference -> rFID                 (once per tokenizer x feature extractor)
    generator   tokenizer          -> generator weights         (+ training losses, held-out loss; with
                (classifier, reference)                            intermediate_every: FID over training)
    evaluation  generator, tokenizer, classifier, reference -> samples (+ FID, KID, class accuracy)
    analysis    tokenizer (, generator) -> rows of ELM's analyses beyond FID

Each function is `fn(stage, inputs, out, log, checkpoints=None) -> metrics`: `stage.settings` holds exactly
what determines it, `inputs` maps an input role to its finished artifact folder, everything is written inside
`out`, `log(step, values)` records training curves. This layer is glue: the research code it calls lives in
runners/ (which never imports sweep/), and it never imports Ray (the executors call these functions).
"""

from __future__ import annotations

from sweep.stages.analysis import analysis_stage
from sweep.stages.classifier import classifier_stage
from sweep.stages.common import StageFunction, device_name
from sweep.stages.evaluation import evaluation_stage
from sweep.stages.generator import StagePruned, generator_stage
from sweep.stages.planning import check_settings, code_versions, describe, ignored_axes, intermediate_sampling
from sweep.stages.reconstruction import reconstruction_stage
from sweep.stages.reference import reference_stage
from sweep.stages.tokenizer import tokenizer_stage

STAGE_FUNCTIONS: dict[str, StageFunction] = {
    "classifier": classifier_stage,
    "reference": reference_stage,
    "tokenizer": tokenizer_stage,
    "reconstruction": reconstruction_stage,
    "generator": generator_stage,
    "evaluation": evaluation_stage,
    "analysis": analysis_stage,
}

__all__ = [
    "STAGE_FUNCTIONS", "StagePruned", "check_settings", "code_versions", "describe", "device_name", "ignored_axes",
    "intermediate_sampling",
]
