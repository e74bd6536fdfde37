"""Benchmark: smoothness and endpoint fidelity of interpolation — lerp, slerp, and slerp with AdaIN
renormalisation and uniform spacing — on the same pairs of images, with the shipped model.

Per variant, averaged over the pairs: the spread of consecutive-frame distances (std ÷ mean, lower is
smoother), their mean, the largest gap between neighbours, the end frames' PSNR gap to each image's own
reconstruction, the share of frames the shapes judge reads as the pair's shape, and the wall time.

    OMP_NUM_THREADS=2 python benchmarks/bench_interpolation.py --pairs 4 --frames 9 --steps 20 --guidance 3
    OMP_NUM_THREADS=1 python benchmarks/bench_interpolation.py --methods fixed-point bdia  # methods side by side
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from invedit import api, shapes
from invedit.judge import judge
from invedit.morph import InterpolationSettings, interpolate

VARIANTS = {
    "lerp": dict(mode="lerp"),
    "slerp": dict(mode="slerp"),
    "slerp + AdaIN": dict(mode="slerp", renormalise=True),
    "slerp + AdaIN + uniform": dict(mode="slerp", renormalise=True, spacing="uniform"),
}


def make_pairs(n: int, folder: Path, seed: int) -> list[tuple[list[Path], list[str], str]]:
    """Pairs of images of one shape in two colour schemes."""
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(n):
        shape = ("circle", "square")[k % 2]
        paths, captions = [], []
        for j in range(2):
            scene = shapes.sample_scene(rng, shape=shape)
            paths.append(folder / f"pair{k}_{j}.png")
            Image.fromarray(shapes.render(scene)).save(paths[-1])
            captions.append(scene.caption)
        pairs.append((paths, captions, shape))
    return pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--methods", nargs="+", default=["fixed-point"], help="inversion methods (rows per method)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    model = api.load(device="cpu")
    folder = Path(tempfile.mkdtemp())
    pairs = make_pairs(args.pairs, folder, args.seed)
    rows = {}
    for method in args.methods:
        settings = api.InversionSettings(steps=args.steps, method=method, guidance=args.guidance)
        inversions = []
        for paths, captions, shape in pairs:
            files = [api.invert_image(model, path, cap, settings, out=folder / method).path
                     for path, cap in zip(paths, captions)]
            inversions.append((files, shape))
        for name in args.variants:
            per_pair = []
            for files, shape in inversions:
                start = time.perf_counter()
                r = interpolate(model, files, interp=InterpolationSettings(frames=args.frames, batch_size=args.frames,
                                                                           **VARIANTS[name]))
                seg = r.report["segments"][0]
                gaps = [abs(e["frame_psnr_vs_input"] - e["reconstruction_psnr_vs_input"])
                        for e in r.report["endpoints"]]
                per_pair.append({"spread": seg["spread"], "mean": seg["consecutive_mean"],
                                 "max": max(seg["consecutive"]), "endpoint_gap_db": max(gaps),
                                 "seconds": time.perf_counter() - start,
                                 "shape_kept": float(np.mean([judge(np.asarray(f)).shape == shape for f in r.frames]))})
            row = {k: float(np.mean([x[k] for x in per_pair])) for k in per_pair[0]}
            row["endpoint_gap_db"] = max(x["endpoint_gap_db"] for x in per_pair)
            rows[name if len(args.methods) == 1 else f"{method}: {name}"] = row
    print(f"{args.pairs} pairs, {args.frames} frames, {args.steps} steps, {', '.join(args.methods)} inversion at "
          f"guidance {args.guidance}, torch threads {torch.get_num_threads()}")
    width = max(26, *map(len, rows))
    print(f"{'':{width}s} {'spread':>7s} {'mean d':>7s} {'max d':>7s} {'end gap dB':>10s} {'shape kept':>10s} "
          f"{'s/pair':>7s}")
    for name, r in rows.items():
        print(f"{name:{width}s} {r['spread']:7.3f} {r['mean']:7.4f} {r['max']:7.4f} {r['endpoint_gap_db']:10.4f} "
              f"{r['shape_kept']:10.0%} {r['seconds']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
