"""Without --address, `sweep run` starts a Ray of its own: never an existing cluster (RAY_ADDRESS, the record
of the latest `ray start`), listening on 127.0.0.1 only, refusing whoever lacks its token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from sweep.executors import RayExecutor
from sweep_tests.ray_cluster import (
    FIXTURES, MACHINE_RECORD, free_port, job_count, private_tmpdir, ray_head, record_state, sweep,
)

pytestmark = pytest.mark.slow


def spec_with(tmp_path: Path, **resources: dict) -> Path:
    """ops.yaml with some stage kinds asking more CPUs than any node has (they fail at once, unscheduled)."""
    spec = yaml.safe_load((FIXTURES / "ops.yaml").read_text())
    spec["resources"] = resources
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_private_ray_listens_on_loopback_only_and_refuses_clients_without_its_token(tmp_path):
    executor = RayExecutor(tmp_path / "run", num_cpus=1)
    before = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    executor._start_private_ray()
    import ray

    try:
        gcs = ray.get_runtime_context().gcs_address
        token = os.environ["RAY_AUTH_TOKEN"]
        assert gcs.startswith("127.0.0.1:") and len(token) >= 32
        ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
        listening = [c.laddr for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
        assert listening and all(address.ip in ("127.0.0.1", "::ffff:127.0.0.1") for address in listening), listening
        code = ("import sys, ray._raylet as r\n"
                "try:\n    r.GcsClient(address=sys.argv[1]).internal_kv_get(b'x', None, timeout=10); print('joined')\n"
                "except Exception as error:\n    print('refused', type(error).__name__)\n")
        outcomes = {}
        for label, auth in (("no token", {"RAY_AUTH_MODE": "disabled"}),
                            ("wrong token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x" * 43}),
                            ("its token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})):
            env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
            result = subprocess.run([sys.executable, "-c", code, gcs], env={**env, **auth}, capture_output=True,
                                    text=True, timeout=120)
            outcomes[label] = result.stdout.strip().splitlines()[-1]
        assert outcomes == {"no token": "refused AuthenticationError", "wrong token": "refused AuthenticationError",
                            "its token": "joined"}
    finally:
        ray.shutdown()
        executor._restore()
    assert {name: os.environ.get(name) for name in before} == before  # this process's environment is given back


def test_a_plain_run_never_joins_the_latest_cluster_nor_RAY_ADDRESS(tmp_path):
    machine_record = record_state(MACHINE_RECORD)
    spec = spec_with(tmp_path, tokenizer={"cpus": 99})  # the classifier and the reference run; the rest cannot
    with private_tmpdir() as tmpdir:
        with ray_head(tmpdir, RAY_AUTH_MODE="disabled") as (address, _):
            assert (tmpdir / "ray" / "ray_current_cluster").read_text() == address  # what ray.init() would join
            # no --num-cpus: with it, a ray.init() that meant to join would refuse (ValueError) instead of joining
            result = sweep([str(spec), "--out", str(tmp_path / "run")], tmpdir, RAY_ADDRESS=address)
            assert job_count(address, tmpdir) == 0, result.stdout  # no driver of ours ever connected to it
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]  # the tokenizer's dependants could not run
    assert "done    classifier" in result.stdout and "done    reference" in result.stdout
    assert record_state(MACHINE_RECORD) == machine_record


def test_a_stale_record_of_a_dead_cluster_does_not_break_a_plain_run(tmp_path):
    machine_record = record_state(MACHINE_RECORD)
    spec = spec_with(tmp_path, classifier={"cpus": 99}, tokenizer={"cpus": 99})  # nothing to run: only Ray starts
    with private_tmpdir() as tmpdir:
        (tmpdir / "ray").mkdir()
        (tmpdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nobody listens there
        result = sweep([str(spec), "--out", str(tmp_path / "run"), "--num-cpus", "1"], tmpdir, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "needs 99 CPUs and 0 GPUs on one node, but the largest node of this Ray cluster has 1 CPUs" in result.stdout
    assert "6 stages did not finish" in result.stdout  # our own 1-CPU Ray started and judged every stage
    assert "Failed to connect" not in result.stderr
    assert record_state(MACHINE_RECORD) == machine_record
