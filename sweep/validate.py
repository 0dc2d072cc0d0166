"""Checks that need the runners' registries, run by `sweep validate`, `plan` and `run` before any compute."""

from __future__ import annotations

from typing import Any

from space.schema import Spec, SpecError, study_points, trial_settings


def check_spec(spec: Spec, source: str = "spec", files: bool = True) -> None:
    """Raise SpecError naming the study, the axis, the value and the fix for the first registry miss; with
    `files`, also every missing file the settings read (`sweep plan` plans without them)."""
    from sweep.stages import check_settings, ignored_axes

    if files:
        spec.check_assets(source)  # files the settings read exist (weights, reference batch, checkpoints)
    problems = check_settings(spec.baseline, spec.dataset)
    if problems:
        axis, message = problems[0]
        raise SpecError(f"baseline.{axis}: {message}", source)
    for index, study in enumerate(spec.studies):
        for point in study_points(spec, study):
            settings = trial_settings(spec, study, point)
            for axis, message in check_settings(settings, spec.dataset):
                where = "vary" if axis in study.vary else "fixed" if axis in study.fixed else None
                if where:
                    raise SpecError(f"studies[{index}] ({study.name}).{where}.{axis}: {message}", source)
                raise SpecError(f"studies[{index}] ({study.name}) at {point}: {message}", source)
            unread = sorted(ignored_axes("evaluation", settings) & set(study.search.axes if study.search else ()))
            if unread:
                raise SpecError(
                    f"studies[{index}] ({study.name}).search.axes.{unread[0]}: a {settings.modeling} generator does "
                    f"not read {unread[0]}, so every point would be the same evaluation; search axes it reads "
                    f"(e.g. cfg_scale) or drop {unread[0]}", source)


def describe_stage(stage: Any, tflops: float = 400.0) -> dict[str, Any]:
    from sweep.stages import describe

    return describe(stage, tflops)
