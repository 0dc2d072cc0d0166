"""Provenance values are true: `git_commit` is `git rev-parse HEAD` of the checkout the code runs from; code
installed outside a checkout says so in `code` (the package version), and never borrows an enclosing repo's commit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sweep.worker import provenance

ROOT = Path(__file__).resolve().parents[2]


def test_git_commit_is_the_checkouts_head():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    record = provenance(["sweep", "run", "x.yaml"], "abc")
    assert record["git_commit"] == head and len(head) == 40
    assert record["code"].startswith(f"git {head[:12]}")
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert record["git_dirty"] is bool(dirty)
    assert record["command"] == "sweep run x.yaml" and record["spec_hash"] == "abc"
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))


def test_an_install_outside_a_checkout_says_so(tmp_path):
    # site-packages inside another git repository (a virtual environment in some checkout)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "other project"], check=True)
    site = tmp_path / "venv" / "site-packages"
    for package in ("sweep", "space", "runners"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import json, sys; from sweep.worker import provenance; print(json.dumps(provenance(['sweep'], 'h')))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["code"].startswith("elm-sweep==")  # says what it is instead of a commit
    assert record["git_commit"] == "" and record["git_dirty"] is False  # not the enclosing repository's commit
