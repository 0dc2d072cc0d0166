"""Screenshot a report.html in headless Chromium (a visual check outside pytest).

    python scripts/screenshot_report.py runs/tiny/report.html /tmp/report.png
    python scripts/screenshot_report.py runs/tiny/report.html /tmp/report.png --width 1280 --height 6000
    python scripts/screenshot_report.py runs/tiny/report.html docs/report.png --full --colors 256   # the README's

Needs a Chromium binary (Debian: `apt-get install -y chromium`). The page loads from a file:// URL
with networking pointed at a dead proxy, so a report that still needed the network would show
broken images in the screenshot. Also checks the page for external URLs before shooting.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(f"no Chromium found (tried {', '.join(BROWSERS)}); install one, e.g. `apt-get install -y chromium`")


def external_urls(html: str) -> list[str]:
    """http(s) URLs in the page: a self-contained report has none."""
    return re.findall(r"https?://[^\s\"'<>)]+", html)


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 4000, timeout_s: float = 120.0) -> Path:
    """Render `html` at width x height CSS pixels into the PNG `out`."""
    browser = find_browser()
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-extensions", "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}",
            f"--window-size={width},{height}", "--virtual-time-budget=5000", f"--screenshot={out}",
            html.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return out


def trim(path: Path, colors: int = 0, cut: bool = True, margin: int = 24) -> Path:
    """With `cut`, cut the blank (white) rows below the page's last content, keeping `margin` pixels;
    with `colors`, store the PNG with that many palette colours (a much smaller file for docs/)."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    rows = np.flatnonzero((np.asarray(image.convert("L")) < 250).any(axis=1))
    if cut and rows.size:
        image = image.crop((0, 0, image.width, min(image.height, int(rows.max()) + margin)))
    if colors:
        image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="a report.html")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    parser.add_argument("--height", type=int, default=4000, help="viewport height in CSS pixels (default 4000)")
    parser.add_argument("--full", action="store_true", help="the whole page: a 30000-px viewport, the blank bottom cut off")
    parser.add_argument("--colors", type=int, default=0, help="store with this many palette colours (e.g. 256; default: full colour)")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        raise SystemExit(f"{args.html} is not a file; pass the report.html that `sweep report` wrote")
    urls = external_urls(args.html.read_text(encoding="utf-8"))
    if urls:
        print(f"warning: the page names {len(urls)} external URL(s), e.g. {urls[0]}", file=sys.stderr)
    path = screenshot(args.html, args.out, args.width, 30000 if args.full else args.height)
    if args.full or args.colors:
        trim(path, args.colors, cut=args.full)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
