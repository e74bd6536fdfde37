"""What an edit costs next to a plain invert + regenerate, and what each further target adds.

On the shipped model, for one rendered scene and each inversion method given: UNet calls and seconds of
(a) a plain invert + reconstruct (`api.invert_prepared` + `methods.replay`, no attention control),
(b) an edit with 1 target, (c) an edit with K targets in one batch, (d) K separate one-target edits.
Everything runs in one process, one after the other, each timed as the best of `--repeats` runs.

    OMP_NUM_THREADS=1 python benchmarks/bench_edit_cost.py --methods direct negative-prompt --targets 3
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from invedit import api, shapes
from invedit.edit import EditSettings, edit_latents
from invedit.io import prepare
from invedit.methods import replay


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["direct", "negative-prompt"])
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = api.load(device="cpu")
    scene = shapes.Scene("circle", "red", "blue", (0.5, 0.5), 0.55, 0.0)
    prepared = prepare(Image.fromarray(shapes.render(scene, 64)), model.multiple, 64)
    colours = [c for c in shapes.COLOURS if c not in ("red", "blue")][:args.targets]
    targets = [shapes.caption_for("circle", c, "blue") for c in colours]
    print(f"torch threads {torch.get_num_threads()}, {args.steps} steps, w = {args.guidance}, best of {args.repeats}")
    print(f"{'method':16s} {'plain calls':>11s} {'plain s':>8s} {'edit-1 calls':>12s} {'edit-1 s':>8s} "
          f"{'ratio calls':>11s} {f'{args.targets} in 1 batch s':>17s} {f'{args.targets} separate s':>15s}")
    for method in args.methods:
        settings = api.InversionSettings(steps=args.steps, method=method, guidance=args.guidance)
        t_inv, (inv, _) = _best(lambda: api.invert_prepared(model, prepared, scene.caption, settings), args.repeats)
        c = api.conditioning_for(model, scene.caption, "", args.guidance)
        with torch.no_grad():
            t_rep, _ = _best(lambda: replay(method, c, inv.x_T, inv.extras, inv.schedule), args.repeats)
        inv_calls = inv.stats["network_calls"]
        replay_calls = args.steps * (2 if method == "edict" else 1)
        t_one, one = _best(lambda: edit_latents(model, inv, targets[:1], EditSettings()), args.repeats)
        t_many, _ = _best(lambda: edit_latents(model, inv, targets, EditSettings()), args.repeats)
        t_sep, _ = _best(lambda: [edit_latents(model, inv, [t], EditSettings()) for t in targets], args.repeats)
        plain_calls, edit_calls = inv_calls + replay_calls, inv_calls + one.network_calls
        print(f"{method:16s} {plain_calls:11d} {t_inv + t_rep:8.2f} {edit_calls:12d} {t_inv + t_one:8.2f} "
              f"{edit_calls / plain_calls:11.2f} {t_inv + t_many:17.2f} {args.targets * t_inv + t_sep:15.2f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
