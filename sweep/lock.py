"""One `sweep run` per output folder at a time; a lock left by a killed run is detected and cleared.

The lock file appears with its whole contents at once: the holder's record (pid, host, process start
time) is written to a temporary file that is then hard-linked to `.lock` (`os.link` fails if `.lock`
exists), so no one ever reads a lock that is created but not yet written. Clearing a stale lock (its
process is gone) and taking it again happen under an flock on `.lock.guard`, so two runs that both find
the same stale lock cannot both clear it and both take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"
GUARD_FILE = ".lock.guard"


class LockedError(RuntimeError):
    """Another live `sweep run` holds the folder."""


class RunLock:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _is_stale(self, holder: dict | None) -> bool:
        import psutil

        if holder is None:
            return True  # not a record this module writes (a lock always appears complete): clear it
        if holder.get("host") != socket.gethostname():
            return False  # cannot check a process on another machine: refuse, the user may remove it
        try:
            process = psutil.Process(int(holder["pid"]))
            return abs(process.create_time() - float(holder["create_time"])) > 1e-3  # pid reused by another process
        except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
            return True

    def acquire(self) -> None:
        import psutil

        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(), "host": socket.gethostname(),
            "create_time": psutil.Process().create_time(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        tmp = folder / f".lock.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps(record))
        try:
            with open(folder / GUARD_FILE, "a") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
                try:
                    os.link(tmp, self.path)  # atomic: fails if a lock exists; the lock appears with its contents
                except FileExistsError:
                    holder = self._holder()
                    if not self._is_stale(holder):
                        assert holder is not None
                        raise LockedError(
                            f"{folder} is in use by another `sweep run` (pid {holder.get('pid')} on {holder.get('host')} "
                            f"since {holder.get('since')}); wait for it to finish, or use another --out. If that run is "
                            f"gone, delete {self.path}."
                        ) from None
                    self.path.unlink(missing_ok=True)  # stale lock of a killed run; no one else clears it meanwhile
                    os.link(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True

    def held_by_another(self) -> bool:
        """Whether a live `sweep run` (not this object) holds the folder now; read only, takes nothing."""
        return not self.held and self.path.is_file() and not self._is_stale(self._holder())

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)  # ours (not one another run took after someone deleted ours)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
