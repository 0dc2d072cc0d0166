"""A real `ray start --head` cluster for the tests, on a free loopback port, ended by its own process ids.

Never `ray stop` (it ends every Ray on the machine). The cluster and the `sweep run`s under test share a
private TMPDIR, so Ray's record of the latest cluster (<TMPDIR>/ray/ray_current_cluster) is theirs; the
machine's record (/tmp/ray/ray_current_cluster) is checked to be left as it was found.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

REPO = Path(__file__).resolve().parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures"
MACHINE_RECORD = Path("/tmp/ray/ray_current_cluster")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def record_state(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


@contextmanager
def private_tmpdir() -> Iterator[Path]:
    """A short TMPDIR (Ray's Unix socket paths must stay under ~107 characters)."""
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def base_env(tmpdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "SWEEP_FAULT"))}
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray keeps 127.0.0.1 as it is (else it swaps in this host's address),
    # so the test clusters listen on loopback only and `--address 127.0.0.1:<port>` reaches them.
    env.update(TMPDIR=str(tmpdir), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO), COLUMNS="400",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    return env


def end_processes(root: subprocess.Popen) -> None:
    """SIGTERM `root` and every process below it (looked up now: workers started late included), then SIGKILL."""
    try:
        tree = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for process in reversed(tree):
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=15)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    root.wait(timeout=10)


@contextmanager
def ray_head(tmpdir: Path, **env: str) -> Iterator[tuple[str, list[int]]]:
    """`ray start --head --block` on a free loopback port; yields its address and its process ids."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "1",
               "--include-dashboard=false", "--disable-usage-stats", "--block"]
    log = open(tmpdir / "ray-start.log", "w")
    head = subprocess.Popen(command, env=base_env(tmpdir, **env),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert head.poll() is None, (tmpdir / "ray-start.log").read_text()[-3000:]
            record = tmpdir / "ray" / "ray_current_cluster"
            if record.is_file() and record.read_text().endswith(f":{port}"):
                break
            time.sleep(0.5)
        else:
            raise TimeoutError((tmpdir / "ray-start.log").read_text()[-3000:])
        pids = [head.pid, *(p.pid for p in psutil.Process(head.pid).children(recursive=True))]
        yield f"127.0.0.1:{port}", pids
    finally:
        end_processes(head)
        log.close()


def job_count(address: str, tmpdir: Path, **env: str) -> int:
    """How many drivers (jobs) have ever connected to the cluster at `address` (asked in a fresh process)."""
    code = ("import sys, ray._raylet as r; "
            "print(len(r.GcsClient(address=sys.argv[1]).get_all_job_info(timeout=30)))")
    result = subprocess.run([sys.executable, "-c", code, address], env=base_env(tmpdir, **env),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1])


def sweep(args: list[str], tmpdir: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep.cli", "run", *args], env=base_env(tmpdir, **env),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
