"""Terminal output: full lines off a terminal, stages named by their varied settings, resumes said, one time."""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from pathlib import Path

import torch

from runners.checkpoint import CHECKPOINT_STEP_FILE, Checkpointer
from space.schema import load_spec
from sweep.cli import main
from sweep.plan import make_plan
from sweep.progress import Reporter, terminal_console, varied_columns
from sweep.status import stage_status

FIXTURES = Path(__file__).parent.parent / "fixtures"
DONE = re.compile(r"^done    (\w+) (.*?) ?\[([0-9a-f]{8})\] in (\d+\.\d)s(.*)$")


def test_output_that_is_not_a_terminal_is_never_wrapped(e2e_run, capsys):
    header = e2e_run.log.splitlines()[0]
    assert header.startswith("e2e: 2 trials, 8 stages (") and header.endswith("0 found finished, 8 to run")
    assert len(header) > 80
    assert main(["plan", str(FIXTURES / "e2e.yaml")]) == 0
    text = capsys.readouterr().out
    tokenizer = next(line for line in text.splitlines() if line.startswith("│ tokenizer"))
    assert "bit_usage_weight=0.01 perceptual_weight=0.0" in tokenizer and "…" not in text  # whole cells
    console = terminal_console(file=io.StringIO())
    assert not console.is_terminal and console.width >= 10_000


def test_live_lines_name_the_varied_settings_not_a_hash(e2e_run):
    done = [DONE.match(line) for line in e2e_run.log.splitlines() if line.startswith("done")]
    assert len(done) == 8 and all(done), e2e_run.log
    named = {(m[1], m[2]) for m in done}
    assert ("evaluation", "vocab=1-8") in named and ("evaluation", "vocab=2-4") in named
    assert ("generator", "vocab=2-4") in named and ("tokenizer", "") in named  # one tokenizer: nothing varies
    evaluation = next(m for m in done if m[1] == "evaluation" and m[2] == "vocab=2-4")
    assert evaluation[5].startswith(" fid=")
    assert not re.search(r"[0-9a-f]{16}", "\n".join(m[0] for m in done))  # never a whole key


def test_analysis_lines_name_the_analysis_and_only_what_varies():
    # the text baseline has no axes at all: it must not make every column of the analysis stages look varied
    spec = load_spec(FIXTURES.parent.parent / "space" / "tiny.yaml")
    plan = make_plan(spec)
    reporter = Reporter(terminal_console(file=io.StringIO()))
    reporter.varied = {kind: varied_columns(plan.of_kind(kind)) for kind in ("analysis",)}
    names = [reporter.name(stage) for stage in plan.of_kind("analysis")]
    assert any(name.startswith("analysis token_randomness_text [") for name in names), names
    assert any(name.startswith("analysis attention_locality ") for name in names), names
    assert all("tokenizer_steps=" not in name and "generator_lr=" not in name for name in names), names


def test_status_spends_the_time_the_live_lines_said(e2e_run):
    said: dict[str, float] = defaultdict(float)
    for line in e2e_run.log.splitlines():
        if match := DONE.match(line):
            said[match[1]] += float(match[4])
    spent = stage_status(e2e_run.out).set_index("kind")["spent_s"]
    for kind, seconds in said.items():
        assert abs(spent[kind] - seconds) <= 0.05 * 2 + 1e-9, (kind, spent[kind], seconds)  # 0.1 s rounding per line


def test_a_resumed_stage_says_from_which_step(tmp_path):
    plan = make_plan(load_spec(FIXTURES / "e2e.yaml"))
    stage = plan.of_kind("generator")[1]
    checkpoint = tmp_path / "generator" / f".ckpt-{stage.key}"
    Checkpointer(checkpoint, every_steps=1).save(40, {"weights": torch.zeros(2)})
    assert json.loads((checkpoint / CHECKPOINT_STEP_FILE).read_text()) == {"step": 40}
    stream = io.StringIO()
    reporter = Reporter(terminal_console(file=stream))
    reporter.begin(plan, [stage], store_root=tmp_path)
    reporter.event("started", stage, {})
    reporter.event("finished", stage, {"wall_s": 1.25, "resumed_from_step": 40, "final_loss": 2.0})
    lines = stream.getvalue().splitlines()
    assert lines[1] == f"start   generator vocab=2-4 [{stage.key[:8]}] (resuming from the checkpoint of step 40)"
    assert lines[2] == f"done    generator vocab=2-4 [{stage.key[:8]}] in 1.2s (resumed from step 40) final_loss=2"


def test_training_lines_say_the_throughput_they_measured(e2e_run):
    from sweep.progress import running_note

    values = {"step": 120, "loss": 4.1234, "tokens_per_s": 12_345.6, "achieved_tflops": 250.0, "mfu": 0.4129}
    assert running_note("generator vocab=2-4 [abcd1234]", values) == (
        "generator vocab=2-4 [abcd1234] step 120 loss 4.123 12.3k tok/s 41% MFU")
    # a CPU: no known peak, so no MFU; a tokenizer counts images
    assert running_note("tokenizer", {"step": 9, "loss": 0.5, "images_per_s": 850.0, "mfu": None}) == (
        "tokenizer step 9 loss 0.5 850 img/s")
    assert running_note("generator", {"step": 1, "loss": 2.0}) == "generator step 1 loss 2"  # nothing measured
    # the done lines of the e2e run: training stages end with their rate, evaluations without one
    done = [DONE.match(line) for line in e2e_run.log.splitlines() if line.startswith("done")]
    assert all(re.search(r" \d[\d.]*[kM]? tok/s$", m[5]) for m in done if m[1] == "generator"), e2e_run.log
    assert all(re.search(r" \d[\d.]*[kM]? img/s$", m[5]) for m in done if m[1] == "tokenizer"), e2e_run.log
    assert not any("/s" in m[5] for m in done if m[1] == "evaluation"), e2e_run.log
