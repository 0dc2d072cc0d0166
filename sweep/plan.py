"""Planning: a spec expands into trials, trials into stages, identical stages into one.

    spec --expand--> trials --plan--> stages (a DAG keyed by content hashes)

A trial needs six stages (five when no metric needs the classifier: inception features without
`class_accuracy: true`):

    classifier (dataset)                      -- feature extractor of the in-sweep metrics, judge of class accuracy
      -> reference (classifier key if it is the extractor, feature_extractor)
                                              -- held-out features + stats, once per dataset x extractor
    tokenizer (dataset, tokenizer axes)
      -> reconstruction (tokenizer and reference keys)   -- rFID, once per tokenizer x extractor
      -> generator (tokenizer key, generator axes, seed; with intermediate_every > 0 also the classifier
                    and the baseline extractor's reference keys and the baseline's sampling knobs)
           -> evaluation (generator, tokenizer, classifier and reference keys, evaluation axes, sampling seed)

Each stage's key hashes only its determining settings, its inputs' keys and the code versions of
the registry entries it runs. A stage shared by many trials (one tokenizer for a whole vocabulary
study) is planned once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from space.schema import AXES_OF_STAGE, STAGE_KINDS, Resources, Settings, Spec, Trial, expand
from sweep.fingerprint import dataset_identity, dataset_root
from sweep.keys import content_key, derive_seed

# Which input stages each kind reads, by role name.
INPUTS_OF: dict[str, tuple[str, ...]] = {
    "classifier": (),
    "reference": ("classifier",),  # only when the classifier is the feature extractor
    "tokenizer": (),
    "reconstruction": ("tokenizer", "reference", "classifier"),  # classifier: as for reference
    "generator": ("tokenizer", "classifier", "reference"),  # classifier, reference: only with intermediate_every
    "evaluation": ("generator", "tokenizer", "classifier", "reference"),
    "analysis": ("tokenizer", "generator"),  # what each analysis reads of these
}


@dataclass(frozen=True)
class Stage:
    """A unit of work: a plain function of `settings` and its input artifacts."""

    kind: str
    key: str
    settings: dict[str, Any]  # exactly what determines the output (hashed)
    inputs: dict[str, str]  # role -> key of the input stage (hashed)
    code: dict[str, str]  # registry entry -> code version (hashed)
    resources: Resources  # never hashed
    columns: dict[str, Any] = field(default_factory=dict)  # every axis value upstream of here, for rows
    runtime: dict[str, Any] = field(default_factory=dict)  # checkpointing, retries: never hashed

    @property
    def depends_on(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.inputs.values()))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "settings": self.settings,
            "inputs": self.inputs,
            "code": self.code,
            "resources": self.resources.model_dump(),
            "columns": self.columns,
            "runtime": self.runtime,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stage:
        return cls(
            kind=data["kind"],
            key=data["key"],
            settings=data["settings"],
            inputs=data["inputs"],
            code=data["code"],
            resources=Resources(**data["resources"]),
            columns=data.get("columns", {}),
            runtime=data.get("runtime", {}),
        )


@dataclass(frozen=True)
class PlannedTrial:
    """A trial and the keys of its stages."""

    trial: Trial
    trial_id: str
    sampling_seed: int
    keys: dict[str, str]  # stage kind -> key


@dataclass
class Plan:
    spec: Spec
    stages: dict[str, Stage]  # key -> stage, in dependency order
    trials: list[PlannedTrial]
    searches: dict[str, Any] = field(default_factory=dict)  # search id -> sweep.search.SearchPlan

    def of_kind(self, kind: str) -> list[Stage]:
        return [stage for stage in self.stages.values() if stage.kind == kind]

    def counts(self) -> dict[str, int]:
        return {kind: len(self.of_kind(kind)) for kind in STAGE_KINDS}

    def dependants(self, key: str) -> set[str]:
        """Every stage downstream of `key`."""
        found: set[str] = set()
        frontier = {key}
        while frontier:
            frontier = {s.key for s in self.stages.values() if set(s.depends_on) & frontier} - found
            found |= frontier
        return found


def code_versions(kind: str, settings: Settings) -> dict[str, str]:
    """Code versions of what a stage runs; a fix to a model bumps its version and so its keys."""
    from sweep.stages import code_versions as runner_code_versions

    return runner_code_versions(kind, settings)


def ignored_axes(kind: str, settings: Settings) -> set[str]:
    """Axes the chosen registry entries do not read (e.g. top_k for a masked generator)."""
    from sweep.stages import ignored_axes as runner_ignored_axes

    return runner_ignored_axes(kind, settings)


def sampling_seed_of(seed: int) -> int:
    """The sampling seed of an evaluation, derived from its generator's training seed."""
    return derive_seed("sampling", seed)


def make_plan(spec: Spec, missing_ok: bool = False) -> Plan:
    """Expand `spec` into its stage DAG; identical stages are planned once.

    Files a stage reads (LPIPS weights, the ADM reference batch, imported checkpoints) enter its key as their
    sha256. missing_ok: plan before the files arrive, an absent file hashing as "absent" (`sweep plan` shows such
    keys; `sweep run` refuses them)."""
    stages: dict[str, Stage] = {}
    planned: list[PlannedTrial] = []

    searches: dict[str, Any] = {}

    def add(kind: str, settings: Settings, own: dict[str, Any], inputs: dict[str, str], columns: dict[str, Any],
            runtime_extra: dict[str, Any] | None = None) -> str:
        stage = plan_stage(spec, kind, settings, own, inputs, columns, runtime_extra)
        stages.setdefault(stage.key, stage)
        return stage.key

    def add_reference(settings: Settings, classifier: str | None) -> tuple[str, dict[str, str]]:
        """The reference stage of `settings.feature_extractor`, and the inputs of a stage that scores in it."""
        extractor = {"classifier": classifier} if settings.feature_extractor == "classifier" else {}  # type: ignore[dict-item]
        columns = {name: getattr(settings, name) for name in AXES_OF_STAGE["reference"]}
        own, runtime = inception_inputs(settings.feature_extractor)  # Inception file: sha hashed, path not
        if settings.reference == "adm_npz":  # the file's sha256 is hashed, its path is not
            path = spec.adm_reference_path()
            own["adm_reference_sha256"] = spec.file_digest(path, missing_ok)
            runtime["adm_reference"] = str(path)
        key = add("reference", settings, own, extractor, columns, runtime)
        return key, {**extractor, "reference": key}

    def imported(name: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(what an imported stage hashes, its runtime, its row columns) for `checkpoints` entry `name`."""
        from sweep.stages.common import latent_grid

        entry, path = spec.checkpoints[name], spec.checkpoint_path(name)
        digest = spec.file_digest(path, missing_ok)
        record: dict[str, Any] = {"kind": entry.kind, "sha256": digest, "size": entry.size}
        if entry.vocab:  # a generator: its token grid is the tokenizer's (an AR file does not say it)
            grid = latent_grid({"tokenizer_size": settings.tokenizer_size}, spec.dataset.image_size)
            record.update(vocab=entry.vocab, grid=list(grid))
        else:
            record.update(code_dim=entry.code_dim, bernoulli=entry.bernoulli)
        role = "generator" if entry.kind in ("ar", "mlm") else "tokenizer"
        return ({"checkpoint": record}, {"checkpoint_path": str(path)},
                {f"{role}_file": str(path), f"{role}_sha256": digest})

    def inception_inputs(extractor: str) -> tuple[dict[str, Any], dict[str, Any]]:
        weights = spec.assets.inception_weights
        if extractor == "inception" and missing_ok and weights and not Path(weights).expanduser().is_file():
            return {"inception_weights_sha256": "absent"}, {}
        own, runtime = spec.assets.reference_inputs(extractor)
        return dict(own), dict(runtime)

    def perceptual_inputs(weight: float) -> tuple[dict[str, str], dict[str, str]]:
        if weight > 0 and missing_ok and spec.assets.perceptual_weights \
                and not Path(spec.assets.perceptual_weights).expanduser().is_file():
            return {"perceptual_weights_sha256": "absent"}, {}
        return spec.assets.tokenizer_inputs(weight)

    studies = {study.name: study for study in spec.studies}
    for trial in expand(spec):
        s = trial.settings
        study = studies[trial.study]
        axes = lambda kind: {name: getattr(s, name) for name in AXES_OF_STAGE[kind]}  # noqa: E731
        keys: dict[str, str] = {}
        images = spec.dataset.name != "labels"  # labels: imported models scored on a reference file, no image stage
        # the dataset classifier only when a metric needs it: the feature space, or class accuracy
        if images and (spec.needs_classifier(s) or spec.needs_classifier(spec.baseline) and bool(s.intermediate_every)):
            keys["classifier"] = add("classifier", s, {}, {}, axes("classifier"))
        judge = {"classifier": keys["classifier"]} if images and spec.needs_classifier(s) else {}
        files: dict[str, Any] = {}  # where imported weights came from: columns of every row downstream
        if s.tokenizer_checkpoint:
            own, runtime, columns = imported(s.tokenizer_checkpoint, s)
            files.update(columns)
            keys["tokenizer"] = add("tokenizer", s, own, {}, {**axes("tokenizer"), **columns}, runtime)
        else:
            weights_sha, weights_path = perceptual_inputs(s.perceptual_weight)  # LPIPS file: sha hashed, path not
            keys["tokenizer"] = add("tokenizer", s, weights_sha, {}, axes("tokenizer"), weights_path)
        keys["reference"], scoring = add_reference(s, keys.get("classifier"))
        if images:  # rFID pairs reconstructions with their originals: always the held-out images' reference
            heldout = s.model_copy(update={"reference": "heldout"})
            paired = scoring if s.reference == "heldout" else add_reference(heldout, keys.get("classifier"))[1]
            keys["reconstruction"] = add(
                "reconstruction", s, {}, {"tokenizer": keys["tokenizer"], **paired},
                {**axes("tokenizer"), **{n: getattr(heldout, n) for n in AXES_OF_STAGE["reference"]}, **files},
            )
        if s.generator_checkpoint:  # imported: no training, no seed; its key is the file's sha256
            own, runtime, columns = imported(s.generator_checkpoint, s)
            files.update(columns)
            keys["generator"] = add("generator", s, own, {}, {**axes("tokenizer"), **axes("generator"), "vocab": s.vocab,
                                                              **files}, runtime)
        generator_own: dict[str, Any] = {"seed": trial.seed}
        generator_inputs = {"tokenizer": keys["tokenizer"]}
        if s.intermediate_every:  # scored while it trains: the baseline's feature space and sampling knobs
            from sweep.stages import intermediate_sampling

            judged = {"classifier": keys["classifier"]} if spec.needs_classifier(spec.baseline) else {}
            generator_inputs.update({**judged, **add_reference(spec.baseline, keys.get("classifier"))[1]})
            generator_own["intermediate_sampling"] = intermediate_sampling(s, spec.baseline)
        bracket = None
        if study.early_stopping is not None:  # a stage that may stop early is not the one that always finishes
            generator_own["early_stopping"] = study.early_stopping.model_dump()
            bracket = {"early_stopping_bracket": content_key("bracket", {"study": study.name, **generator_own["early_stopping"]}, {}, {})}
        if not s.generator_checkpoint:
            keys["generator"] = add(
                "generator", s, generator_own, generator_inputs,
                {**axes("tokenizer"), **axes("generator"), "vocab": s.vocab, "seed": trial.seed, **files}, bracket,
            )
        sampling_seed = sampling_seed_of(trial.seed)
        evaluation_inputs = {"generator": keys["generator"], "tokenizer": keys["tokenizer"], **judge,
                             "reference": keys["reference"]}
        evaluation_columns = {**s.model_dump(), "seed": trial.seed, "sampling_seed": sampling_seed, **files}
        if study.search is None:
            keys["evaluation"] = add("evaluation", s, {"sampling_seed": sampling_seed}, evaluation_inputs, evaluation_columns)
        else:  # the evaluation is chosen at run time: the search's best point, evaluated again on a fresh seed
            from sweep.search import plan_search

            search = plan_search(spec, study.name, study.search, s, sampling_seed, evaluation_inputs, evaluation_columns)
            searches.setdefault(search.id, search)
            keys["search"] = search.id
        analyses = spec.analyses
        if analyses.token_randomness:
            own = {"analysis": "token_randomness", "token_each": s.token_each, "scan_order": s.scan_order,
                   "images": analyses.images}
            add("analysis", s, own, {"tokenizer": keys["tokenizer"]},
                {**axes("tokenizer"), "vocab": s.vocab, "scan_order": s.scan_order})
            text = {"analysis": "token_randomness_text", "text_bpe_vocab": analyses.text_bpe_vocab,
                    "text_corpus": analyses.text_corpus}
            add("analysis", s, text, {}, {})
        if analyses.attention_locality:
            own = {"analysis": "attention_locality", "locality_k": analyses.locality_k, "images": analyses.images}
            add("analysis", s, own, {"generator": keys["generator"], "tokenizer": keys["tokenizer"]},
                {**axes("tokenizer"), **axes("generator"), "vocab": s.vocab, "seed": trial.seed})
        result = {"evaluation": keys["evaluation"]} if "evaluation" in keys else {"search": keys["search"]}
        trial_id = content_key("trial", {"study": trial.study, **result}, {}, {})
        planned.append(PlannedTrial(trial, trial_id, sampling_seed, keys))

    order = {kind: index for index, kind in enumerate(STAGE_KINDS)}
    ordered = dict(sorted(stages.items(), key=lambda item: order[item[1].kind]))
    return Plan(spec=spec, stages=ordered, trials=planned, searches=searches)


def plan_stage(
    spec: Spec, kind: str, settings: Settings, own: dict[str, Any], inputs: dict[str, str], columns: dict[str, Any],
    runtime_extra: dict[str, Any] | None = None,
) -> Stage:
    """The stage of `kind` for `settings`: its key hashes the axes of that kind the chosen registry entries read,
    `own` (seeds and the like), the input keys and the code versions; columns and runtime are not hashed."""
    ignored = ignored_axes(kind, settings)
    axes = {name: getattr(settings, name) for name in AXES_OF_STAGE[kind] if name not in ignored}
    # the dataset by content (sweep/fingerprint.py): its root is where to read it, a runtime setting
    determining = {"dataset": dataset_identity(spec.dataset), **axes, **own}
    code = code_versions(kind, settings)
    key = content_key(kind, determining, inputs, code)
    runtime = {**spec.runtime.model_dump(), **(runtime_extra or {})}
    if (root := dataset_root(spec.dataset)) is not None:
        runtime["dataset_root"] = root
    return Stage(kind, key, determining, inputs, code, spec.resources_of(kind), columns, runtime)
