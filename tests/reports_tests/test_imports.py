"""reports/ is a pure function of tables: it must not pull torch (or ray) in, not even while drawing."""

import subprocess
import sys


def test_reports_do_not_import_torch_or_ray():
    code = (
        "import sys, pkgutil, importlib, reports, sweep.results\n"
        "names = [m.name for m in pkgutil.iter_modules(reports.__path__, 'reports.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "import reports.figures, reports.tables\n"
        "reports.figures._pyplot(); reports.tables.t_quantile_975(3)  # matplotlib and scipy, as a report loads them\n"
        "assert {'reports.build', 'reports.figures', 'reports.grids', 'reports.html', 'reports.latex'} <= set(names), names\n"
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
