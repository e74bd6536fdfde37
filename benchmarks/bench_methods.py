"""Benchmark: every inversion method × guidance × steps, on generated images and photos, in one process.

Each row inverts a batch of images with one method at one guidance scale w and number of DDIM steps,
regenerates them the way the method replays (same w), decodes, and measures, per image:
- PSNR / SSIM of the reconstruction against the input (what a user sees),
- PSNR / SSIM of the reconstruction against the VAE round trip of the input (the inversion's own
  error: the number that tells methods apart),
- PSNR / SSIM of the VAE round trip itself against the input (the ceiling no inversion can beat),
- the latent error ‖ẑ0 − z0‖/‖z0‖,
- network calls: the method's own (MethodResult.network_calls) + the regeneration's (steps, 2×steps
  for edict); null-text's optimisation also runs a backward pass per forward call it counts,
- wall time of inversion + regeneration (not the VAE), per image of the batch.
Rows are means over the images of a source kind. The reference row is diffusers' own
DDIMInverseScheduler + DDIMScheduler loop calling the UNet directly, under the same guidance (the
usual batch [uncond, cond], ε = ε_u + w(ε_c − ε_u); w = 1 calls the conditional branch alone, as the
diffusers pipelines do).

Sources: held-out images of the shapes world (`shapes.make_dataset(n, seed=20_000)`, captions as
prompts), inverted as one batch, and the photos in assets/photos at the model's native size, batched
by tensor shape (all methods run batched; fixed-point iterates until every image of a batch has
converged, null-text stops a step on the batch's mean loss).

    OMP_NUM_THREADS=1 python benchmarks/bench_methods.py --json docs/reconstruction-benchmark.json \\
        --markdown docs/reconstruction-benchmark.md            # the default grid, ~20 min on one core
    OMP_NUM_THREADS=1 python benchmarks/bench_methods.py --quick  # steps 10 and 25, 1 image, 2 photos
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from invedit import api, shapes
from invedit.io import load_image
from invedit.methods import METHODS, Conditioning, MethodOptions, counted, invert_with, replay
from invedit.nulltext import NullTextOptions
from invedit.report import image_metrics, jsonable, latent_error, to_unit
from invedit.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {  # file in assets/photos → prompt
    "astronaut.png": "a photo of an astronaut",
    "coffee.jpg": "a cup of coffee",
    "chelsea.jpg": "a photo of a cat",
    "rocket.jpg": "a photo of a rocket launch",
    "camera.png": "a black and white photo of a photographer with a camera",
}
QUICK_PHOTOS = ("astronaut.png", "coffee.jpg")
REFERENCE = "diffusers loop (reference)"
# row name → (method, options); the methods with their defaults, then a few named variants
ROWS: dict[str, tuple[str, MethodOptions]] = {m: (m, MethodOptions()) for m in METHODS}
ROWS["null-text (lr 0.1)"] = ("null-text", MethodOptions(null_text=NullTextOptions(lr=0.1, tol=1e-6, tol_growth=0)))
ROWS["negative-prompt (fixed-point pivot)"] = ("negative-prompt", MethodOptions(pivot="fixed-point"))
ROWS["direct (fixed-point pivot)"] = ("direct", MethodOptions(pivot="fixed-point"))
ORDER = [REFERENCE, *ROWS]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unet_kwargs(model, cond: torch.Tensor, x: torch.Tensor) -> dict:
    """The UNet's conditioning arguments for text embeddings `cond` (rows of x), as diffusers' pipelines pass
    them. SD 1.x/2.x: the hidden states. SDXL (invedit packs the pooled embedding as the last row, see
    invedit.model.adapter): the hidden states, and `added_cond_kwargs` as StableDiffusionXLPipeline builds them,
    text_embeds = the pooled embedding and time_ids = original size + crop (0, 0) + target size, both the image
    size (`_get_add_time_ids`)."""
    if not getattr(model, "xl", False):
        return {"encoder_hidden_states": cond}
    pooled = cond[:, -1, :model.text_encoder_2.config.projection_dim]
    size = (x.shape[-2] * model.vae_scale_factor, x.shape[-1] * model.vae_scale_factor)
    time_ids = torch.tensor([list(size + (0, 0) + size)], dtype=cond.dtype).to(x.device).repeat(cond.shape[0], 1)
    return {"encoder_hidden_states": cond[:, :-1],
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def reference_loop(model, z0, cond, uncond, w, steps):
    """diffusers' DDIMInverseScheduler + DDIMScheduler loop with classifier-free guidance, calling the UNet.

    Returns (x_T, ẑ0, UNet calls). cond (B, L, D), uncond (1 or B, L, D) (SDXL: packed, (B, L + 1, D))."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    config = model.scheduler_config
    inverse, forward = DDIMInverseScheduler.from_config(config), DDIMScheduler.from_config(config)
    inverse.set_timesteps(steps, device=model.device)
    forward.set_timesteps(steps, device=model.device)
    unet, calls = model.unet, 0
    x = z0.to(model.device, model.dtype)
    c = cond.to(model.device, model.dtype)
    both = torch.cat([uncond.to(model.device, model.dtype).expand_as(c), c])  # (2B, L, D): [uncond, cond]
    single, double = unet_kwargs(model, c, x), unet_kwargs(model, both, x)

    def eps(x, t):
        if w == 1:
            return unet(x, t, **single).sample
        eps_u, eps_c = unet(torch.cat([x, x]), t, **double).sample.chunk(2)
        return eps_u + w * (eps_c - eps_u)

    for t in inverse.timesteps:
        x = inverse.step(eps(x, t), t, x).prev_sample
        calls += 1
    x_T = x
    for t in forward.timesteps:
        x = forward.step(eps(x, t), t, x).prev_sample
        calls += 1
    return x_T.float(), x.float(), calls


def run_row(model, name, z0, cond, uncond, w, steps):
    """Invert + regenerate a batch; returns (ẑ0, network calls, seconds, largest residual)."""
    sync(model.device)
    start = time.perf_counter()
    with torch.no_grad():
        if name == REFERENCE:
            _, z_hat, calls = reference_loop(model, z0, cond, uncond, w, steps)
            residual = float("nan")
        else:
            method, options = ROWS[name]
            counter = [0]
            c = Conditioning(counted(model.eps, counter), cond, uncond, w)
            schedule = Schedule.create(model.noise, steps)
            result = invert_with(method, c, z0, schedule, options)
            counter[0] = 0
            z_hat = replay(method, c, result.x_T, result.extras, schedule, options)
            calls = result.network_calls + counter[0]
            finite = [r for r in result.residuals if r == r]
            residual = max(finite) if finite else float("nan")
    sync(model.device)
    return z_hat, calls, time.perf_counter() - start, residual


class Batch:
    """Images of one source kind and one tensor shape, with their prompts and content crops."""

    def __init__(self, kind, names, pixels, prompts, boxes):
        self.kind, self.names, self.pixels, self.prompts, self.boxes = kind, names, pixels, prompts, boxes

    def content(self, pixels, i):
        left, top, right, bottom = self.boxes[i]
        return pixels[i, :, top:bottom, left:right]


def batches(model, n_generated, photos):
    if n_generated:
        images, scenes = shapes.make_dataset(n_generated, seed=20_000)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        full = (0, 0, x.shape[-1], x.shape[-2])
        yield Batch("generated", [f"shapes#{i}" for i in range(n_generated)], x, [s.caption for s in scenes],
                    [full] * n_generated)
    by_shape: dict[tuple, list] = {}
    for name in photos:
        p = load_image(ROOT / "assets" / "photos" / name, model.multiple, model.native_size)
        by_shape.setdefault(tuple(p.pixels.shape), []).append((name, p))
    for group in by_shape.values():
        yield Batch("photo", [n for n, _ in group], torch.cat([p.pixels for _, p in group]),
                    [PHOTOS[n] for n, _ in group], [p.box for _, p in group])


def measure(model, batch, names, guidance, steps, records, log):
    with torch.no_grad():
        z0 = model.encode_image(batch.pixels)
        vae = model.decode(z0)
        cond = model.encode_text(batch.prompts)
        uncond = model.encode_text([""])
    B = z0.shape[0]
    for w in guidance:
        for n in steps:
            for name in names:
                z_hat, calls, seconds, residual = run_row(model, name, z0, cond, uncond, w, n)
                recon = model.decode(z_hat)
                for i in range(B):
                    o, v, r = (to_unit(batch.content(t, i)) for t in (batch.pixels, vae, recon))
                    records.append({"source": batch.kind, "image": batch.names[i], "prompt": batch.prompts[i],
                                    "method": name, "guidance": w, "steps": n, "batch": B,
                                    "vs_input": image_metrics(r, o), "vs_vae": image_metrics(r, v),
                                    "vae_vs_input": image_metrics(v, o),
                                    "latent_error": latent_error(z_hat[i:i + 1].cpu(), z0[i:i + 1].cpu()),
                                    "network_calls": calls, "max_residual": residual,
                                    "batch_seconds": seconds, "seconds": seconds / B})
            log(f"{batch.kind} {'+'.join(batch.names)} w={w:g} steps={n}")


PSNR_CAP = 200.0  # dB: a bit-exact reconstruction (PSNR inf) counts as this much in a mean


def _mean(values):
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _mean_psnr(values):
    return _mean(min(v, PSNR_CAP) for v in values)


def summarise(records):
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["source"], r["guidance"], r["steps"], r["method"]), []).append(r)
    kinds = ["generated", "photo"]
    keys = sorted(groups, key=lambda k: (kinds.index(k[0]), k[1], k[2], ORDER.index(k[3])))
    table = []
    for source, w, steps, method in keys:
        sel = groups[(source, w, steps, method)]
        table.append({
            "source": source, "guidance": w, "steps": steps, "method": method, "images": len(sel),
            "psnr_vs_input": _mean_psnr(r["vs_input"]["psnr"] for r in sel),
            "ssim_vs_input": _mean(r["vs_input"]["ssim"] for r in sel),
            "psnr_vs_vae": _mean_psnr(r["vs_vae"]["psnr"] for r in sel),
            "bit_exact": sum(r["vs_vae"]["psnr"] == math.inf for r in sel),  # images whose PSNR vs VAE is inf
            "ssim_vs_vae": _mean(r["vs_vae"]["ssim"] for r in sel),
            "psnr_vae_vs_input": _mean_psnr(r["vae_vs_input"]["psnr"] for r in sel),
            "ssim_vae_vs_input": _mean(r["vae_vs_input"]["ssim"] for r in sel),
            "latent_error": _mean(r["latent_error"] for r in sel),
            "network_calls": _mean(r["network_calls"] for r in sel),
            "seconds_per_image": _mean(r["seconds"] for r in sel),
            # the method's own measure of exactness (fixed-point: relative residual, > tol = not converged;
            # null-text: MSE to the pivot), largest over the source's batches; nan where none is reported
            "max_residual": max((r["max_residual"] for r in sel if r["max_residual"] == r["max_residual"]),
                                default=float("nan")),
        })
    return table


COLUMNS = [  # (header, key, format)
    ("steps", "steps", "{:d}"), ("method", "method", "{}"),
    ("PSNR in", "psnr_vs_input", "{:.2f}"), ("SSIM in", "ssim_vs_input", "{:.4f}"),
    ("PSNR VAE", "psnr_vs_vae", "{:.2f}"), ("SSIM VAE", "ssim_vs_vae", "{:.6f}"),
    ("VAE PSNR", "psnr_vae_vs_input", "{:.2f}"), ("VAE SSIM", "ssim_vae_vs_input", "{:.4f}"),
    ("latent err", "latent_error", "{:.2e}"), ("calls", "network_calls", "{:.0f}"),
    ("s/image", "seconds_per_image", "{:.3f}"),
]


def _cell(fmt, value):
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "nan"
    return fmt.format(value)


def _cells(r):
    """The row's cells; a PSNR vs VAE that counts bit-exact images (capped) is marked with a '*'."""
    return [_cell(f, r[k]) + ("*" if k == "psnr_vs_vae" and r["bit_exact"] else "") for _, k, f in COLUMNS]


def text_table(table):
    widths = [5, 36, 8, 7, 8, 8, 8, 8, 10, 6, 8]
    lines = []
    for key in dict.fromkeys((r["source"], r["guidance"]) for r in table):
        sel = [r for r in table if (r["source"], r["guidance"]) == key]
        lines += ["", f"== {key[0]} images ({sel[0]['images']}), guidance w = {key[1]:g}",
                  " ".join(f"{h:>{wd}s}" if i != 1 else f"{h:<{wd}s}" for i, ((h, _, _), wd) in
                           enumerate(zip(COLUMNS, widths)))]
        for r in sel:
            cells = _cells(r)
            lines.append(" ".join(c.rjust(wd) if i != 1 else c.ljust(wd)
                                  for i, (c, wd) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def markdown_tables(table):
    lines = []
    for key in dict.fromkeys((r["source"], r["guidance"]) for r in table):
        sel = [r for r in table if (r["source"], r["guidance"]) == key]
        lines += ["", f"### {key[0]} images ({sel[0]['images']}), w = {key[1]:g}", "",
                  "| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in sel:
            lines.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(lines)


def _rounded(value, digits=6):
    """Floats to `digits` significant digits (keeps the JSON small; timings and metrics need no more)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def to_json(header, table, records) -> str:
    """{header, rows, table, records}, one table row or record per line."""
    dump = lambda v: json.dumps(jsonable(_rounded(v)), ensure_ascii=False)  # noqa: E731
    return "\n".join([
        "{", f' "header": {json.dumps(jsonable(header), ensure_ascii=False)},', f' "rows": {dump(ORDER)},',
        ' "table": [', ",\n".join("  " + dump(r) for r in table), " ],",
        ' "records": [', ",\n".join("  " + dump(r) for r in records), " ]", "}", ""])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model (default: the shipped shapes-64)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.5, 15.0])
    p.add_argument("--steps", type=int, nargs="+", default=None, help="default 10 25 50 (--quick: 10 25)")
    p.add_argument("--generated", type=int, default=None, help="held-out shapes images, one batch (default 3; "
                   "--quick: 1)")
    p.add_argument("--photos", nargs="*", default=None, choices=sorted(PHOTOS),
                   help=f"photos in assets/photos (default all; --quick: {' '.join(QUICK_PHOTOS)})")
    p.add_argument("--rows", nargs="+", default=None, choices=ORDER, metavar="ROW",
                   help=f"rows to run (default all: {', '.join(ORDER)})")
    p.add_argument("--quick", action="store_true", help="steps 10 and 25, 1 generated image, 2 photos")
    p.add_argument("--json", default=None, help="write the per-image records and the table here")
    p.add_argument("--markdown", default=None, help="write the table as Markdown here")
    args = p.parse_args()
    steps = args.steps or ([10, 25] if args.quick else [10, 25, 50])
    n_generated = args.generated if args.generated is not None else (1 if args.quick else 3)
    photos = list(args.photos if args.photos is not None else (QUICK_PHOTOS if args.quick else PHOTOS))
    names = [n for n in ORDER if args.rows is None or n in args.rows]

    model = api.load(args.model, device=args.device, dtype=args.dtype)
    with torch.no_grad():  # warm-up (imports, allocator), so that the first rows' times are not theirs
        z, e = torch.zeros(1, 4, 16, 16, device=model.device), model.encode_text([""])
        for name in (REFERENCE, "ddim"):
            run_row(model, name, z, e, e, 3.0, 2)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    records: list[dict] = []
    for batch in batches(model, n_generated, photos):
        measure(model, batch, names, args.guidance, steps, records, log)
    total = time.perf_counter() - start
    table = summarise(records)

    info = model.describe()
    command = "OMP_NUM_THREADS={} python {}".format(os.environ.get("OMP_NUM_THREADS", "unset"),
                                                   shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    header = {
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(), "cpu": cpu_name(), "device": str(model.device),
        "dtype": args.dtype, "model": info["model"], "fingerprint": model.fingerprint,
        "versions": {**info["versions"], "python": platform.python_version()},
        "generated": n_generated, "photos": photos, "guidance": args.guidance, "steps": steps,
        "seconds_total": total,
    }
    print(f"{command}\nmodel {info['model']} (fingerprint {model.fingerprint}), device {model.device}, "
          f"{args.dtype}, torch threads {torch.get_num_threads()}, CPU {header['cpu']}, {total:.0f} s in all\n"
          f"means over {n_generated} generated images (one batch) and {len(photos)} photos (batched by shape); "
          f"PSNR/SSIM 'in' = reconstruction vs input, 'VAE' = reconstruction vs VAE round trip, "
          f"'VAE PSNR/SSIM' = VAE round trip vs input; calls = network calls, inversion + regeneration; "
          f"* = some image came back bit-exact (PSNR inf, counted as {PSNR_CAP:g} dB in the mean)")
    print(text_table(table))
    if args.json:
        Path(args.json).write_text(to_json(header, table, records))
    if args.markdown:
        md = [
            "# Reconstruction benchmark: inversion methods × guidance × steps",
            "",
            f"Command: `{command}`  ",
            f"Date: {header['date']}; torch threads {header['torch_threads']}; CPU {header['cpu']}; "
            f"device {model.device}, {args.dtype}; {total / 60:.1f} min in all.  ",
            f"Model: `{Path(info['model']).name}`, fingerprint `{model.fingerprint}`; torch "
            f"{info['versions']['torch']}, diffusers {info['versions']['diffusers']}.  ",
            f"Images: {n_generated} held-out generated shapes images (`shapes.make_dataset({n_generated}, "
            f"seed=20_000)`, captions as prompts, one batch); photos {', '.join(photos)} at the model's native "
            "size, batched by tensor shape. Every number is the mean over the images of its source kind.",
            "",
            "Columns: PSNR/SSIM *in* = reconstruction vs input; *VAE* = reconstruction vs the VAE round trip "
            "(the inversion's own error); *VAE PSNR/SSIM* = the VAE round trip vs input (the ceiling); latent "
            f"err = ‖ẑ0 − z0‖/‖z0‖; a `*` after PSNR VAE: some image of the row came back bit-exact (PSNR "
            f"inf), counted as {PSNR_CAP:g} dB in the mean; calls = network calls of inversion + regeneration "
            "(null-text's optimisation also runs one backward pass per counted forward call); s/image = wall "
            "time of inversion + regeneration ÷ batch size. The reference row is diffusers' "
            "DDIMInverseScheduler + DDIMScheduler loop calling the UNet with the usual classifier-free guidance.",
            "",
            "Rows: the methods of `invedit.methods.METHODS` with their defaults (negative-prompt, null-text and "
            "direct invert their w = 1 pivot with plain DDIM, as their papers do; null-text with the paper's "
            "lr 1e-2), plus `null-text (lr 0.1)` = NullTextOptions(lr=0.1, tol=1e-6, tol_growth=0) and the "
            "`(fixed-point pivot)` variants = MethodOptions(pivot=\"fixed-point\").",
            markdown_tables(table),
            "",
        ]
        Path(args.markdown).write_text("\n".join(md))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
