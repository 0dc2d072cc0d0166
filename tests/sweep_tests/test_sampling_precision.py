"""`sampling_precision: bf16` reaches the sampler (AR through the static decoder, MLM under autocast), is part of
the evaluation protocol (protocol_sampling_precision, protocol_id), and leaves the keys and protocol ids of fp32
evaluations as they were."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from runners.evaluation.protocol import protocol_id
from runners.generators import GENERATORS, GeneratorConfig
from space.protocol import PROTOCOL_KEYS
from space.schema import SpecError, load_spec, parse_spec
from sweep.plan import make_plan
from sweep.stages.common import fast_decoder
from sweep.stages.evaluation import evaluation_stage

FIXTURES = Path(__file__).parent.parent / "fixtures"
KNOBS = {"cfg_scale": 2.0, "cfg_schedule": "constant", "temperature": 1.0, "top_k": 0, "top_p": 1.0,
         "mlm_steps": 4, "mlm_tau": 4.5}


def sample_with_dtypes(modeling: str, precision: str) -> tuple[torch.Tensor, set[torch.dtype]]:
    """Tokens (4, 9, 2) of a tiny untrained generator sampled as the stages sample, and the dtypes of every
    nn.Linear output of its transformer blocks seen while sampling (the AR token projection feeds the static
    decoder's trunk from outside its autocast, and its heads run as one matmul there: not watched)."""
    torch.manual_seed(0)
    config = GeneratorConfig("tiny", token_each=2, bits_each=3, grid_height=3, grid_width=3, num_classes=4)
    model = GENERATORS[modeling].build(config).eval()
    seen: set[torch.dtype] = set()
    for module in model.blocks.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, output: seen.add(output.dtype))
    sampler = fast_decoder(model, {**KNOBS, "sampling_precision": precision})
    generator = torch.Generator().manual_seed(3)
    ids = GENERATORS[modeling].sample(sampler, torch.tensor([0, 1, 2, 3]), KNOBS, generator, None)
    return ids, seen


@pytest.mark.parametrize("modeling", ["ar", "mlm"])
def test_bf16_sampling_computes_in_bfloat16_on_a_cpu(modeling):
    fp32, fp32_dtypes = sample_with_dtypes(modeling, "fp32")
    bf16, bf16_dtypes = sample_with_dtypes(modeling, "bf16")
    assert fp32_dtypes == {torch.float32}
    assert bf16_dtypes == {torch.bfloat16}  # fails when the flag does not reach the forward passes
    assert bf16.shape == fp32.shape == (4, 9, 2) and int(bf16.max()) < 8
    print(f"\n{modeling}: bf16 tokens equal to fp32 ones at {(bf16 == fp32).float().mean():.2f} of the entries")


def test_fp32_keeps_the_keys_bf16_makes_new_evaluations():
    spec = load_spec(FIXTURES / "e2e.yaml")
    raw = spec.model_dump(mode="json", exclude_none=True)

    def keys(**baseline):
        plan = make_plan(parse_spec({**raw, "baseline": {**raw["baseline"], **baseline}}))
        return {kind: sorted(s.key for s in plan.of_kind(kind)) for kind in ("generator", "evaluation")}

    default, fp32, bf16 = keys(), keys(sampling_precision="fp32"), keys(sampling_precision="bf16")
    assert fp32 == default == keys(**{k: v for k, v in raw["baseline"].items()})
    assert bf16["generator"] == default["generator"]  # sampling is the evaluation's business only
    assert set(bf16["evaluation"]).isdisjoint(default["evaluation"])
    with pytest.raises(SpecError, match="sampling_precision"):
        parse_spec({**raw, "baseline": {**raw["baseline"], "sampling_precision": "fp16"}})
    searched = {**raw, "studies": [{"name": "s", "search": {"axes": {"sampling_precision": ["fp32", "bf16"]},
                                                             "budget": 2}}]}
    with pytest.raises(SpecError, match="sampling_precision is not one"):
        parse_spec(searched)  # a search compares its points: one protocol


def test_the_row_records_bf16_and_its_protocol_id_differs(e2e_run, tmp_path):
    stage = make_plan(load_spec(FIXTURES / "e2e.yaml")).of_kind("evaluation")[0]
    inputs = {role: e2e_run.out / "stages" / role / key for role, key in stage.inputs.items()}
    fp32_row = pd.read_parquet(e2e_run.out / "stages" / "evaluation" / stage.key / "row.parquet").iloc[0]
    assert "sampling_precision" not in stage.settings  # fp32: not in the key
    assert fp32_row["protocol_sampling_precision"] == "fp32"
    # the fp32 id is the id of the same record without the field (ids recorded before it existed)
    old_record = {key: getattr(fp32_row[key], "item", lambda: fp32_row[key])()  # numpy scalars -> Python
                  for key in PROTOCOL_KEYS if key != "protocol_sampling_precision"}
    assert fp32_row["protocol_id"] == protocol_id(old_record)

    bf16 = dataclasses.replace(stage, settings={**stage.settings, "sampling_precision": "bf16"})
    out = tmp_path / "evaluation"
    out.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    row = evaluation_stage(bf16, inputs, out, lambda *_: None)
    torch.set_num_threads(threads)
    assert row["protocol_sampling_precision"] == "bf16"
    assert row["protocol_id"] != fp32_row["protocol_id"]
    assert {key: row[key] for key in old_record if key != "protocol_versions"} == {
        key: old_record[key] for key in old_record if key != "protocol_versions"}  # nothing else differs
