"""Images per second when N images go through the UNet together, against one at a time (same process).

On the shipped model: N rendered scenes (`shapes.make_dataset`), each inverted and regenerated with a method
(`methods.invert_with` + `methods.replay`, one conditioning for all), in batches of 1, 4 and 8. Prints images/s,
the speed-up over batch 1 and the largest difference of x_T from the batch-1 run (batches must not change
results beyond rounding: fixed-point iterates and stops per image).

    OMP_NUM_THREADS=1 python benchmarks/bench_batch.py --images 8 --methods direct fixed-point
"""
from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

from invedit import api, shapes
from invedit.io import prepare
from invedit.methods import Conditioning, MethodOptions, invert_with, replay
from invedit.schedule import Schedule


def run(model, z0, c: Conditioning, method: str, schedule: Schedule, batch: int) -> tuple[float, torch.Tensor]:
    """Seconds to invert and regenerate every image in batches of `batch`, and the x_T of all."""
    start, noises = time.perf_counter(), []
    with torch.no_grad():
        for k in range(0, z0.shape[0], batch):
            result = invert_with(method, c, z0[k:k + batch], schedule, MethodOptions())
            replay(method, c, result.x_T, result.extras, schedule)
            noises.append(result.x_T)
    return time.perf_counter() - start, torch.cat(noises)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=["direct", "fixed-point"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.0)
    args = ap.parse_args()
    model = api.load(device="cpu")
    images, _ = shapes.make_dataset(args.images, seed=41_000)
    pixels = torch.cat([prepare(Image.fromarray(im), model.multiple, 64).pixels for im in images])
    z0 = model.encode_image(pixels)
    c = Conditioning(model.eps, model.encode_text(["a shape on a background"]), model.encode_text([""]),
                     args.guidance)
    schedule = Schedule.create(model.noise, args.steps)
    print(f"torch threads {torch.get_num_threads()}, {args.images} images, {args.steps} steps, w = {args.guidance}")
    print(f"{'method':12s} {'batch':>5s} {'images/s':>9s} {'speed-up':>9s} {'max |Δx_T| vs batch 1':>22s}")
    for method in args.methods:
        base_s, base_x = run(model, z0, c, method, schedule, 1)
        for batch in args.batches:
            s, x = (base_s, base_x) if batch == 1 else run(model, z0, c, method, schedule, batch)
            print(f"{method:12s} {batch:5d} {args.images / s:9.2f} {base_s / s:9.2f} "
                  f"{float((x - base_x).abs().max()):22.2e}")


if __name__ == "__main__":
    main()
