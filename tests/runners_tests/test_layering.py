"""runners/ is research code: it never imports sweep/ (the orchestrator) nor knows the store's layout; space/ is the
torch-free contract that every layer reads."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> dict[str, set[str]]:
    """{file: top-level names of every module it imports}, read from the source (no import runs)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_runners_never_import_sweep():
    offenders = {path for path, names in imported_modules("runners").items() if "sweep" in names}
    assert not offenders, f"runners/ must not import sweep/: {sorted(offenders)}"


def test_the_stage_functions_live_in_sweep():
    assert not (ROOT / "runners" / "stages.py").exists()
    assert (ROOT / "sweep" / "stages" / "__init__.py").exists()


def test_space_is_torch_free():
    code = (
        "import sys, pkgutil, importlib, space\n"
        "for m in pkgutil.iter_modules(space.__path__, 'space.'): importlib.import_module(m.name)\n"
        "bad = [m for m in ('torch', 'ray', 'runners', 'sweep') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
