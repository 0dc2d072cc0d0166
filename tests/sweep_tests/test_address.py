"""`sweep run --address`: joins the cluster (with its token), checks that its workers see the store, and
refuses an address where nothing answers within 30 s, before writing anything."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from sweep.executors import PROBE_PREFIX, ClusterError, check_store_visible
from sweep_tests.ray_cluster import FIXTURES, MACHINE_RECORD, free_port, job_count, private_tmpdir, ray_head, record_state, sweep


@pytest.mark.slow
def test_a_run_joins_the_cluster_at_address_with_its_token(tmp_path):
    machine_record = record_state(MACHINE_RECORD)
    token = "t" * 8 + "0123456789abcdef0123456789abcdef"
    spec, out = FIXTURES / "ops.yaml", tmp_path / "run"
    with private_tmpdir() as tmpdir:
        with ray_head(tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) as (address, _):
            started = time.perf_counter()
            refused = sweep([str(spec), "--out", str(out), "--address", address], tmpdir, RAY_AUTH_MODE="token",
                            RAY_AUTH_TOKEN="wrong" * 8)
            assert refused.returncode == 2 and time.perf_counter() - started < 30, refused.stderr[-3000:]
            assert "RAY_AUTH_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
            assert not out.exists()  # refused before anything was written

            joined = sweep([str(spec), "--out", str(out), "--address", address], tmpdir, RAY_AUTH_MODE="token",
                           RAY_AUTH_TOKEN=token)
            assert joined.returncode == 0, joined.stdout + joined.stderr[-3000:]
            assert job_count(address, tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) >= 1
    rows = pd.concat([pd.read_parquet(p) for p in out.glob("stages/*/*/row.parquet")])
    assert len(rows) == 6 and set(rows["status"]) == {"finished"} and set(rows["executor"]) == {"ray"}
    assert not list(out.glob(f"stages/{PROBE_PREFIX}*"))  # the store check ran and cleaned up after itself
    assert record_state(MACHINE_RECORD) == machine_record


def test_an_address_where_nothing_answers_fails_within_30_s_writing_nothing(tmp_path):
    out = tmp_path / "run"
    with private_tmpdir() as tmpdir:
        started = time.perf_counter()
        result = sweep([str(FIXTURES / "ops.yaml"), "--out", str(out), "--address", f"127.0.0.1:{free_port()}"],
                       tmpdir, timeout=120)
        elapsed = time.perf_counter() - started
    assert result.returncode == 2 and elapsed < 30, (elapsed, result.stderr[-3000:])
    assert "no Ray cluster answers" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_the_store_check_refuses_a_node_whose_files_the_driver_cannot_see(tmp_path):
    store, elsewhere = tmp_path / "store", tmp_path / "node-local-disk"
    elsewhere.mkdir()

    def shared(folder: Path, name: str) -> dict[str, str]:  # two nodes that both write into the store
        for node in ("node-a", "node-b"):
            (folder / f"{name}-{node}").write_text(node)
        return {"node-a": "wrote", "node-b": "wrote"}

    def one_node_apart(folder: Path, name: str) -> dict[str, str]:  # node-b has its own disk at another path
        (folder / f"{name}-node-a").write_text("node-a")
        (elsewhere / f"{name}-node-b").write_text("node-b")
        return {"node-a": "wrote", "node-b": f"wrote {folder / name}-node-b"}

    check_store_visible(store, shared)
    assert list(store.iterdir()) == []  # its probe files are removed
    with pytest.raises(ClusterError, match=r"not shared with every Ray node.*node node-b") as refused:
        check_store_visible(store, one_node_apart)
    assert "node-a" not in str(refused.value) and "--store" in str(refused.value)
    assert list(store.iterdir()) == []
