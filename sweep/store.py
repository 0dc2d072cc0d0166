"""The store: artifacts in folders named by stage key, written atomically.

    <store>/<kind>/<key>/                   a finished artifact (row.parquet, manifest.json, weights, ...)
    <store>/<kind>/.tmp-<key>-<pid>-<rand>/  a stage at work (never read as finished)
    <store>/failed/<kind>/<key>.parquet     the row of the latest failed attempt (removed on success)

A stage writes only inside its temporary folder; the folder is renamed to its key only once
everything in it (weights, samples, its row) is written. Only renamed folders count as finished,
so a killed stage leaves at worst a `.tmp-` folder, which the next run removes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

ROW_FILE = "row.parquet"
LOSSES_FILE = "losses.parquet"
MANIFEST_FILE = "manifest.json"


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def is_finished(self, kind: str, key: str) -> bool:
        return (self.folder(kind, key) / ROW_FILE).is_file()

    def begin(self, kind: str, key: str) -> Path:
        """A fresh temporary folder for a stage at work."""
        tmp = self.root / kind / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(3)}"
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, kind: str, key: str) -> Path:
        """Publish a finished temporary folder under its key (atomic rename)."""
        final = self.folder(kind, key)
        try:
            os.rename(tmp, final)
        except OSError:
            if not self.is_finished(kind, key):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another worker finished the same stage first
        self.failure_file(kind, key).unlink(missing_ok=True)
        return final

    def clean_temporaries(self) -> int:
        """Remove folders of stages that died at work; returns how many."""
        removed = 0
        for tmp in self.root.glob("*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
        return removed

    def failure_file(self, kind: str, key: str) -> Path:
        return self.root / "failed" / kind / f"{key}.parquet"

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
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
