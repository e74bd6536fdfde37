"""A 12 MP photo at its own size (`--max-side 0`): peak memory and time, and one batched decode against two.

Issue 11 asks that a 12 MP photo at `--max-side 0` stay within 8 GB on a GPU and 16 GB on the CPU. The photo is
assets/photos/astronaut.png upscaled to 4032×3024 (a phone camera's 12.2 MP), written once as a PNG; the model
is any diffusers folder (bench_realscale's random SD 1.5-shaped one by default). Three measurements:

  roundtrip  `api.roundtrip(model, photo, max_side=0)` with --steps DDIM steps (ddim: 2 × steps UNet calls on the
             504×378 latent), decodes included; the VAE runs in tiles above 4.2 MP (Model.vae_tiled).
  vae        the VAE alone: encode, then decode the reconstruction and the VAE round trip (two latents) as
             `api.reconstruct` does; what the CPU can afford (the UNet's self-attention over 190 k latent
             positions takes hours there).
  decode     at the model's native size, the two decodes of a reconstruction as one batch against one by one
             (median of --repeats): why `api.reconstruct` batches them.

Peak memory: torch.cuda.max_memory_allocated on CUDA, else the process's peak RSS (VmHWM, reset before each
measurement through /proc/self/clear_refs).

    OMP_NUM_THREADS=1 python benchmarks/bench_bigphoto.py --device cpu --only vae decode   # the CPU
    python benchmarks/bench_bigphoto.py --dtype fp16                                       # a GPU: all three
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from invedit import api
from invedit.io import load_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_realscale import DEFAULT_FOLDER, GiB, build_random, log, peak_bytes, reset_peak  # noqa: E402
from bench_methods import sync  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = (4032, 3024)


def photo(folder: Path) -> Path:
    path = folder / "astronaut-12mp.png"
    Image.open(ROOT / "assets" / "photos" / "astronaut.png").convert("RGB").resize(SIZE, Image.Resampling.LANCZOS) \
        .save(path, compress_level=1)
    return path


def measured(device: torch.device, fn) -> tuple[float, int]:
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start, peak_bytes(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=DEFAULT_FOLDER, help="a diffusers folder (built if missing)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=2, help="DDIM steps of the round trip")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the decode comparison")
    p.add_argument("--only", nargs="+", default=["roundtrip", "vae", "decode"], choices=["roundtrip", "vae", "decode"])
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.model_dir == DEFAULT_FOLDER:
        build_random("sd15", DEFAULT_FOLDER)
    model = api.load(str(args.model_dir), device=args.device, dtype=args.dtype)
    device = model.device
    results = {"model": str(args.model_dir), "device": str(device), "dtype": args.dtype, "photo": list(SIZE),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = photo(Path(tmp))
        prepared = load_image(path, model.multiple, max_side=0)
        H, W = prepared.pixels.shape[-2:]
        results["working_size"], results["vae_tiled"] = [W, H], model.vae_tiled(H, W)
        log(f"{SIZE[0]}×{SIZE[1]} photo, working size {W}×{H}, VAE tiled: {results['vae_tiled']}")
        if "vae" in args.only:
            def vae():
                z0 = model.encode_image(prepared.pixels)
                model.decode(torch.cat([z0, z0]))
            seconds, peak = measured(device, vae)
            results["vae"] = {"seconds": seconds, "peak_gib": peak / GiB}
            log(f"vae: encode + 2 decodes {seconds:.1f} s, peak {peak / GiB:.2f} GiB")
        if "roundtrip" in args.only:
            settings = api.InversionSettings(steps=args.steps, method="ddim")
            out = {}
            seconds, peak = measured(device, lambda: out.update(
                report=api.roundtrip(model, path, "a photo of an astronaut", settings, max_side=0).report))
            report = out["report"]
            results["roundtrip"] = {"seconds": seconds, "peak_gib": peak / GiB, "steps": args.steps,
                                    "psnr_vs_vae": report["metrics"]["reconstruction_vs_vae"]["psnr"],
                                    "vae_tiled": report["image"]["vae_tiled"], "stages": report["seconds"]}
            log(f"roundtrip ({args.steps} steps): {seconds:.1f} s, peak {peak / GiB:.2f} GiB, "
                f"stages {json.dumps({k: round(v, 2) for k, v in report['seconds'].items()})}")
        if "decode" in args.only:
            f, n = model.vae_scale_factor, model.native_size
            z = torch.randn(2, 4, n // f, n // f, generator=torch.Generator().manual_seed(0)).to(device)
            model.decode(z)  # warm-up
            one, two = [], []
            for _ in range(args.repeats):
                one.append(measured(device, lambda: model.decode(z))[0])
                two.append(measured(device, lambda: [model.decode(z[:1]), model.decode(z[1:])])[0])
            results["decode"] = {"size": n, "batched_s": statistics.median(one), "one_by_one_s": statistics.median(two),
                                 "ratio": statistics.median(one) / statistics.median(two), "repeats": args.repeats}
            log(f"decode 2 × {n}²: batched {results['decode']['batched_s']:.3f} s, one by one "
                f"{results['decode']['one_by_one_s']:.3f} s (ratio {results['decode']['ratio']:.2f})")
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
