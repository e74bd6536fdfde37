"""Speed and memory at Stable Diffusion's real size: invedit against diffusers' own loop and the bare UNet.

The model is SD 1.5-shaped with RANDOM weights, built from the configs below (UNet 860 M, VAE 84 M and CLIP
text encoder 123 M parameters; no network, nothing downloaded) and saved once as a diffusers folder in
safetensors (default /tmp/invedit-sd15-random, reused when present), so that `invedit.model.load_model`
loads it exactly as it loads a user's model. Speed does not depend on the weights' values; reconstruction
errors do (random latents have std ~0.05), so the error columns only compare the two loops with each other.

For every configuration (dtype × image size × batch × guidance w) a fresh process (this script, spawned with
a hidden --child) loads the model in that dtype, encodes a batch of random images with the VAE (one image at
a time, outside the timing) and, for each method, runs side by side:
  (a) invedit: `invert_with(method, c, z0, schedule)` + `replay(method, c, x_T, extras, schedule)`,
      c = Conditioning(model.eps, cond, uncond, w);
  (b) diffusers: DDIMInverseScheduler then DDIMScheduler (from the model's scheduler config) calling
      `model.unet` directly, classifier-free guidance as one batch [uncond, cond] when w != 1 (w = 1 calls
      the conditional branch alone, as diffusers' pipelines do) — `bench_methods.reference_loop`;
  (c) the bare UNet: as many `model.unet` calls as (a) made, on inputs of the same shapes built beforehand.
Timings are medians over --repeats, the order of (a), (b), (c) rotating from one repeat to the next;
(a)/(b) compares invedit with diffusers' loop, (a)/(c) is invedit's overhead over the network itself.
Peak memory: on CUDA torch.cuda.max_memory_allocated, on the CPU the process's peak RSS (VmHWM, reset
before each run through /proc/self/clear_refs); "load peak" is the child's peak before any run (loading
the weights and the VAE encode included), which is why every configuration gets its own process.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_realscale.py --sizes 256 --batches 1 4 \\
        --dtypes fp32 bf16 --steps 10 --json docs/realscale-256.json --markdown docs/realscale-256.md
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_realscale.py --sizes 512 --batches 1 \\
        --dtypes fp32 bf16 --steps 10 --json docs/realscale-512.json --markdown docs/realscale-512.md
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_realscale.py --quick  # 128², batch 1, fp32, 2 steps
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from invedit.methods import Conditioning, counted, invert_with, replay
from invedit.model import load_model
from invedit.model.build import SD_SCHEDULER, save_pipeline, write_tokenizer
from invedit.report import jsonable
from invedit.schedule import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import _rounded, cpu_name, reference_loop, sync  # noqa: E402

DEFAULT_FOLDER = Path("/tmp/invedit-sd15-random")
PROMPT = "a photo of a cat on a sofa"
WORDS = PROMPT.split() + "dog red blue background".split()  # the small tokenizer's whole words
RESULT = "@@bench_realscale "  # the child's last stdout line: this marker, then its JSON

# Stable Diffusion 1.5's configs (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json);
# the scheduler is build.SD_SCHEDULER (DDIM, scaled_linear 0.00085…0.012, steps_offset 1, no clipping,
# set_alpha_to_one False)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, center_input_sample=False)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
    norm_num_groups=32, act_fn="silu", sample_size=512, scaling_factor=0.18215)
# SD's vocabulary size keeps the parameter count (and memory) of the real encoder; the small tokenizer's ids
# all lie below it, and the special ids are the tokenizer's own (PITFALLS)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5)
GiB = 2**30


# --- the model ------------------------------------------------------------------------------------
def build_random_sd15(folder: Path, seed: int = 0) -> Path:
    """Write an SD 1.5-shaped pipeline with random weights (fp32, safetensors) to `folder`, unless it is there.

    Written to a sibling folder first and renamed at the end, so that an interrupted build is never reused."""
    if (folder / "model_index.json").is_file():
        return folder
    if folder.exists():
        raise SystemExit(f"{folder} exists but holds no model_index.json: remove it or pass another --model-dir")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    start = time.perf_counter()
    try:
        tokenizer = write_tokenizer(partial / "tokenizer", WORDS)
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        text_config = CLIPTextConfig(**{**SD15_TEXT, "vocab_size": max(SD15_TEXT["vocab_size"], len(tokenizer))},
                                     **ids)
        parts = dict(unet=UNet2DConditionModel(**SD15_UNET).eval(), vae=AutoencoderKL(**SD15_VAE).eval(),
                     text_encoder=CLIPTextModel(text_config).eval())
        save_pipeline(partial, **parts, tokenizer=tokenizer, scheduler_config=dict(SD_SCHEDULER))
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    counts = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M" for k, m in parts.items())
    log(f"built the random SD 1.5-shaped model in {folder} ({counts}) in {time.perf_counter() - start:.0f} s")
    return folder


# --- memory ---------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc/self/status (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def reset_peak(device: torch.device) -> bool:
    """Start a new peak (CPU: the kernel's high-water mark set back to the current RSS); False if impossible."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back first, so the baseline is what is held
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- the three loops ------------------------------------------------------------------------------
def run_invedit(model, method: str, z0, cond, uncond, w: float, schedule: Schedule):
    """(a): invert + replay through invedit's registry; returns (ẑ_0, UNet calls)."""
    calls = [0]
    c = Conditioning(counted(model.eps, calls), cond, uncond, w)
    result = invert_with(method, c, z0, schedule)
    return replay(method, c, result.x_T, result.extras, schedule), calls[0]


def unet_inputs(model, z0, cond, uncond, w: float, schedule: Schedule):
    """(c)'s inputs, built once: latents, one timestep tensor per step and the embeddings, at (a)'s batch."""
    B = z0.shape[0]
    rows = B if w == 1 else 2 * B  # guidance batches [uncond, cond]
    x = torch.randn(rows, *z0.shape[1:], generator=torch.Generator().manual_seed(1)).to(model.device, model.dtype)
    e = cond.expand(B, -1, -1) if w == 1 else torch.cat([uncond.expand(B, -1, -1), cond.expand(B, -1, -1)])
    e = e.to(model.device, model.dtype).contiguous()
    ts = [torch.full((rows,), t, device=model.device, dtype=torch.long) for t in schedule.timesteps]
    return x, ts, e


def run_unet(model, inputs, calls: int) -> None:
    """(c): `calls` bare UNet calls, nothing else."""
    x, ts, e = inputs
    for i in range(calls):
        model.unet(x, ts[i % len(ts)], encoder_hidden_states=e, return_dict=False)


def timed(device: torch.device, fn):
    """(seconds, peak bytes, fn's value) of one run."""
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, peak_bytes(device), value


def relative_error(z_hat: torch.Tensor, z0: torch.Tensor) -> float:
    return float((z_hat.float().cpu() - z0.float().cpu()).norm() / z0.float().cpu().norm())


def measure_method(model, method: str, z0, cond, uncond, w: float, schedule: Schedule, repeats: int,
                   inputs) -> dict:
    """One row: (a), (b), (c) `repeats` times each, the order rotating (repeat 0 runs (a) first, so (c) knows
    how many calls to make); medians, peaks, calls, errors."""
    B, seen = z0.shape[0], {}
    runs = {
        "invedit": lambda: run_invedit(model, method, z0, cond, uncond, w, schedule),
        "diffusers": lambda: reference_loop(model, z0, cond.expand(B, -1, -1), uncond, w, schedule.steps)[1:],
        "unet": lambda: (run_unet(model, inputs, seen["invedit"][1]), seen["invedit"][1]),
    }
    names = list(runs)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    peaks = dict.fromkeys(names, 0)
    for r in range(repeats):
        for name in names[r % 3:] + names[:r % 3]:
            s, peak, seen[name] = timed(model.device, runs[name])  # (ẑ_0 or None, UNet calls)
            seconds[name].append(s)
            peaks[name] = max(peaks[name], peak)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    calls = seen["invedit"][1]
    return {
        "method": method, "calls": calls, "reference_calls": seen["diffusers"][1],
        "seconds_invedit": med["invedit"], "seconds_diffusers": med["diffusers"], "seconds_unet": med["unet"],
        "ratio_diffusers": med["invedit"] / med["diffusers"], "overhead": med["invedit"] / med["unet"],
        "seconds_per_call": med["unet"] / calls,
        "peak_invedit": peaks["invedit"], "peak_diffusers": peaks["diffusers"], "peak_unet": peaks["unet"],
        "error_invedit": relative_error(seen["invedit"][0], z0),
        "error_diffusers": relative_error(seen["diffusers"][0], z0),
        "runs": seconds,
    }
