"""Deterministic fault injection for the resume and failure tests.

`SWEEP_FAULT=<event>:<n>[:<fault>]` injects `fault` the n-th time this process reaches the named point
(counted per process). Faults:

    kill    SIGKILL this process (the default): no clean-up, as a lost worker or machine
    raise   raise RuntimeError, as a bug in a stage
    oom     raise torch.OutOfMemoryError ("CUDA out of memory ..."), as a batch too large for the GPU
    nan     a point that holds a loss (`fault_loss`) turns it into NaN; elsewhere raise FloatingPointError

Points:

    checkpoint_saved   a training stage has just written checkpoint n
    generator_loss     a single-process generator stage has computed its n-th training loss (before the NaN check)
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
from typing import Any

FAULTS = ("kill", "raise", "oom", "nan")
_counts: dict[str, int] = {}


def _armed() -> dict[str, tuple[int, str]]:
    spec = os.environ.get("SWEEP_FAULT", "")
    armed = {}
    for item in filter(None, spec.split(",")):
        event, _, rest = item.partition(":")
        count, _, fault = rest.partition(":")
        fault = fault.strip() or "kill"
        if fault not in FAULTS:
            raise ValueError(f"SWEEP_FAULT faults are {', '.join(FAULTS)}, but got {fault!r} in {item!r}; "
                             f"e.g. SWEEP_FAULT=evaluation:1:raise")
        armed[event.strip()] = (int(count or 1), fault)
    return armed


def armed(event: str) -> bool:
    """Whether SWEEP_FAULT names `event` (so a caller wraps its value in `fault_loss` only in fault tests)."""
    return event in _armed()


def _fire(event: str) -> str:
    """The fault to inject at this occurrence of `event` ("" for none); SIGKILL and raises happen here."""
    armed = _armed()
    if event not in armed:
        return ""
    _counts[event] = _counts.get(event, 0) + 1
    count, fault = armed[event]
    if _counts[event] != count:
        return ""
    message = f"fault injected by SWEEP_FAULT at {event} #{count}"
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "raise":
        raise RuntimeError(message)
    if fault == "oom":
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB ({message})")
    return fault  # "nan": the caller decides what turns NaN


def fault_point(event: str) -> None:
    """Inject the fault SWEEP_FAULT arms for the n-th occurrence of `event`. A point without a value to
    poison answers "nan" with FloatingPointError, as a NaN check would."""
    if _fire(event) == "nan":
        raise FloatingPointError(f"a value is NaN (fault injected by SWEEP_FAULT at {event})")


def fault_loss(event: str, loss: Any) -> Any:
    """`loss`, or NaN in its place when SWEEP_FAULT arms `event` with "nan" for this occurrence (other faults
    are injected as at any point)."""
    return loss * float("nan") if _fire(event) == "nan" else loss
