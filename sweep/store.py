"""The store: artifacts in folders named by stage key, written atomically, checked before use.

    <store>/<kind>/<key>/                    a finished artifact: manifest.json, row.parquet, weights, ...
    <store>/<kind>/.tmp-<key>-<pid>-<rand>/   a stage at work (never read as finished)
    <store>/<kind>/.ckpt-<key>/               training checkpoints of an unfinished stage (survive a kill)
    <store>/<kind>/.damaged-<key>-<time>/     an artifact that failed its checks, moved aside for inspection
    <store>/<kind>/.stale-<key>-<time>/       an artifact built from other input bytes than the current ones
    <store>/failed/<kind>/<key>.parquet       the row of the latest failed or skipped attempt
    <store>/.verified/<kind>/<key>.json       checksums verified earlier, with each file's (size, mtime_ns, inode, ctime_ns)

A stage writes only inside its temporary folder; the folder gets a manifest (every file with its
size and sha256) and is renamed to its key only once complete. Only a renamed folder with a
manifest counts as finished, and it is trusted only once every file matches its manifest's sha256;
a folder that does not is moved aside and its stage runs again. Hashing every artifact on every run
would make reruns slow, so a verified checksum is remembered (JSON, written atomically) against the
file's size, modification time, inode and change time, and the file is hashed again when any of them
changes. A row records the digest of each input artifact it was built from (`<kind>_digest`), so a
dependant of an input rebuilt with other bytes is recomputed too. Several sweeps may share one store
(`--store`): concurrent writers of the same stage race on the rename, and the loser discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from space.schema import read_sha256 as file_sha256  # uncached: the manifest checks re-read the bytes
from sweep.faults import fault_point

ROW_FILE = "row.parquet"
LOSSES_FILE = "losses.parquet"
MANIFEST_FILE = "manifest.json"
STAGE_FILE = "stage.json"
VERIFIED_DIR = ".verified"
# Bookkeeping the worker writes beside a stage's output; dependants never read it, so it is left out of the
# digest (the row holds timestamps: a bit-identical rebuild of an input must not look like other bytes).
BOOKKEEPING_FILES = frozenset({ROW_FILE, LOSSES_FILE, STAGE_FILE, MANIFEST_FILE})


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def checkpoint_folder(self, kind: str, key: str) -> Path:
        return self.root / kind / f".ckpt-{key}"

    def is_finished(self, kind: str, key: str) -> bool:
        folder = self.folder(kind, key)
        return (folder / MANIFEST_FILE).is_file() and (folder / ROW_FILE).is_file()

    def manifest(self, kind: str, key: str) -> dict[str, Any]:
        return json.loads((self.folder(kind, key) / MANIFEST_FILE).read_text())

    def verify(self, kind: str, key: str) -> str:
        """'' if every file of the finished artifact matches its manifest's size and sha256, else what is wrong.

        A checksum verified before is taken from the cache while the file's (size, mtime_ns, inode,
        ctime_ns) are unchanged; any change re-hashes the file."""
        folder = self.folder(kind, key)
        try:
            files = self.manifest(kind, key)["files"]
            if not isinstance(files, dict):
                raise ValueError("no file list")
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"unreadable manifest: {error}"
        cached = self._verified(kind, key)
        fresh: dict[str, dict[str, Any]] = {}
        for name, expected in files.items():
            path = folder / name
            try:
                stat = path.stat()
            except OSError:
                return f"{name} is missing"
            if stat.st_size != expected["size"]:
                return f"{name} has {stat.st_size} bytes, the manifest says {expected['size']}"
            seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino,
                    "ctime_ns": stat.st_ctime_ns, "sha256": expected["sha256"]}
            if cached.get(name) != seen:
                if file_sha256(path) != expected["sha256"]:
                    return f"{name} does not match its sha256 in the manifest"
            fresh[name] = seen
        if fresh != cached:
            cache = self._verified_path(kind, key)
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache, fresh)
        return ""

    def _verified_path(self, kind: str, key: str) -> Path:
        return self.root / VERIFIED_DIR / kind / f"{key}.json"

    def _verified(self, kind: str, key: str) -> dict[str, Any]:
        """The checksum cache of an artifact (JSON only: reading it runs no code); {} if absent or unreadable."""
        try:
            value = json.loads(self._verified_path(kind, key).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def digest(self, kind: str, key: str) -> str:
        """The sha256 of a finished artifact's content as its dependants read it: its manifest's checksums of
        every file but the worker's bookkeeping (row, losses, stage.json)."""
        files = self.manifest(kind, key)["files"]
        content = {name: entry["sha256"] for name, entry in sorted(files.items()) if name not in BOOKKEEPING_FILES}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def stale_inputs(self, inputs: dict[str, str], row: dict[str, Any]) -> str:
        """'' if every finished input in `inputs` (role -> key; roles are kind names) has the digest that `row`
        recorded for it, else which one differs. A row without a recorded digest (an older store) is trusted."""
        for role, key in inputs.items():
            recorded = row.get(f"{role}_digest")
            if not isinstance(recorded, str) or not recorded or not self.is_finished(role, key):
                continue
            if (current := self.digest(role, key)) != recorded:
                return f"input {role} {key} now holds other bytes (digest {current[:12]}, built from {recorded[:12]})"
        return ""

    def quarantine(self, kind: str, key: str, label: str = "damaged") -> Path | None:
        """Move an artifact aside (`.damaged-*`, or `.stale-*` for one built from older inputs) so its stage runs
        again; None if it is gone already (another sweep sharing the store moved it first)."""
        target = self.root / kind / f".{label}-{key}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            os.rename(self.folder(kind, key), target)
        except FileNotFoundError:
            return None
        finally:
            self._verified_path(kind, key).unlink(missing_ok=True)
        return target

    def begin(self, kind: str, key: str) -> Path:
        """A fresh temporary folder for a stage at work."""
        tmp = self.root / kind / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(3)}"
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, kind: str, key: str) -> Path:
        """Write the manifest, then publish the folder under its key (atomic rename)."""
        files = {
            str(path.relative_to(tmp)): {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        }
        write_json(tmp / MANIFEST_FILE, {"kind": kind, "key": key, "files": files})
        fault_point("before_rename")
        final = self.folder(kind, key)
        try:
            os.rename(tmp, final)
        except OSError:
            if not self.is_finished(kind, key):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another worker finished the same stage first
        else:  # just hashed: remember it, so the next run does not hash these files again
            verified = {}
            for name, entry in files.items():
                stat = (final / name).stat()
                verified[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino,
                                  "ctime_ns": stat.st_ctime_ns, "sha256": entry["sha256"]}
            self._verified_path(kind, key).parent.mkdir(parents=True, exist_ok=True)
            write_json(self._verified_path(kind, key), verified)
        self.failure_file(kind, key).unlink(missing_ok=True)
        shutil.rmtree(self.checkpoint_folder(kind, key), ignore_errors=True)
        return final

    def clean_temporaries(self) -> int:
        """Remove the folders of stages that died at work on this machine; returns how many."""
        import psutil

        removed = 0
        for tmp in self.root.glob("*/.tmp-*"):
            parts = tmp.name.split("-")
            pid = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else -1
            if pid != os.getpid() and psutil.pid_exists(pid) and pid > 0:
                continue  # a live process (another sweep sharing this store) is writing it
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
        return removed

    def running(self, kind: str, key: str) -> bool:
        """Whether a live process on this machine is working on the stage."""
        import psutil

        for tmp in (self.root / kind).glob(f".tmp-{key}-*"):
            pid = tmp.name.split("-")[2]
            if pid.isdigit() and psutil.pid_exists(int(pid)):
                return True
        return False

    def row(self, kind: str, key: str) -> dict[str, Any] | None:
        """The row of a finished stage (None if it is not finished)."""
        if not self.is_finished(kind, key):
            return None
        return pd.read_parquet(self.folder(kind, key) / ROW_FILE).iloc[0].to_dict()

    def failure_file(self, kind: str, key: str) -> Path:
        return self.root / "failed" / kind / f"{key}.parquet"

    def failure(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self.failure_file(kind, key)
        return pd.read_parquet(path).iloc[0].to_dict() if path.is_file() else None

    def record_failure(self, kind: str, key: str, row: dict[str, Any]) -> None:
        path = self.failure_file(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_rows(path, [row])

    def rows(self, kind: str) -> pd.DataFrame:
        """Every row of a stage kind: finished ones, and failed ones that never finished."""
        frames = [pd.read_parquet(path) for path in self._published(kind, ROW_FILE)]
        finished = {frame["key"].iloc[0] for frame in frames}
        for path in sorted((self.root / "failed" / kind).glob("*.parquet")):
            if path.stem not in finished:
                frames.append(pd.read_parquet(path))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _published(self, kind: str, name: str) -> list[Path]:
        """`name` in every finished artifact of `kind` (not in folders at work, moved aside or stale: `.*`)."""
        return [path for path in sorted((self.root / kind).glob(f"*/{name}")) if not path.parent.name.startswith(".")]

    def losses(self, kind: str) -> pd.DataFrame:
        frames = [pd.read_parquet(path) for path in self._published(kind, LOSSES_FILE)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as Parquet under a temporary name, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}.tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    fault_point("row_written")
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
