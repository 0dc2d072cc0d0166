"""Reports: tables, figures and sample grids from a run's Parquet rows; never imports torch or ray.

Entry point: `reports.build.write_report(results, out, formats=("md", "html", "latex", "csv"))`.
Tables are pure functions (`reports.tables`); rendering is separate (`markdown`, `latex`, `html`,
`figures`, `grids`).
"""
