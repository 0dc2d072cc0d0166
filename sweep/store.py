"""The store: artifacts in folders named by stage key, written atomically, checked before use.

    <store>/<kind>/<key>/                    a finished artifact: manifest.json, row.parquet, weights, ...
    <store>/<kind>/.tmp-<key>-<pid>-<rand>/   a stage at work (never read as finished)
    <store>/<kind>/.ckpt-<key>/               training checkpoints of an unfinished stage (survive a kill)
    <store>/<kind>/.damaged-<key>-<time>/     an artifact that failed its checks, moved aside for inspection
    <store>/failed/<kind>/<key>.parquet       the row of the latest failed or skipped attempt

A stage writes only inside its temporary folder; the folder gets a manifest (every file with its
size and sha256) and is renamed to its key only once complete. Only a renamed folder with a
manifest counts as finished; a folder whose files no longer match their manifest is moved aside and
its stage runs again. Several sweeps may share one store (`--store`): concurrent writers of the same
stage race on the rename, and the loser discards its copy.
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

from sweep.faults import fault_point

ROW_FILE = "row.parquet"
LOSSES_FILE = "losses.parquet"
MANIFEST_FILE = "manifest.json"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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

    def verify(self, kind: str, key: str, checksums: bool = True) -> str:
        """'' if the finished artifact matches its manifest, else what is wrong with it."""
        folder = self.folder(kind, key)
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as error:
            return f"unreadable manifest: {error}"
        for name, expected in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != expected["size"]:
                return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}"
            if checksums and file_sha256(path) != expected["sha256"]:
                return f"{name} does not match its checksum"
        return ""

    def quarantine(self, kind: str, key: str) -> Path:
        """Move a damaged artifact aside so that its stage runs again."""
        target = self.root / kind / f".damaged-{key}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        os.rename(self.folder(kind, key), target)
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
        frames = [pd.read_parquet(path) for path in sorted((self.root / kind).glob(f"*/{ROW_FILE}"))]
        finished = {frame["key"].iloc[0] for frame in frames}
        for path in sorted((self.root / "failed" / kind).glob("*.parquet")):
            if path.stem not in finished:
                frames.append(pd.read_parquet(path))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def losses(self, kind: str) -> pd.DataFrame:
        frames = [pd.read_parquet(path) for path in sorted((self.root / kind).glob(f"*/{LOSSES_FILE}"))]
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
