"""Speed and memory at Stable Diffusion's real size: invedit against diffusers' own loop and the bare UNet.

The model is SD 1.5-shaped (--family sd15, default) or SDXL-shaped (--family sdxl) with RANDOM weights, built
from the configs below (SD 1.5: UNet 860 M, VAE 84 M and CLIP text encoder 123 M parameters; SDXL: UNet
2.57 G, VAE 84 M, text encoders 123 M + 695 M; no network, nothing downloaded) and saved once as a diffusers
folder in safetensors (default /tmp/invedit-sd15-random or /tmp/invedit-sdxl-random, reused when present), so
that `invedit.model.load_model` loads it exactly as it loads a user's model. Speed does not depend on the
weights' values; reconstruction errors do (random latents have std ~0.05), so the error columns only compare
the two loops with each other.

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

Cost: each configuration makes repeats × (ddim 2N + bdia 2N − 1 + diffusers 2N + bare UNet 2N) UNet calls
(79 per repeat at N = 10). On one CPU thread (AMD EPYC, measured) a call takes ~2.4 s at 256² batch 1 (bf16
~1.4 s), ~7.5 s at 256² batch 4 (bf16 ~4.8 s) and ~8.7 s at 512² batch 1 (bf16 ~6 s), so the CPU runs below
use one repeat (~23 and ~21 min); --repeats 3 triples them, --steps 5 halves them.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_realscale.py --sizes 256 --batches 1 4 \\
        --dtypes fp32 bf16 --steps 10 --repeats 1 --json docs/realscale-256.json --markdown docs/realscale-256.md
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_realscale.py --sizes 512 --batches 1 \\
        --dtypes fp32 bf16 --steps 10 --repeats 1 --json docs/realscale-512.json --markdown docs/realscale-512.md
    python benchmarks/bench_realscale.py --guidance 1 7.5  # on a GPU: 256² and 512², batch 1/4/8, 3 dtypes, 50 steps
    python benchmarks/bench_realscale.py --family sdxl --sizes 1024 --batches 1 --dtypes fp16  # SDXL on a GPU
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
import traceback
from pathlib import Path

import torch

from invedit.methods import METHODS, Conditioning, MethodOptions, counted, invert_with, replay
from invedit.model import load_model
from invedit.model.build import SD_SCHEDULER, save_pipeline, write_tokenizer
from invedit.report import jsonable
from invedit.schedule import Schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import _rounded, cpu_name, reference_loop, sync, unet_kwargs  # noqa: E402

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
# SDXL base 1.0's configs (stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/, text_encoder_2/
# config.json): UNet 2.57 G, VAE 84 M, CLIP ViT-L 123 M + OpenCLIP ViT-bigG 695 M parameters; its scheduler's
# noise config is SD 1.5's (scaled_linear 0.00085…0.012, steps_offset 1, leading), run here as DDIM
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, upcast_attention=False)
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_2 = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, layer_norm_eps=1e-5)
FAMILIES = {"sd15": "SD 1.5", "sdxl": "SDXL"}
DEFAULT_FOLDERS = {"sd15": DEFAULT_FOLDER, "sdxl": Path("/tmp/invedit-sdxl-random")}
GiB = 2**30
# every method but null-text, whose optimisation also runs backward passes that (c) would not count
BENCH_METHODS = [m for m in METHODS if m != "null-text"]


# --- the model ------------------------------------------------------------------------------------
def build_random(family: str, folder: Path, seed: int = 0) -> Path:
    """Write a `family`-shaped pipeline (sd15 | sdxl) with random weights (safetensors) to `folder`, unless it is
    there: SD 1.5 in fp32, SDXL in fp16 (its 3.5 G parameters; built on the GPU when there is one, which takes
    seconds where the CPU takes minutes).

    Written to a sibling folder first and renamed at the end, so that an interrupted build is never reused."""
    if (folder / "model_index.json").is_file():
        return folder
    if folder.exists():
        raise SystemExit(f"{folder} exists but holds no model_index.json: remove it or pass another --model-dir")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    start = time.perf_counter()
    try:
        tokenizer = write_tokenizer(partial / "tokenizer", WORDS)
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        vocab = max(SD15_TEXT["vocab_size"], len(tokenizer))
        torch.manual_seed(seed)
        if family == "sd15":
            parts = dict(unet=UNet2DConditionModel(**SD15_UNET).eval(), vae=AutoencoderKL(**SD15_VAE).eval(),
                         text_encoder=CLIPTextModel(CLIPTextConfig(**{**SD15_TEXT, "vocab_size": vocab}, **ids)).eval())
            save_pipeline(partial, **parts, tokenizer=tokenizer, scheduler_config=dict(SD_SCHEDULER))
        else:
            tokenizer_2 = write_tokenizer(partial / "tokenizer_2", WORDS)
            with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
                parts = dict(
                    unet=UNet2DConditionModel(**SDXL_UNET).half().eval(), vae=AutoencoderKL(**SDXL_VAE).eval(),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**{**SD15_TEXT, "vocab_size": vocab}, **ids)).half(),
                    text_encoder_2=CLIPTextModelWithProjection(
                        CLIPTextConfig(**{**SDXL_TEXT_2, "vocab_size": vocab}, **ids)).half())
            pipe = StableDiffusionXLPipeline(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                                             scheduler=DDIMScheduler(**SD_SCHEDULER), force_zeros_for_empty_prompt=True)
            pipe.save_pretrained(partial, safe_serialization=True)
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    counts = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M" for k, m in parts.items())
    log(f"built the random {FAMILIES[family]}-shaped model in {folder} ({counts}) in "
        f"{time.perf_counter() - start:.0f} s")
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
    """(c)'s inputs, built once: latents, one timestep tensor per step and the UNet's conditioning arguments
    (SDXL's added conditioning included), at (a)'s batch."""
    B = z0.shape[0]
    rows = B if w == 1 else 2 * B  # guidance batches [uncond, cond]
    x = torch.randn(rows, *z0.shape[1:], generator=torch.Generator().manual_seed(1)).to(model.device, model.dtype)
    e = cond.expand(B, -1, -1) if w == 1 else torch.cat([uncond.expand(B, -1, -1), cond.expand(B, -1, -1)])
    e = e.to(model.device, model.dtype).contiguous()
    ts = [torch.full((rows,), t, device=model.device, dtype=torch.long) for t in schedule.timesteps]
    return x, ts, unet_kwargs(model, e, x)


def run_unet(model, inputs, calls: int, device: torch.device) -> list[float]:
    """(c): `calls` bare UNet calls, nothing else; returns the seconds elapsed after each call, so that one run
    times every method's count of calls. On CUDA the calls are queued without waiting, as a loop queues them, and
    an event recorded after each call gives its elapsed time."""
    x, ts, kwargs = inputs
    if device.type == "cuda":
        begin, ends = torch.cuda.Event(enable_timing=True), [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
        begin.record()
        for i in range(calls):
            model.unet(x, ts[i % len(ts)], return_dict=False, **kwargs)
            ends[i].record()
        sync(device)
        return [begin.elapsed_time(end) / 1000 for end in ends]
    start, elapsed = time.perf_counter(), []
    for i in range(calls):
        model.unet(x, ts[i % len(ts)], return_dict=False, **kwargs)
        elapsed.append(time.perf_counter() - start)
    return elapsed


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


def measure(model, methods: list[str], z0, cond, uncond, w: float, schedule: Schedule, repeats: int) -> list[dict]:
    """One row per method: (a) per method, (b) and (c) once each for all methods (the same computation for
    every method: (c) runs the most calls any method made and reads each method's time off the elapsed time
    after its count). `repeats` times, the order of the runs rotating; repeat 0 runs (a) first, so (c) knows
    the counts. Returns medians, peaks, UNet calls and reconstruction errors."""
    cond_B = cond.expand(z0.shape[0], -1, -1)  # (B, 77, 768): the reference loop wants one row per image
    inputs = unet_inputs(model, z0, cond, uncond, w, schedule)
    jobs = [*methods, "diffusers", "unet"]
    seconds: dict[str, list[float]] = {job: [] for job in jobs}
    unet_seconds: dict[str, list[float]] = {m: [] for m in methods}
    peaks, last, calls = dict.fromkeys(jobs, 0), {}, {}
    for r in range(repeats):
        for job in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
            if job == "diffusers":
                fn = lambda: reference_loop(model, z0, cond_B, uncond, w, schedule.steps)[1:]  # noqa: E731
            elif job == "unet":
                fn = lambda: run_unet(model, inputs, max(calls[m] for m in methods), model.device)  # noqa: E731
            else:
                fn = lambda: run_invedit(model, job, z0, cond, uncond, w, schedule)  # noqa: E731
            s, peak, value = timed(model.device, fn)
            log(f"    repeat {r + 1}/{repeats} {job}: {s:.2f} s")
            seconds[job].append(s)
            peaks[job] = max(peaks[job], peak)
            if job == "unet":
                for m in methods:
                    unet_seconds[m].append(value[calls[m] - 1])
            else:
                last[job], calls[job] = value  # (ẑ_0, UNet calls)
    median = {job: statistics.median(v) for job, v in seconds.items()}
    return [_row(m, calls, median, statistics.median(unet_seconds[m]), peaks, last, z0,
                 {"invedit": seconds[m], "diffusers": seconds["diffusers"], "unet": unet_seconds[m]})
            for m in methods]


def _row(method, calls, median, unet_s, peaks, last, z0, runs) -> dict:
    a, b = median[method], median["diffusers"]
    return {
        "method": method, "calls": calls[method], "reference_calls": calls["diffusers"],
        "seconds_invedit": a, "seconds_diffusers": b, "seconds_unet": unet_s,
        "ratio_diffusers": a / b, "overhead": a / unet_s, "seconds_per_call": unet_s / calls[method],
        "peak_invedit": peaks[method], "peak_diffusers": peaks["diffusers"], "peak_unet": peaks["unet"],
        "error_invedit": relative_error(last[method], z0), "error_diffusers": relative_error(last["diffusers"], z0),
        "runs": runs,
    }


# --- one configuration, in its own process ------------------------------------------------------------
def memory_now(device: torch.device) -> dict:
    """What the process holds now. CPU: anonymous memory and file-backed pages apart (fp32 weights stay
    memory-mapped from the safetensors file; a bf16 model holds its own cast copy, and its load peak counts
    the fp32 file pages it read)."""
    if device.type == "cuda":
        return {"allocated": torch.cuda.memory_allocated(device)}
    return {"rss": _status_bytes("VmRSS"), "anon": _status_bytes("RssAnon"), "file": _status_bytes("RssFile")}


def child(spec: dict) -> dict:
    """Load the model in one dtype, encode a batch of random images, measure every method: one configuration."""
    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    model = load_model(spec["model"], device=spec["device"], dtype=spec["dtype"])
    load_seconds, loaded = time.perf_counter() - start, memory_now(model.device)
    B, size = spec["batch"], spec["size"]
    with torch.no_grad():
        cond, uncond = model.encode_text([PROMPT]), model.encode_negative("")  # (1, 77, 768) each; SDXL (1, 78, 2048)
        pixels = torch.rand(B, 3, size, size, generator=torch.Generator().manual_seed(spec["seed"])) * 2 - 1
        z0 = torch.cat([model.encode_image(pixels[i:i + 1]) for i in range(B)])  # one at a time: a small VAE peak
        load_peak = peak_bytes(model.device)  # loading + encoding, before any run
        schedule = Schedule.create(model.noise, spec["steps"])
        warm = unet_inputs(model, z0, cond, uncond, spec["guidance"], schedule)
        run_unet(model, warm, spec["warmup"], model.device)  # first calls build kernels and caches
        del warm
        rows = measure(model, spec["methods"], z0, cond, uncond, spec["guidance"], schedule, spec["repeats"])
    info = model.describe()
    return {"spec": spec, "load_seconds": load_seconds, "loaded_bytes": loaded, "load_peak": load_peak,
            "peak_resettable": reset_peak(model.device), "torch_threads": torch.get_num_threads(),
            "fingerprint": model.fingerprint, "versions": info["versions"], "latent_shape": list(z0.shape),
            "parameters": {k: info[f"{k}_parameters"] for k in ("unet", "vae", "text_encoder")}, "rows": rows}


def spawn(spec: dict, threads: int) -> dict:
    """Run `child(spec)` in a fresh Python process; its log goes to our stderr, its result comes back as JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          stdout=subprocess.PIPE, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if not lines:  # killed (out of memory: status -9) or crashed before it could report
        return {"spec": spec, "error": f"child exited with status {proc.returncode} and no result"}
    return json.loads(lines[-1][len(RESULT):])


# --- the report ---------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


COLUMNS = [  # (header, key, format); GiB columns hold bytes
    ("dtype", "dtype", "{}"), ("size", "size", "{:d}"), ("batch", "batch", "{:d}"), ("w", "guidance", "{:g}"),
    ("method", "method", "{}"), ("calls (a)/(b)", "calls", "{}"),
    ("(a) invedit s", "seconds_invedit", "{:.2f}"), ("(b) diffusers s", "seconds_diffusers", "{:.2f}"),
    ("(c) UNet s", "seconds_unet", "{:.2f}"), ("(a)/(b)", "ratio_diffusers", "{:.3f}"),
    ("(a)/(c)", "overhead", "{:.3f}"), ("s/UNet call", "seconds_per_call", "{:.3f}"),
    ("peak (a) GiB", "peak_invedit", "GiB"), ("peak (b) GiB", "peak_diffusers", "GiB"),
    ("load peak GiB", "load_peak", "GiB"), ("held GiB", "loaded_bytes", "held"),
    ("err (a)", "error_invedit", "{:.2e}"), ("err (b)", "error_diffusers", "{:.2e}"),
]


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "calls" and value is not None:
        return f"{value}/{row['reference_calls']}"
    if value is None:
        return ""
    if fmt == "GiB":
        return f"{value / GiB:.2f}"
    if fmt == "held":  # after loading: CUDA allocated, CPU anonymous + file-backed
        if "allocated" in value:
            return f"{value['allocated'] / GiB:.2f}"
        return "+".join(f"{value[k] / GiB:.2f}" if value.get(k) is not None else "?" for k in ("anon", "file"))
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return fmt.format(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if "error" in row:
            config = " | ".join(_cell(row, k, f) for _, k, f in COLUMNS[:4])
            lines.append(f"| {config} | failed: {row['error']} |")
        else:
            lines.append("| " + " | ".join(_cell(row, k, f) for _, k, f in COLUMNS) + " |")
    return "\n".join(lines)


LEGEND = (
    "(a) invedit `invert_with` + `replay`; (b) diffusers' DDIMInverseScheduler + DDIMScheduler loop calling the "
    "UNet (one run per configuration, shared by its methods); (c) the bare UNet, as many calls as (a) on inputs "
    "of (a)'s shapes; seconds are medians over the repeats, for the whole batch. (a)/(c) is invedit's "
    "overhead over the network. Calls: UNet calls of (a) / of (b); under guidance w != 1 each call carries "
    "2 × batch rows. Peaks: {peak}; load peak: the configuration's process before any run (loading the "
    "weights in the dtype and the VAE encode of the images, one at a time, in fp32); held: {held}. "
    "err: ‖ẑ0 − z0‖/‖z0‖ of the last run; random weights, so it compares the two loops only.")


def header_for(args, results: list[dict], device: str, command: str, total: float) -> dict:
    done = [r for r in results if "error" not in r]
    first = done[0] if done else {}
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": device,
        "cpu": cpu_name(), "gpu": gpu, "torch_threads": sorted({r["torch_threads"] for r in done}),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": {**first.get("versions", {"torch": torch.__version__}), "python": platform.python_version()},
        "family": args.family, "model": str(args.model_dir), "fingerprint": first.get("fingerprint"), "parameters": first.get("parameters"),
        "steps": args.steps, "repeats": args.repeats, "warmup_calls": args.warmup, "prompt": PROMPT,
        "peak_resettable": all(r["peak_resettable"] for r in done) if done else None, "seconds_total": total,
    }


def flatten(results: list[dict]) -> list[dict]:
    rows = []
    for res in results:
        spec = res["spec"]
        config = {k: spec[k] for k in ("dtype", "size", "batch", "guidance")}
        if "error" in res:
            rows.append({**config, "error": res["error"]})
            continue
        extra = {"load_peak": res["load_peak"], "loaded_bytes": res["loaded_bytes"],
                 "load_seconds": res["load_seconds"], "steps": spec["steps"], "latent_shape": res["latent_shape"]}
        rows += [{**config, **row, **extra} for row in res["rows"]]
    return rows


def write_outputs(args, header: dict, rows: list[dict], table: str, legend: str) -> None:
    if args.json:
        dump = lambda v: json.dumps(jsonable(_rounded(v)), ensure_ascii=False)  # noqa: E731
        Path(args.json).write_text("\n".join(["{", f' "header": {dump(header)},', ' "rows": [',
                                              ",\n".join("  " + dump(r) for r in rows), " ]", "}", ""]))
    if args.markdown:
        h = header
        machine = f"GPU {h['gpu']}" if h["gpu"] else f"CPU {h['cpu']}, torch threads {h['torch_threads']}"
        md = [f"# Speed and memory at Stable Diffusion's real size ({FAMILIES[args.family]}-shaped, random weights)",
              "",
              f"Command: `{h['command']}`  ",
              f"Date: {h['date']}; device {h['device']}; {machine}; {h['seconds_total'] / 60:.1f} min in all.  ",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items()) + ".  ",
              f"Model: `{h['model']}` (fingerprint `{h['fingerprint']}`; parameters "
              + (", ".join(f"{k} {v / 1e6:.1f} M" for k, v in h["parameters"].items()) if h["parameters"] else "?")
              + f"); {h['steps']} DDIM steps; median of {h['repeats']} repeats; prompt \"{PROMPT}\".", "",
              legend, "", table, ""]
        Path(args.markdown).write_text("\n".join(md))


# --- main ---------------------------------------------------------------------------------------------
def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes in pixels (square)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="default fp32 bf16, and fp16 on CUDA")
    p.add_argument("--methods", nargs="+", default=["ddim", "bdia"], choices=BENCH_METHODS,
                   help="inversion methods, with their default options (default ddim bdia)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 10 on the CPU, 50 on CUDA)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales w, e.g. 1 7.5")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each loop; the median is reported")
    p.add_argument("--warmup", type=int, default=None, help="untimed UNet calls first (default 1; CUDA 3)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and OMP_NUM_THREADS) of each run")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images")
    p.add_argument("--family", default="sd15", choices=list(FAMILIES),
                   help="the model's shape: sd15 (SD 1.5, default) or sdxl (SDXL base 1.0)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="where the random model is cached (built when missing; default "
                        + ", ".join(f"{f}: {d}" for f, d in DEFAULT_FOLDERS.items()) + ")")
    p.add_argument("--quick", action="store_true", help="smoke test: 128², batch 1, fp32, 2 steps, 1 repeat")
    p.add_argument("--json", default=None, help="write the header and every row here")
    p.add_argument("--markdown", default=None, help="write the table as Markdown here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.child is not None:
        spec = json.loads(args.child)
        try:
            result = child(spec)
        except Exception as exc:  # reported in the table; the traceback goes to stderr
            traceback.print_exc()
            result = {"spec": spec, "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(RESULT + json.dumps(jsonable(result)), flush=True)
        return
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    on_cuda = device.startswith("cuda")
    if args.quick:
        args.sizes, args.batches, args.dtypes, args.steps, args.repeats = [128], [1], ["fp32"], 2, 1
    args.dtypes = args.dtypes or (["fp32", "bf16", "fp16"] if on_cuda else ["fp32", "bf16"])
    args.steps = args.steps or (50 if on_cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (3 if on_cuda else 1)
    if not on_cuda and "fp16" in args.dtypes:
        raise SystemExit("fp16 runs on CUDA only (invedit refuses fp16 on the CPU); use fp32 or bf16")
    if any(s < 64 or s % 64 for s in args.sizes):
        raise SystemExit(f"--sizes {args.sizes}: give multiples of 64 pixels (SD 1.5: VAE 8 × UNet 2³)")
    args.model_dir = args.model_dir or DEFAULT_FOLDERS[args.family]
    if min(args.batches) < 1 or args.repeats < 1 or args.steps < 1 or args.threads < 1:
        raise SystemExit("--batches, --repeats, --steps and --threads must be at least 1")
    command = "OMP_NUM_THREADS={} python {}".format(os.environ.get("OMP_NUM_THREADS", "unset"),
                                                   shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    start = time.perf_counter()
    build_random(args.family, args.model_dir.expanduser())
    per_run = {m: sum(METHODS[m].calls(args.steps, MethodOptions())) for m in args.methods}  # at most
    calls = args.repeats * (sum(per_run.values()) + 2 * args.steps + max(per_run.values()))
    specs = [dict(model=str(args.model_dir.expanduser()), device=device, dtype=dtype, size=size, batch=batch,
                  guidance=w, methods=args.methods, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
                  threads=args.threads, seed=args.seed)
             for dtype in args.dtypes for size in args.sizes for batch in args.batches for w in args.guidance]
    log(f"{len(specs)} configurations, each at most {calls + args.warmup} UNet calls ({args.repeats} × ("
        f"{' + '.join(f'{m} {n}' for m, n in per_run.items())} + diffusers {2 * args.steps} + bare UNet "
        f"{max(per_run.values())}) + {args.warmup} warm-up), in a fresh process each")
    results = []
    for spec in specs:
        log(f"{spec['dtype']} {spec['size']}² batch {spec['batch']} w={spec['guidance']:g}: a fresh process loads "
            "the model, encodes the images, warms up")
        results.append(spawn(spec, args.threads))
        for row in flatten(results[-1:]):
            log("  " + ("failed: " + row["error"] if "error" in row else
                        f"{row['method']}: (a) {row['seconds_invedit']:.2f} s, (b) {row['seconds_diffusers']:.2f} s, "
                        f"(c) {row['seconds_unet']:.2f} s, peak {row['peak_invedit'] / GiB:.2f} GiB"))
    rows = flatten(results)
    header = header_for(args, results, device, command, time.perf_counter() - start)
    peak = ("torch.cuda.max_memory_allocated during the run" if on_cuda else
            "the process's peak RSS during the run (VmHWM, reset before each run)" if header["peak_resettable"]
            else "the process's peak RSS so far (VmHWM could not be reset: includes loading)")
    held = ("torch.cuda.memory_allocated after loading" if on_cuda else "after loading, anonymous + file-backed "
            "RSS (fp32 weights stay memory-mapped from the safetensors file, which the peaks count)")
    legend, table = LEGEND.format(peak=peak, held=held), markdown_table(rows)
    gpu = f", GPU {header['gpu']}" if header["gpu"] else ""
    print(f"{command}\n{header['date']}; device {device}; CPU {header['cpu']}{gpu}; torch threads "
          f"{header['torch_threads']}; " + ", ".join(f"{k} {v}" for k, v in header["versions"].items())
          + f"\nmodel {header['model']} (random {FAMILIES[args.family]}-shaped, fingerprint {header['fingerprint']}); "
          f"{args.steps} steps; median of {args.repeats} repeats; {header['seconds_total']:.0f} s in all\n{legend}\n")
    print(table)
    write_outputs(args, header, rows, table, legend)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
