"""reports/ is a pure function of tables: it must not pull torch (or ray) in."""

import subprocess
import sys


def test_reports_do_not_import_torch_or_ray():
    code = (
        "import sys, reports.build, reports.tables, reports.markdown, sweep.results\n"
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
