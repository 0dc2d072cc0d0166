"""Artifacts are trusted only once their files match their manifest's sha256: a flipped bit is found at
start-up, the artifact moved aside and recomputed in the same run, and so is every dependant that was
built from other input bytes; unchanged files are not hashed again on a rerun."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

import sweep.store as store_module
from space.schema import load_spec
from sweep.executors import SerialExecutor
from sweep.progress import Reporter
from sweep.run import run_sweep
from sweep.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"


def run(out: Path, console: io.StringIO | None = None):
    reporter = Reporter(Console(file=console or io.StringIO(), width=200))
    return run_sweep(load_spec(FIXTURES / "e2e.yaml"), out, SerialExecutor(), reporter)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity")
    assert run(out).counts == {"finished": 8}
    return out


@pytest.fixture
def copy(finished_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def only_folder(kind_folder: Path) -> Path:
    (folder,) = [p for p in kind_folder.iterdir() if not p.name.startswith(".")]
    return folder


def row_mtimes(run_dir: Path, kind: str) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "stages" / kind).glob("*/row.parquet")
            if not p.parent.name.startswith(".")}


def test_a_flipped_bit_in_a_tokenizers_weights_is_found_and_recomputed_in_the_same_run(copy):
    tokenizer = only_folder(copy / "stages" / "tokenizer")
    weights = tokenizer / "model.safetensors"
    original = weights.read_bytes()
    flip_bit(weights)
    generators_before = row_mtimes(copy, "generator")
    log = io.StringIO()
    summary = run(copy, log)
    assert summary.failures == []
    (damaged,) = (copy / "stages" / "tokenizer").glob(f".damaged-{tokenizer.name}-*")
    assert damaged.is_dir() and "model.safetensors does not match its sha256" in log.getvalue()
    assert Store(copy / "stages").verify("tokenizer", tokenizer.name) == ""
    assert weights.read_bytes() == original  # recomputed in this run (CPU training is deterministic)
    # the rebuilt tokenizer holds the same bytes: its dependants were built from them and are kept
    assert row_mtimes(copy, "generator") == generators_before
    assert not list((copy / "stages").glob("*/.stale-*"))


def test_a_flipped_bit_in_an_evaluations_row_is_found_and_recomputed(copy):
    evaluation = sorted((copy / "stages" / "evaluation").iterdir())[0]
    before = pd.read_parquet(evaluation / "row.parquet")
    flip_bit(evaluation / "row.parquet")
    summary = run(copy)
    assert summary.counts == {"finished": 1} and summary.cached == 7
    assert list((copy / "stages" / "evaluation").glob(f".damaged-{evaluation.name}-*"))
    after = pd.read_parquet(evaluation / "row.parquet")
    assert after["fid"].iloc[0] == before["fid"].iloc[0]  # same samples, same score
    assert after["started_at"].iloc[0] != before["started_at"].iloc[0]  # a new row, not the old one


def test_dependants_built_from_other_input_bytes_are_recomputed(copy, monkeypatch):
    from sweep import stages

    tokenizer = only_folder(copy / "stages" / "tokenizer")
    flip_bit(tokenizer / "model.safetensors")
    real = stages.STAGE_FUNCTIONS["tokenizer"]

    def other_bytes(stage, inputs, out, log, checkpoints=None):  # a rebuild that is not bit-identical
        metrics = real(stage, inputs, out, log, checkpoints=checkpoints)
        (out / "rebuilt.txt").write_text("another machine, other rounding\n")
        return metrics

    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "tokenizer", other_bytes)
    generators_before = row_mtimes(copy, "generator")
    summary = run(copy)
    assert summary.failures == []
    store = Store(copy / "stages")
    digest = store.digest("tokenizer", tokenizer.name)
    for kind in ("reconstruction", "generator", "evaluation"):  # every dependant of the tokenizer, direct or not
        assert len(list((copy / "stages" / kind).glob(".stale-*"))) == len(row_mtimes(copy, kind)) > 0, kind
        assert set(store.rows(kind)["tokenizer_digest"]) == {digest}, kind
    assert set(row_mtimes(copy, "generator").values()).isdisjoint(generators_before.values())
    assert not list((copy / "stages" / "classifier").glob(".stale-*"))  # not built from the tokenizer


def test_a_row_records_the_digests_of_its_inputs(finished_run):
    store = Store(finished_run / "stages")
    evaluation = store.rows("evaluation").iloc[0]
    for role in ("generator", "tokenizer", "classifier", "reference"):
        assert evaluation[f"{role}_digest"] == store.digest(role, evaluation[f"{role}_key"])


def test_unchanged_files_are_not_hashed_again(copy, monkeypatch):
    hashed: list[str] = []
    real = store_module.file_sha256

    def counting(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "file_sha256", counting)
    summary = run(copy)  # a copy: new inodes, every file hashed once
    assert summary.counts == {} and len(hashed) > 8
    hashed.clear()
    assert run(copy).counts == {} and hashed == []  # nothing changed: all from the cache
    weights = sorted((copy / "stages" / "generator").glob("*/model.safetensors"))[0]
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert run(copy).counts == {} and hashed == ["model.safetensors"]  # a changed mtime: hashed again, still good


def test_a_flip_that_keeps_size_and_mtime_is_still_found(copy):
    store = Store(copy / "stages")
    tokenizer = only_folder(copy / "stages" / "tokenizer")
    assert store.verify("tokenizer", tokenizer.name) == ""  # cached now
    weights = tokenizer / "model.safetensors"
    stat = weights.stat()
    flip_bit(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, inode and mtime: only ctime moved
    assert "does not match its sha256" in store.verify("tokenizer", tokenizer.name)


def test_the_checksum_cache_is_json(finished_run):
    import json

    caches = list((finished_run / "stages" / ".verified").glob("*/*.json"))
    assert len(caches) == 8
    for cache in caches:
        entries = json.loads(cache.read_text())
        assert all(set(entry) == {"size", "mtime_ns", "inode", "ctime_ns", "sha256"} for entry in entries.values())
