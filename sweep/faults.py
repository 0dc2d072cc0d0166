"""Deterministic fault injection for the resume tests: `SWEEP_FAULT=<event>:<n>` SIGKILLs this process
the n-th time it reaches the named point (counted per process). Points:

    checkpoint_saved   a training stage has just written checkpoint n
    before_rename      an artifact is complete on disk but not yet renamed to its key
    row_written        a Parquet row file is written under its temporary name, not yet renamed
    evaluation         an evaluation stage is sampling
    stage_started      (driver) the executor has just handed out its n-th stage
    search_suggested   (driver) a search has journaled its n-th new point, which has not run yet

Several points may be given, comma-separated. Unset, every call is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get("SWEEP_FAULT", "")
    armed = {}
    for item in filter(None, spec.split(",")):
        event, _, count = item.partition(":")
        armed[event.strip()] = int(count or 1)
    return armed


def fault_point(event: str) -> None:
    """SIGKILL this process if SWEEP_FAULT names `event` and this is its n-th occurrence."""
    armed = _armed()
    if event not in armed:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] == armed[event]:
        os.kill(os.getpid(), signal.SIGKILL)
