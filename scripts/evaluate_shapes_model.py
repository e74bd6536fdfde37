"""Measure the quality of a shapes-world model: the numbers its model card states.

1. VAE round trip on held-out generated images (PSNR, SSIM) and on the photos in assets/photos.
2. Prompt following: images sampled for captions with DDIM at guidance w, read back by the judge.
3. Inversion: plain DDIM against fixed-point round trips at guidance 1 on generated images —
   PSNR against the input and against the VAE round trip, latent error ‖ẑ0 − z0‖/‖z0‖.

    OMP_NUM_THREADS=2 python scripts/evaluate_shapes_model.py --model assets/models/shapes-64 \
        --json assets/models/shapes-64/evaluation.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from invedit import api, shapes  # noqa: E402
from invedit.ddim import sample  # noqa: E402
from invedit.io import load_image, to_uint8  # noqa: E402
from invedit.judge import judge  # noqa: E402
from invedit.methods import Conditioning, MethodOptions, invert_with  # noqa: E402
from invedit.report import image_metrics, to_unit  # noqa: E402
from invedit.schedule import Schedule  # noqa: E402

HELD_OUT_SEED = 10_000  # the training script draws its images from small seeds; these are never trained on


def pixels_of(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def vae_quality(model, n: int) -> dict:
    images, _ = shapes.make_dataset(n, HELD_OUT_SEED)
    x = pixels_of(images)
    with torch.no_grad():
        rt = torch.cat([model.decode(model.encode_image(x[i:i + 50])) for i in range(0, n, 50)])
    m = [image_metrics(to_unit(rt[i]), to_unit(x[i])) for i in range(n)]
    photos = {}
    for path in sorted((ROOT / "assets" / "photos").glob("*.*")):
        if path.suffix.lower() in (".png", ".jpg"):
            p = load_image(path, model.multiple, model.native_size)
            with torch.no_grad():
                out = model.decode(model.encode_image(p.pixels))
            photos[path.name] = image_metrics(to_unit(p.content(out)[0]), to_unit(p.content(p.pixels)[0]))["psnr"]
    return {"images": n, "psnr_mean": float(np.mean([r["psnr"] for r in m])),
            "psnr_min": float(np.min([r["psnr"] for r in m])), "ssim_mean": float(np.mean([r["ssim"] for r in m])),
            "photos_psnr_at_native_size": photos}


def prompt_following(model, n: int, steps: int, guidance: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    captions = [shapes.sample_scene(rng).caption for _ in range(n)]
    g = torch.Generator().manual_seed(seed)
    side = model.native_size // model.vae_scale_factor
    x_T = torch.randn(n, 4, side, side, generator=g)
    with torch.no_grad():
        c = Conditioning(model.eps, model.encode_text(captions), model.encode_text([""]), guidance)
        z = sample(c.eps_fn(), x_T, Schedule.create(model.noise, steps))
        images = [to_uint8(p) for p in model.decode(z)]
    verdicts = [judge(im) for im in images]
    truth = [shapes.parse_caption(c) for c in captions]
    fields = ("shape", "colour", "background")
    accuracy = {k: float(np.mean([getattr(v, k) == t[j] for v, t in zip(verdicts, truth)])) for j, k in enumerate(fields)}
    all3 = float(np.mean([v.caption == c for v, c in zip(verdicts, captions)]))
    confusion = {s: {} for s in shapes.SHAPES}  # asked shape -> {shape the judge read: count}
    for v, t in zip(verdicts, truth):
        read = v.shape or "nothing"
        confusion[t[0]][read] = confusion[t[0]].get(read, 0) + 1
    return {"captions": n, "steps": steps, "guidance": guidance, "seed": seed, "all_three": all3, **accuracy,
            "shape_confusion": confusion}


def inversion_quality(model, n: int, steps: int) -> dict:
    images, scenes = shapes.make_dataset(n, HELD_OUT_SEED + 1)
    x = pixels_of(images)
    schedule = Schedule.create(model.noise, steps)
    rows = {}
    with torch.no_grad():
        z0 = model.encode_image(x)
        vae = model.decode(z0)
        c = Conditioning(model.eps, model.encode_text([s.caption for s in scenes]), model.encode_text([""]), 1.0)
        for method in ("ddim", "fixed-point"):
            start = time.perf_counter()
            result = invert_with(method, c, z0, schedule, MethodOptions())
            z_hat = sample(c.eps_fn(), result.x_T, schedule)
            seconds = time.perf_counter() - start
            recon = model.decode(z_hat)
            lat = ((z_hat - z0).flatten(1).norm(dim=1) / z0.flatten(1).norm(dim=1)).numpy()
            vs_in = [image_metrics(to_unit(recon[i]), to_unit(x[i]))["psnr"] for i in range(n)]
            vs_vae = [image_metrics(to_unit(recon[i]), to_unit(vae[i]))["psnr"] for i in range(n)]
            rows[method] = {"latent_error_mean": float(lat.mean()), "latent_error_max": float(lat.max()),
                            "psnr_vs_input_mean": float(np.mean(vs_in)), "psnr_vs_vae_mean": float(np.mean(vs_vae)),
                            "psnr_vs_vae_min": float(np.min(vs_vae)), "network_calls": result.network_calls + steps,
                            "seconds": seconds}
    return {"images": n, "steps": steps, "guidance": 1.0, **rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(api.DEFAULT_MODEL))
    p.add_argument("--vae-images", type=int, default=200)
    p.add_argument("--captions", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0, 7.5])
    p.add_argument("--inversion-images", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    model = api.load(args.model, device="cpu")
    start = time.perf_counter()
    report = {"model": args.model, "fingerprint": model.fingerprint, "vae": vae_quality(model, args.vae_images)}
    print("VAE round trip:", json.dumps(report["vae"], indent=1))
    report["prompt_following"] = [prompt_following(model, args.captions, args.steps, w, args.seed)
                                  for w in args.guidance]
    for r in report["prompt_following"]:
        print(f"prompt following at w={r['guidance']}: all three {r['all_three']:.0%} (shape {r['shape']:.0%}, "
              f"colour {r['colour']:.0%}, background {r['background']:.0%}) of {r['captions']}")
        for asked, read in r["shape_confusion"].items():
            print(f"    {asked:>9}: {read.get(asked, 0)}/{sum(read.values())} right; read as {read}")
    report["inversion"] = inversion_quality(model, args.inversion_images, args.steps)
    print("inversion:", json.dumps(report["inversion"], indent=1))
    report["seconds"] = time.perf_counter() - start
    report["threads"] = torch.get_num_threads()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
