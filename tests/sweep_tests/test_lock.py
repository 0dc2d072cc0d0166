"""The run lock holds under races: two processes released at the same instant by a barrier try to
take it, 500 rounds, with and without a stale lock of a dead run in the way; never both hold it."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest

from sweep.lock import LOCK_FILE, LockedError, RunLock

ROUNDS = 500


def _racer(folder: str, barrier, held, index: int) -> None:
    for round_ in range(ROUNDS):
        barrier.wait()  # the parent has set up this round
        lock = RunLock(Path(folder))
        try:
            lock.acquire()
            held[2 * round_ + index] = 1
        except LockedError:
            held[2 * round_ + index] = 0
        barrier.wait()  # both have tried while the winner still holds it
        lock.release()
        barrier.wait()  # released


def plant_stale_lock(folder: Path) -> None:
    """A lock of a run that is gone: this pid's record with another start time (the pid was reused)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "create_time": 1.0, "since": "long ago"}
    (folder / LOCK_FILE).write_text(json.dumps(record))


def test_two_racing_processes_never_both_hold_the_lock(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    held = context.Array("b", 2 * ROUNDS)
    racers = [context.Process(target=_racer, args=(str(tmp_path), barrier, held, i)) for i in range(2)]
    for racer in racers:
        racer.start()
    started = time.perf_counter()
    try:
        for round_ in range(ROUNDS):
            if round_ % 2:
                plant_stale_lock(tmp_path)  # both find it stale and race to clear it
            barrier.wait(timeout=30)
            barrier.wait(timeout=30)
            barrier.wait(timeout=30)
            assert not (tmp_path / LOCK_FILE).exists()  # the winner released it
    finally:
        for racer in racers:
            racer.join(timeout=30)
    wall_s = time.perf_counter() - started
    pairs = [(held[2 * r], held[2 * r + 1]) for r in range(ROUNDS)]
    double = sum(1 for pair in pairs if pair == (1, 1))
    assert double == 0, f"{double} double holds in {ROUNDS} rounds"
    assert all(sum(pair) == 1 for pair in pairs)  # and never none: a stale lock is cleared, a live one refuses
    print(f"{ROUNDS} rounds in {wall_s:.2f} s")


def test_a_live_holder_refuses_a_second_run_with_its_pid(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire()  # released: free again


def test_the_lock_appears_with_its_contents(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    record = json.loads((tmp_path / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert not list(tmp_path.glob(".lock.*.tmp"))  # the temporary file is gone once linked
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
