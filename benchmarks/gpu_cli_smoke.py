"""Every README command on the shipped model with --device cuda, in one process (a lent GPU's minutes are few).

The commands run through the CLI's own entry point with click's test runner, so that Python, torch and CUDA
start once instead of once per command (15–18 s each on the H200 machine, as separate processes). Prints each
command, its exit code and seconds, and each round trip's PSNR against the VAE round trip; stops at the first
failure with that command's output. CI and the tests run on CPUs only:
this is the check to run whenever a GPU is lent (benchmarks/gpu_session.sh, part cli).

    python benchmarks/gpu_cli_smoke.py                                   # cuda, fp32 then fp16
    OMP_NUM_THREADS=1 python benchmarks/gpu_cli_smoke.py --device cpu --dtypes fp32   # a dry run on the CPU
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from invedit.cli import main as cli

PHOTO, SCENE, OTHER = "assets/photos/astronaut.png", "assets/scenes/yellow-star.png", "assets/scenes/red-circle.png"
METHODS = ["bdia", "fixed-point", "edict", "null-text", "negative-prompt", "direct", "ddim"]


def commands(out: Path, device: str, dtypes: list[str]) -> list[list[str]]:
    runs = []
    for dt in dtypes:
        where = ["--device", device, "--dtype", dt]
        runs += [["roundtrip", PHOTO, "--prompt", "a photo", "--steps", "10", *where, "--out", f"{out}/rt-{dt}"],
                 ["reconstruct", f"{out}/rt-{dt}/astronaut.inversion.safetensors", *where, "--out", f"{out}/rc-{dt}"]]
        for m in METHODS if dt != "fp32" else ["direct"]:  # every method once, in half precision
            runs.append(["edit", SCENE, "-s", "a yellow star on a blue background", "-t",
                         "a red star on a blue background", "--method", m, "--steps", "10", *where,
                         "--out", f"{out}/edit-{m}-{dt}"])
        runs += [["edit", SCENE, "-s", "a yellow star on a blue background", "-t", "a yellow star on a black background",
                  "--blend", "star", "--steps", "10", *where, "--out", f"{out}/blend-{dt}"],
                 ["interpolate", SCENE, OTHER, "--frames", "4", "--steps", "10", *where, "--out", f"{out}/morph-{dt}"],
                 ["interpolate", SCENE, OTHER, "--frames", "4", "--steps", "10", "--method", "bdia", *where,
                  "--out", f"{out}/morphb-{dt}"],
                 ["sample", "--prompt", "a red circle on a blue background", "--count", "2", "--steps", "10", *where,
                  "--out", f"{out}/s-{dt}"]]
    runs.append(["run", "recipes/recolour-shapes.toml", "--set", "steps=5", "--set", f'out="{out}/recipe"',
                 "--set", f'device="{device}"'])
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--out", type=Path, default=None, help="where the outputs go (default: a temporary folder)")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    runner, start = CliRunner(), time.perf_counter()
    todo = commands(out, args.device, args.dtypes)
    for k, argv in enumerate(todo, 1):
        t = time.perf_counter()
        result = runner.invoke(cli, argv)
        print(f"[{k}/{len(todo)}] exit {result.exit_code} in {time.perf_counter() - t:5.1f} s: invedit "
              + " ".join(argv), flush=True)
        if argv[0] == "roundtrip" and result.exit_code == 0:
            report = json.loads(next(Path(argv[-1]).glob("*.report.json")).read_text())
            print(f"    reconstruction vs VAE round trip: {report['metrics']['reconstruction_vs_vae']['psnr']:.1f} dB "
                  f"({report['inversion']['method']}, {report['model']['dtype']})")
        if result.exit_code != 0:
            print(result.output[-4000:])
            if result.exc_info and not isinstance(result.exception, SystemExit):
                import traceback

                traceback.print_exception(*result.exc_info)
            return 1
    print(f"CLI smoke on {args.device} ({', '.join(args.dtypes)}): all {len(todo)} commands passed in "
          f"{time.perf_counter() - start:.0f} s; outputs in {out}")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
