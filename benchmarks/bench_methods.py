"""Benchmark: every inversion method × guidance × steps, on generated images and photos (issue 4).

Per row (mean over the images of a source kind): PSNR/SSIM of the reconstruction against the input and
against the VAE round trip (the inversion's own error), PSNR of the VAE round trip itself, latent error
‖ẑ0 − z0‖/‖z0‖, network calls (inversion + regeneration) and wall time. The reference row is diffusers'
own DDIMInverseScheduler + DDIMScheduler loop under the same classifier-free guidance.

    OMP_NUM_THREADS=1 python benchmarks/bench_methods.py --json docs/methods-benchmark.json \
        --markdown docs/methods-benchmark.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from invedit import api, shapes
from invedit.io import load_image
from invedit.methods import METHODS, Conditioning, MethodOptions, invert_with, regenerate
from invedit.nulltext import NullTextOptions
from invedit.report import image_metrics, to_unit
from invedit.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {"astronaut.png": "a photo of an astronaut", "coffee.jpg": "a cup of coffee"}
VARIANTS = {m: (m, MethodOptions()) for m in METHODS}
VARIANTS["null-text lr 0.1"] = ("null-text", MethodOptions(null_text=NullTextOptions(lr=0.1, tol=1e-6, tol_growth=0)))


def reference_loop(model, z0, cond, uncond, w, steps):
    """diffusers' inverse + forward DDIM scheduler loop with classifier-free guidance, calling the UNet."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    inverse = DDIMInverseScheduler.from_config(model.scheduler_config)
    forward = DDIMScheduler.from_config(model.scheduler_config)
    inverse.set_timesteps(steps)
    forward.set_timesteps(steps)
    both = torch.cat([uncond, cond])

    def eps(x, t):
        if w == 1:
            return model.unet(x, t, encoder_hidden_states=cond).sample
        e_u, e_c = model.unet(torch.cat([x, x]), t, encoder_hidden_states=both).sample.chunk(2)
        return e_u + w * (e_c - e_u)

    x = z0
    for t in inverse.timesteps:
        x = inverse.step(eps(x, t), t, x).prev_sample
    for t in forward.timesteps:
        x = forward.step(eps(x, t), t, x).prev_sample
    return x, 2 * steps


def run_one(model, name, z0, cond, uncond, w, steps):
    start = time.perf_counter()
    with torch.no_grad():
        if name == "diffusers loop (reference)":
            z_hat, calls = reference_loop(model, z0, cond, uncond, w, steps)
        else:
            method, options = VARIANTS[name]
            c = Conditioning(model.eps, cond, uncond, w)
            schedule = Schedule.create(model.noise, steps)
            result = invert_with(method, c, z0, schedule, options)
            z_hat = regenerate(method, c, result.x_T, result.extras, schedule, options)
            calls = result.network_calls + steps * (2 if method == "edict" else 1)
    return z_hat, calls, time.perf_counter() - start


def sources(model, n_generated):
    images, scenes = shapes.make_dataset(n_generated, seed=20_000)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    yield "generated", x, [s.caption for s in scenes], lambda t: t
    for name, prompt in PHOTOS.items():
        p = load_image(ROOT / "assets" / "photos" / name, model.multiple, model.native_size)
        yield "photo", p.pixels, [prompt], p.content


def measure(model, kind, x, prompts, box, w, steps, rows):
    with torch.no_grad():
        z0 = model.encode_image(x)
        vae = model.decode(z0)
        cond = model.encode_text(prompts)
        uncond = model.encode_text([""]).expand_as(cond)
    for name in ["diffusers loop (reference)", *VARIANTS]:
        z_hat, calls, seconds = run_one(model, name, z0, cond, uncond, w, steps)
        recon = model.decode(z_hat)
        for i in range(x.shape[0]):
            o, v, r = (to_unit(box(t[i:i + 1])[0]) for t in (x, vae, recon))
            rows.append({"source": kind, "method": name, "guidance": w, "steps": steps,
                         "vs_input": image_metrics(r, o), "vs_vae": image_metrics(r, v), "vae": image_metrics(v, o),
                         "latent_error": float((z_hat[i] - z0[i]).norm() / z0[i].norm()),
                         "network_calls": calls, "seconds": seconds / x.shape[0]})


def summarise(rows):
    keys = sorted({(r["source"], r["guidance"], r["steps"], r["method"]) for r in rows},
                  key=lambda k: (k[0], k[1], k[2], (["diffusers loop (reference)"] + list(VARIANTS)).index(k[3])))
    table = []
    for src, w, steps, method in keys:
        sel = [r for r in rows if (r["source"], r["guidance"], r["steps"], r["method"]) == (src, w, steps, method)]
        mean = lambda f: float(np.mean([f(r) for r in sel]))  # noqa: E731
        table.append({"source": src, "guidance": w, "steps": steps, "method": method,
                      "psnr_vs_input": mean(lambda r: r["vs_input"]["psnr"]),
                      "ssim_vs_input": mean(lambda r: r["vs_input"]["ssim"]),
                      "psnr_vs_vae": mean(lambda r: min(r["vs_vae"]["psnr"], 200.0)),
                      "ssim_vs_vae": mean(lambda r: r["vs_vae"]["ssim"]), "psnr_vae": mean(lambda r: r["vae"]["psnr"]),
                      "latent_error": mean(lambda r: r["latent_error"]), "network_calls": sel[0]["network_calls"],
                      "seconds": mean(lambda r: r["seconds"])})
    return table


HEADER = ("| source | w | steps | method | PSNR vs input | SSIM vs input | PSNR vs VAE | SSIM vs VAE | VAE PSNR "
          "| latent error | calls | s/image |")


def markdown_row(r):
    return (f"| {r['source']} | {r['guidance']:g} | {r['steps']} | {r['method']} | {r['psnr_vs_input']:.2f} | "
            f"{r['ssim_vs_input']:.4f} | {r['psnr_vs_vae']:.1f} | {r['ssim_vs_vae']:.4f} | {r['psnr_vae']:.2f} | "
            f"{r['latent_error']:.2e} | {r['network_calls']} | {r['seconds']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.5, 15.0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--generated", type=int, default=2, help="held-out shapes images (one batch)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args()
    model = api.load(device="cpu")
    rows, start = [], time.perf_counter()
    for kind, x, prompts, box in sources(model, args.generated):
        for w in args.guidance:
            for steps in args.steps:
                measure(model, kind, x, prompts, box, w, steps, rows)
                print(f"[{time.perf_counter() - start:6.0f}s] {kind} w={w} steps={steps}", file=sys.stderr, flush=True)
    table = summarise(rows)
    head = (f"`{' '.join(sys.argv)}` — {datetime.date.today()}, shapes-64 (fingerprint {model.fingerprint}), CPU "
            f"{platform.machine()}, torch threads {torch.get_num_threads()}, {time.perf_counter() - start:.0f} s in all. "
            f"Means over {args.generated} generated images and {len(PHOTOS)} photos; PSNR vs VAE capped at 200 dB.")
    lines = [head, "", HEADER, "|" + "---|" * 12] + [markdown_row(r) for r in table]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "table": table, "rows": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text("# Reconstruction benchmark: inversion methods × guidance × steps\n\n" +
                                       "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
