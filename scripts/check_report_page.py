"""Open a recipe's report.html in headless Chromium and check that every picture on it loaded.

Needs Debian's `chromium` package (`apt-get install -y chromium`). The page marks, once loaded, how many of
its images decoded (`data-images-loaded="k/n"` on <body>); this script reads the DOM Chromium rendered.

    python scripts/check_report_page.py runs/recipes/reference/report.html [--screenshot page.png]
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path)
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no chromium found: apt-get install -y chromium", file=sys.stderr)
        return 2
    url = args.page.resolve().as_uri()
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    if args.screenshot:
        subprocess.run(base + [f"--screenshot={args.screenshot.resolve()}", "--window-size=1400,900", url],
                       capture_output=True, timeout=120)
    if not found:
        print(f"{args.page}: the page did not report its images (did its script run?)")
        return 1
    loaded, total = map(int, found.groups())
    print(f"{args.page}: {loaded} of {total} images loaded in {Path(browser).name}")
    return 0 if loaded == total and total > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
