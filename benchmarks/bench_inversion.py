"""Benchmark: invedit's inversion + reconstruction against diffusers' own scheduler loop, in one process.

Same model, image, prompt and steps for every row. The reference is the loop everyone writes with
diffusers: DDIMInverseScheduler to invert, DDIMScheduler to regenerate, calling the UNet directly.
Reported per row: wall time, UNet calls, latent round-trip error ‖ẑ0 − z0‖/‖z0‖, PSNR of the
reconstruction against the VAE round trip, the wall-time ratio to the reference, and the overhead
ratio = wall time ÷ (the same number of UNet calls timed alone).

    python benchmarks/bench_inversion.py                       # the shipped model, astronaut, 50 steps
    python benchmarks/bench_inversion.py --model path/to/sd --image photo.jpg --steps 50 --device cuda

Timings use the thread count printed in the header (OMP_NUM_THREADS; 2 on the developers' machines).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from invedit import api
from invedit.ddim import sample
from invedit.guidance import guided
from invedit.invert import FixedPointOptions, invert
from invedit.io import load_image
from invedit.report import image_metrics, latent_error, to_unit
from invedit.schedule import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import reference_loop  # noqa: E402  (diffusers' own loop, shared with the methods benchmark)

ROOT = Path(__file__).resolve().parent.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def unet_alone(model, z0, cond, calls):
    """The bound: `calls` UNet calls on the same shapes, nothing else."""
    x, c = z0.to(model.device, model.dtype), cond.to(model.device, model.dtype)
    t = torch.tensor([500], device=model.device)
    model.unet(x, t, encoder_hidden_states=c)  # warm-up
    _, seconds = timed(lambda: [model.unet(x, t, encoder_hidden_states=c) for _ in range(calls)], model.device)
    return seconds / calls


def ours(model, z0, cond, steps, method, options):
    eps_fn = guided(model.eps, cond, None, 1.0)
    schedule = Schedule.create(model.noise, steps)
    traj = invert(eps_fn, z0, schedule, method, options)
    z_hat = sample(eps_fn, traj.x_T, schedule)
    return traj.x_T, z_hat, traj.network_calls + steps


def row(name, model, z0, vae_pixels, fn, per_call, box):
    with torch.no_grad():
        (x_T, z_hat, calls), seconds = timed(fn, model.device)
        recon = box(model.decode(z_hat))
    psnr = image_metrics(to_unit(recon[0]), to_unit(vae_pixels[0]))["psnr"]
    return {"name": name, "seconds": seconds, "unet_calls": calls, "latent_error": latent_error(z_hat.cpu(), z0.cpu()),
            "psnr_vs_vae": psnr, "overhead_ratio": seconds / (calls * per_call)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model (default: the shipped one, or a tiny random one if absent)")
    p.add_argument("--image", default=str(ROOT / "assets" / "photos" / "astronaut.png"))
    p.add_argument("--prompt", default="a photo")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--repeat", type=int, default=3, help="runs of each row; the fastest is kept")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    model_path = args.model
    if model_path is None and not (api.DEFAULT_MODEL / "model_index.json").is_file():
        from invedit.model.build import save_tiny_pipeline

        model_path = str(save_tiny_pipeline(Path(tempfile.mkdtemp()) / "tiny"))
    model = api.load(model_path, device=args.device, dtype=args.dtype)
    prepared = load_image(args.image, model.multiple, model.native_size)
    box = prepared.content
    with torch.no_grad():
        z0 = model.encode_image(prepared.pixels)
        cond = model.encode_text([args.prompt])
        vae_pixels = box(model.decode(z0))
        per_call = min(unet_alone(model, z0, cond, 2 * args.steps) for _ in range(args.repeat))
    rows_spec = [
        ("diffusers DDIMInverse+DDIM loop (reference)", lambda: reference_loop(model, z0, cond, cond, 1.0, args.steps)),
        ("invedit ddim", lambda: ours(model, z0, cond, args.steps, "ddim", None)),
        ("invedit fixed-point (tol 1e-6, ≤20 it)",
         lambda: ours(model, z0, cond, args.steps, "fixed-point", FixedPointOptions(1e-6, 20))),
    ]
    rows = []
    for name, fn in rows_spec:
        runs = [row(name, model, z0, vae_pixels, fn, per_call, box) for _ in range(args.repeat)]
        rows.append(min(runs, key=lambda r: r["seconds"]))
    ref = rows[0]["seconds"]
    print(f"model {model.source.spec} ({model.describe()['unet_parameters']:,} UNet parameters), image "
          f"{Path(args.image).name} → latent {tuple(z0.shape)}, {args.steps} steps, guidance 1, device {model.device}, "
          f"dtype {args.dtype}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print(f"one UNet call alone: {per_call * 1e3:.2f} ms")
    print(f"{'':44s} {'seconds':>8s} {'× ref':>6s} {'UNet calls':>10s} {'latent err':>10s} {'PSNR vs VAE':>11s} "
          f"{'overhead':>8s}")
    for r in rows:
        psnr = "inf" if math.isinf(r["psnr_vs_vae"]) else f"{r['psnr_vs_vae']:.2f}"
        print(f"{r['name']:44s} {r['seconds']:8.3f} {r['seconds'] / ref:6.2f} {r['unet_calls']:10d} "
              f"{r['latent_error']:10.2e} {psnr:>11s} {r['overhead_ratio']:8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "per_call": per_call, "rows": rows}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
