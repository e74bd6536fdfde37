"""Kill a recipe run with SIGKILL at random moments, resume it, and compare with a run never killed (issue 10).

Renders N shapes scenes (`shapes.make_dataset`) as input photos, writes a recipe (reconstruct + edit of each,
in batches of 4), runs it once to the end (`clean`), then runs it into another
folder killed with SIGKILL at `--kills` random moments (seeded) of the clean run's duration, and once more
to the end. Pictures and inversions must be byte for byte those of the clean run, reports equal but for
timings and folder names, and no staging or temporary file may be left.

    OMP_NUM_THREADS=1 python scripts/kill_resume.py --images 24 --kills 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from invedit import shapes

RECIPE = """out = "{out}"
[defaults]
steps = {steps}
batch_size = 4
[[inputs]]
path = "{inputs}"
prompt = "a shape on a background"
[[steps]]
kind = "reconstruct"
[[steps]]
kind = "edit"
targets = ["a red star on a blue background"]
"""


def run(recipe: Path, out: Path, kill_at: float | None = None) -> int:
    cmd = [sys.executable, "-m", "invedit", "run", str(recipe), "--set", f'out="{out}"']
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if kill_at is None:
        return subprocess.run(cmd, env=env, capture_output=True).returncode
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_at)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and p.name not in ("summary.json", "report.html") and not p.name.startswith("manifest")
            and ".cache" not in p.parts}


def compare(clean: Path, other: Path) -> list[str]:
    """Problems found (empty: identical)."""
    a, b = files(clean), files(other)
    problems = [f"only in one run: {k}" for k in sorted(set(a) ^ set(b), key=str)]
    for k in sorted(set(a) & set(b), key=str):
        if a[k] == b[k]:
            continue
        if not str(k).endswith(".json"):
            problems.append(f"differs: {k}")
            continue
        ra, rb = (json.loads(d[k].decode().replace(str(root), "OUT")) for d, root in ((a, clean), (b, other)))
        for r in (ra, rb):
            r.pop("seconds", None)
            r.get("inversion", {}).pop("seconds", None)
        if ra != rb:
            problems.append(f"report differs beyond timings: {k}")
    left = [str(p) for p in other.rglob(".*") if p.name != ".cache" and ".cache" not in p.parts]
    return problems + [f"left behind: {p}" for p in left]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder to work in (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-resume-"))
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    images, _ = shapes.make_dataset(args.images, seed=30_000)
    for k, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"scene-{k:02d}.png")
    recipe = work / "recipe.toml"
    recipe.write_text(RECIPE.format(out="out", steps=args.steps, inputs=inputs))

    start = time.perf_counter()
    assert run(recipe, work / "clean") == 0, "the clean run failed"
    duration = time.perf_counter() - start
    rng = random.Random(args.seed)
    # each killed run resumes the previous one, so the moments are drawn small enough that every run is still
    # working when it is killed (the exit codes say whether it was)
    moments = [rng.uniform(0.15, 0.45) for _ in range(args.kills)]
    codes = []
    for m in moments:
        codes.append(run(recipe, work / "killed", kill_at=m * duration))
    t0 = time.perf_counter()
    final = run(recipe, work / "killed")
    resumed = time.perf_counter() - t0
    summary = json.loads((work / "killed" / "summary.json").read_text())
    problems = compare(work / "clean", work / "killed")
    print(f"{args.images} images × (reconstruct, edit), {args.steps} steps, batch 4; clean run {duration:.0f} s")
    print(f"killed at {', '.join(f'{m:.0%}' for m in moments)} of that after each restart (exit codes {codes}); "
          f"the last resume took "
          f"{resumed:.0f} s and exited {final}: {summary['counts']}")
    print(f"{len(files(work / 'clean'))} files compared: " + ("identical (pictures and inversions byte for byte, "
                                                              "reports but for timings)" if not problems else
                                                              f"{len(problems)} problems"))
    for p in problems[:20]:
        print("  " + p)
    if any(code != -signal.SIGKILL for code in codes):
        print("not every run was killed while working: draw smaller moments (--seed) or use more --steps")
    sys.exit(1 if problems or final != 0 or any(code != -signal.SIGKILL for code in codes) else 0)


if __name__ == "__main__":
    main()
