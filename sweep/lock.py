"""One `sweep run` per output folder at a time; a lock left by a killed run is detected and cleared."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class LockedError(RuntimeError):
    """Another live `sweep run` holds the folder."""


class RunLock:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, holder: dict | None) -> bool:
        import psutil

        if holder is None:
            return True  # unreadable: its writer died mid-write
        if holder.get("host") != socket.gethostname():
            return False  # cannot check a process on another machine: refuse, the user may remove it
        try:
            process = psutil.Process(holder["pid"])
            return abs(process.create_time() - holder["create_time"]) > 1e-3  # pid reused by another process
        except psutil.NoSuchProcess:
            return True

    def acquire(self) -> None:
        import psutil

        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(), "host": socket.gethostname(),
            "create_time": psutil.Process().create_time(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if not self._is_stale(holder):
                    raise LockedError(
                        f"{self.path.parent} is in use by another `sweep run` (pid {holder['pid']} on {holder['host']} "
                        f"since {holder['since']}); wait for it to finish, or use another --out. If that run is gone, "
                        f"delete {self.path}."
                    ) from None
                self.path.unlink(missing_ok=True)  # stale lock of a killed run
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
            self.held = True
            return
        raise LockedError(f"could not take {self.path}; another run took it at the same moment")

    def held_by_another(self) -> bool:
        """Whether a live `sweep run` (not this object) holds the folder now; read only, takes nothing."""
        return not self.held and self.path.is_file() and not self._is_stale(self._holder())

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
