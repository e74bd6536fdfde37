"""Train, from scratch, the small Stable-Diffusion-shaped model of the shapes world that ships with invedit.

The result is an ordinary diffusers ``StableDiffusionPipeline`` folder (fp32 safetensors, no safety
checker) that loads offline with ``StableDiffusionPipeline.from_pretrained(out)``, through the very
code path a hub model takes. Stages:

1. Data: shapes-world images (``invedit.shapes``) and random crops of scikit-image's sample photos.
2. VAE: an ``AutoencoderKL`` with 3 blocks (64x64x3 -> 16x16x4), trained on shapes mixed with photo
   crops so real photos round-trip tolerably; then ``scaling_factor`` = 1 / std of the latents.
3. Text: a ``CLIPTokenizer`` in which every caption word is one token, and a small ``CLIPTextModel``.
4. UNet: a ``UNet2DConditionModel`` trained jointly with the text encoder on the DDPM epsilon objective
   over Stable Diffusion's own scaled-linear schedule, with offset noise (0.1; Guttenberg 2023) so the
   sampler does not take the global colour from the noise (see PITFALLS), Min-SNR-5 loss weights (Hang
   et al. 2023), 10% empty captions for classifier-free guidance, AdamW with warm-up and cosine decay,
   gradient clipping, and an EMA. ``--vae-from`` skips stage 2 and reuses a trained model's VAE.
5. Save the pipeline atomically, load it back, generate, and grade the samples with ``invedit.judge``;
   ``training.json`` records the command, seed, hardware, steps, times, losses and grades.

Defaults depend on --device (see DEVICE_DEFAULTS); every one can be overridden. --budget-minutes caps
the wall time: step counts shrink (never grow) to fit, from the speed measured while training. Without
it the run is deterministic by seed on CPU at a given thread count. Examples::

    python scripts/train_shapes_model.py --device cuda --out runs/shapes --budget-minutes 5.5   # H100
    OMP_NUM_THREADS=2 python scripts/train_shapes_model.py --out runs/unet --vae-from assets/models/shapes-64 \
        --unet-steps 6000                                   # a new UNet on the shipped VAE, ~30 min on 2 cores
    OMP_NUM_THREADS=2 python scripts/train_shapes_model.py --out runs/shapes-cpu --budget-minutes 60
    OMP_NUM_THREADS=1 python scripts/train_shapes_model.py --out /tmp/smoke --vae-steps 20 --unet-steps 20 \
        --num-images 512 --num-photos 128 --eval-images 8                                 # smoke test, ~1 min
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a hub

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from invedit import shapes  # noqa: E402
from invedit.judge import judge  # noqa: E402
from invedit.model.build import MAX_LENGTH, SD_SCHEDULER, save_pipeline, text_encoder_for, write_tokenizer  # noqa: E402

# Per-device defaults. CPU: ~60 min on 2 idle cores (VAE ~0.95 s, 48/96 UNet ~0.26 s a step at 2 threads; with
# --vae-from the VAE stage is skipped). Measured: --budget-minutes 50 ran 37 min (VAE cut to 494 steps: 26.0 dB,
# below the GPU-trained VAE's 33.8; prompts 100/100), since a budget only ever shrinks the step counts. CUDA: meant to be capped with --budget-minutes (the step counts then
# shrink to fit); the first 32/64 model trained at ~15 it/s (batch 256) on an H200.
DEVICE_DEFAULTS = {
    "cpu": dict(vae_steps=1000, unet_steps=8000, batch_size=32, vae_batch_size=32, lr=2e-3, vae_lr=1e-3,
                num_images=20000, num_photos=4000, eval_images=48, log_every=50, vae_step_cost=3.0),
    "cuda": dict(vae_steps=3000, unet_steps=9000, batch_size=256, vae_batch_size=128, lr=2e-3, vae_lr=1e-3,
                 num_images=60000, num_photos=12000, eval_images=256, log_every=250, vae_step_cost=2.0),
}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
          "retina", "colorwheel", "coins", "moon", "brick", "grass", "gravel", "clock", "stereo_motorcycle")
HOLDOUT_PHOTO = "coffee"  # never trained on: the VAE's photo PSNR on it measures generalisation
SAVE_RESERVE_S = 60.0  # of --budget-minutes, kept for encoding latents, saving and the final evaluation


# ---- 0. arguments ---------------------------------------------------------------------------------

def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="pipeline folder to write (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, i.e. OMP_NUM_THREADS)")
    per_device = {"vae-steps": (int, "VAE optimiser steps"), "unet-steps": (int, "UNet + text encoder steps"),
                  "batch-size": (int, "UNet batch"), "vae-batch-size": (int, "VAE batch"),
                  "lr": (float, "peak lr of UNet + text encoder"), "vae-lr": (float, "peak lr of the VAE"),
                  "num-images": (int, "shapes images generated for training"),
                  "num-photos": (int, "photo crops generated for the VAE"),
                  "eval-images": (int, "captions generated and judged at the end"),
                  "log-every": (int, "steps between progress lines"),
                  "vae-step-cost": (float, "time of a VAE step in UNet steps, to split --budget-minutes")}
    for name, (kind, text) in per_device.items():
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{text} (default: per device, DEVICE_DEFAULTS)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="wall-time budget: step counts shrink (never grow) to fit it, measured as training runs")
    p.add_argument("--photo-fraction", type=float, default=0.4, help="share of photo crops in each VAE batch")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the VAE's KL (per-sample sum)")
    p.add_argument("--offset-noise", type=float, default=0.1, help="std of the per-channel constant in the noise")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions (for CFG)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of UNet + text encoder weights (0: off)")
    p.add_argument("--min-snr", type=float, default=5.0,
                   help="Min-SNR-gamma loss weight min(SNR, gamma) / SNR (Hang et al. 2023; 0: off)")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="reuse the VAE of this pipeline folder (its scaling_factor too) instead of training one")
    p.add_argument("--warmup", type=float, default=0.05, help="share of steps with linear lr warm-up")
    p.add_argument("--vae-channels", type=ints, default=(32, 64, 64), help="VAE block widths (3 = factor 4)")
    p.add_argument("--unet-channels", type=ints, default=(48, 96), help="UNet block widths; cross-attn below 1st")
    p.add_argument("--unet-heads", type=int, default=2, help="attention heads per UNet transformer")
    p.add_argument("--unet-layers", type=int, default=1, help="resnet (+ attention) layers per UNet block")
    p.add_argument("--text-hidden", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-guidance", type=floats, default=(3.0, 5.0, 8.0))
    args = p.parse_args(argv)
    for key, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    if args.out.exists() and not args.overwrite:
        sys.exit(f"--out {args.out} exists; pass --overwrite to replace it")
    if args.vae_from is not None and not (args.vae_from / "vae" / "config.json").is_file():
        sys.exit(f"--vae-from {args.vae_from}: no vae/config.json there (expected a diffusers pipeline folder)")
    if args.min_snr < 0:
        sys.exit(f"--min-snr must be >= 0 (0 turns it off), got {args.min_snr}")
    if len(args.vae_channels) != 3:
        sys.exit(f"--vae-channels needs 3 widths (64 px -> 16x16 latents), got {args.vae_channels}")
    if len(args.unet_channels) < 2:
        sys.exit(f"--unet-channels needs at least 2 widths, got {args.unet_channels}")


# ---- helpers ---------------------------------------------------------------------------------------

class Progress:
    """Prints step, running loss, lr, it/s and ETA every `every` steps; keeps the loss on the device."""

    def __init__(self, name: str, total: int, every: int):
        self.name, self.total, self.every = name, total, every
        self.start = self.mark = time.perf_counter()
        self.running, self.count, self.last_loss, self.lr = None, 0, float("nan"), 0.0

    def update(self, step: int, loss: torch.Tensor, lr: float) -> None:
        self.running = loss.detach() if self.running is None else self.running + loss.detach()
        self.count, self.lr = self.count + 1, lr
        if (step + 1) % self.every == 0:
            self.report(step + 1)

    def report(self, done: int) -> None:
        """Print the line for `done` steps (and keep the loss) unless nothing happened since the last."""
        if not self.count:
            return
        self.last_loss = self.running.item() / self.count  # the only host-device sync of the loop
        now = time.perf_counter()
        rate = self.count / (now - self.mark)
        eta = (self.total - done) / max(rate, 1e-9)
        print(f"[{self.name}] step {done:>6}/{self.total}  loss {self.last_loss:.5f}  lr {self.lr:.2e}  "
              f"{rate:6.2f} it/s  eta {eta / 60:5.1f} min", flush=True)
        self.running, self.count, self.mark = None, 0, now

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Schedule:
    """Linear warm-up then cosine decay to 10% of the peak; `total` may shrink while training."""

    def __init__(self, total: int, warmup: float):
        self.total, self.warmup = total, max(1, round(warmup * total))
        self.timer = (0, 0.0)  # (step, time) of fit_steps' last look

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        done = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))


def fit_steps(schedule: Schedule, step: int, deadline: float | None, name: str) -> None:
    """Shrink (never grow) the step count so the stage ends by `deadline` (a perf_counter time).

    The speed is measured over steps 10-30 (a GPU's first steps are slow: allocation, kernel choice),
    then again every 250 steps over the latest window, so a machine that gets busier is caught too;
    past the deadline the stage stops at once.
    """
    if deadline is None:
        return
    now = time.perf_counter()
    fits = step if now >= deadline else schedule.total
    if step in (30,) or (step > 30 and step % 250 == 0):
        rate = (step - schedule.timer[0]) / (now - schedule.timer[1])
        fits = min(fits, step + int(rate * (deadline - now)))
    if step in (10, 30) or (step > 30 and step % 250 == 0):
        schedule.timer = (step, now)
    if fits < schedule.total:
        schedule.total = max(fits, step)
        print(f"[{name}] the budget leaves time for {schedule.total} steps; stopping there", flush=True)


def make_optimizer(params, lr: float, schedule: Schedule, device: str):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=device == "cuda")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def autocast(device: str):
    """bf16 autocast on CUDA (latent arithmetic and losses stay fp32); nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-10)))


# ---- 1. data ---------------------------------------------------------------------------------------

def load_photos() -> dict[str, np.ndarray]:
    """scikit-image's sample photos that load offline, as RGB uint8; the rest are skipped."""
    try:
        import skimage.data
    except ImportError:
        return {}
    photos = {}
    for name in PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception as error:  # not bundled with this scikit-image: needs a download
            print(f"[data] skipping photo {name}: {type(error).__name__}")
            continue
        image = np.asarray(image[0] if isinstance(image, tuple) else image)
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        photos[name] = np.ascontiguousarray(image.astype(np.uint8))
    return photos


def halvings(photo: np.ndarray, size: int) -> list[np.ndarray]:
    """The photo and its successive halvings (area-averaged), down to a short side of `size`."""
    levels = [photo]
    while min(levels[-1].shape[:2]) >= 2 * size:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return levels


def photo_crops(photos: list[np.ndarray], n: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """n random square crops (n, size, size, 3): side log-uniform from `size` to the photo's short side,
    area-resized to `size`, flipped left-right half the time. Big crops are cut from a halved copy of
    the photo, so no resize shrinks by more than 2x (and 12,000 crops take seconds)."""
    pyramids = [halvings(p, size) for p in photos]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        k = int(rng.integers(len(photos)))
        short = min(photos[k].shape[:2])
        side = int(round(math.exp(rng.uniform(math.log(size), math.log(short)))))
        y, x = rng.integers(0, photos[k].shape[0] - side + 1), rng.integers(0, photos[k].shape[1] - side + 1)
        level = min(int(math.log2(side / size)), len(pyramids[k]) - 1)
        y, x, side = y >> level, x >> level, max(size, side >> level)
        crop = cv2.resize(pyramids[k][level][y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def make_data(args: argparse.Namespace) -> dict:
    """Stage 1: every image the run trains or evaluates on, as uint8 (N, 3, 64, 64) tensors on the device."""
    t0 = time.perf_counter()
    images, scenes = shapes.make_dataset(args.num_images, seed=args.seed)
    held_images, held_scenes = shapes.make_dataset(256, seed=args.seed + 1_000_003)
    photos = load_photos()
    train_photos = [p for name, p in photos.items() if name != HOLDOUT_PHOTO] or list(photos.values())
    rng = np.random.default_rng(args.seed + 1)
    if not photos:
        print("[data] WARNING: no photo loaded; the VAE trains on shapes only", flush=True)
    crops = photo_crops(train_photos, args.num_photos, rng) if photos else images[:0]
    held = [photos[HOLDOUT_PHOTO]] if HOLDOUT_PHOTO in photos else train_photos
    held_crops = photo_crops(held, 128, rng) if photos else images[:0]

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).to(args.device)

    print(f"[data] {len(images)} shapes images, {len(crops)} crops of {len(train_photos)} photos "
          f"({', '.join(n for n in photos if n != HOLDOUT_PHOTO)}) in {time.perf_counter() - t0:.1f} s", flush=True)
    return dict(shapes=tensor(images), captions=[s.caption for s in scenes], photos=tensor(crops),
                held_shapes=tensor(held_images), held_scenes=held_scenes, held_photos=tensor(held_crops),
                photo_names=sorted(photos))


# ---- 2. VAE ----------------------------------------------------------------------------------------

def build_vae(args: argparse.Namespace):
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    channels = args.vae_channels
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=channels,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=min(32, channels[0] // 2), sample_size=64)


def vae_batch(data: dict, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, 64, 64) in [-1, 1]: shapes images, and photo crops as --photo-fraction of the batch."""
    n_photo = round(args.vae_batch_size * args.photo_fraction) if len(data["photos"]) else 0
    pick_s = torch.randint(len(data["shapes"]), (args.vae_batch_size - n_photo,), generator=gen, device=args.device)
    batch = [data["shapes"][pick_s]]
    if n_photo:
        pick_p = torch.randint(len(data["photos"]), (n_photo,), generator=gen, device=args.device)
        batch.append(data["photos"][pick_p])
    return to_pixels(torch.cat(batch))


def train_vae(vae, data: dict, args: argparse.Namespace, deadline: float | None) -> dict:
    """Stage 2: reconstruction (MSE + L1) of posterior samples, plus a tiny KL."""
    vae.to(args.device).train()
    gen = torch.Generator(args.device).manual_seed(args.seed + 2)
    schedule = Schedule(args.vae_steps, args.warmup)
    opt, sched = make_optimizer(vae.parameters(), args.vae_lr, schedule, args.device)
    progress = Progress("vae", args.vae_steps, args.log_every)
    step = 0
    while step < schedule.total:
        x = vae_batch(data, args, gen)                                     # (B, 3, 64, 64)
        with autocast(args.device):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen, device=args.device)
            y = vae.decode(z).sample.float()
        loss = F.mse_loss(y, x) + F.l1_loss(y, x) + args.kl_weight * posterior.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        progress.update(step, loss, sched.get_last_lr()[0])
        step += 1
        fit_steps(schedule, step, deadline, progress.name)
        progress.total = schedule.total
    progress.report(step)
    vae.eval()
    return dict(steps=step, requested=args.vae_steps, seconds=progress.elapsed, final_loss=progress.last_loss)


def load_vae(folder: Path, device: str):
    """The VAE of an existing pipeline folder, as trained (scaling_factor kept), and its log entry."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae").to(device).eval()
    print(f"[vae] reusing {folder / 'vae'} (scaling_factor {vae.config.scaling_factor:.4f}); not training one",
          flush=True)
    log = {"from": str(folder), "steps": 0}
    previous = folder / "training.json"
    if previous.is_file():  # carry how that VAE was made, so this run's record stays complete
        record = json.loads(previous.read_text())
        log["trained_by"] = {k: record.get(k) for k in ("command", "hardware", "vae")}
    return vae, log


@torch.no_grad()
def encode(vae, images: torch.Tensor, device: str, batch: int = 512) -> torch.Tensor:
    """Posterior means (N, 4, 16, 16) of uint8 images, unscaled, fp32."""
    out = []
    for i in range(0, len(images), batch):
        with autocast(device):
            out.append(vae.encode(to_pixels(images[i:i + batch])).latent_dist.mean.float())
    return torch.cat(out)


@torch.no_grad()
def set_scaling_factor(vae, data: dict, device: str) -> float:
    """SD's convention: latents x scaling_factor have unit std (over 2,048 shapes images)."""
    std = encode(vae, data["shapes"][:2048], device).std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    print(f"[vae] latent std {std:.4f} -> scaling_factor {1.0 / std:.4f}", flush=True)
    return 1.0 / std


@torch.no_grad()
def evaluate_vae(vae, data: dict, device: str) -> dict:
    """PSNR of round trips (held-out shapes, held-out photo crops) and the judge on shapes round trips."""
    result = {"psnr_photos": float("nan")}
    for name in ("held_shapes", "held_photos"):
        images = data[name]
        if not len(images):
            continue
        with autocast(device):
            back = vae.decode(encode(vae, images, device)).sample
        original, back = to_uint8(to_pixels(images)), to_uint8(back)
        result[f"psnr_{name[5:]}"] = float(np.mean([psnr(a, b) for a, b in zip(original, back)]))
        if name == "held_shapes":
            hits = [judge(im).caption == s.caption for im, s in zip(back, data["held_scenes"])]
            result["judge_on_round_trips"] = float(np.mean(hits))
    print(f"[vae] round trips: PSNR shapes {result['psnr_shapes']:.2f} dB, photos ({HOLDOUT_PHOTO}, unseen) "
          f"{result['psnr_photos']:.2f} dB; judge reads {result['judge_on_round_trips']:.1%} right", flush=True)
    return result


# ---- 3. text ---------------------------------------------------------------------------------------

def build_text(args: argparse.Namespace, folder: Path):
    """Tokenizer with one token per caption word (written to folder) and a small CLIP text encoder."""
    tokenizer = write_tokenizer(folder, shapes.CAPTION_WORDS)
    for caption in shapes.all_captions():
        ids = tokenizer(caption).input_ids
        assert len(ids) == len(caption.split()) + 2, f"{caption!r} tokenizes to {ids}, not one id per word"
    heads = max(1, args.text_hidden // 16)
    text_encoder = text_encoder_for(tokenizer, hidden=args.text_hidden, layers=args.text_layers, heads=heads,
                                    seed=args.seed)
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id
    print(f"[text] vocab {len(tokenizer)}; 'a red circle on a blue background' -> "
          f"{tokenizer('a red circle on a blue background').input_ids}", flush=True)
    return tokenizer, text_encoder.train()


def tokenize(tokenizer, captions: list[str], device: str) -> torch.Tensor:
    """(N, 77) ids, padded as the pipeline pads them."""
    return tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids.to(device)


# ---- 4. UNet ---------------------------------------------------------------------------------------

def build_unet(args: argparse.Namespace, cross_attention_dim: int):
    """Plain blocks at 16x16, cross-attention at every coarser level (and the mid block)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(args.seed + 3)
    levels = len(args.unet_channels)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=args.unet_layers,
        block_out_channels=args.unet_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim, attention_head_dim=args.unet_heads,  # diffusers: = heads
        norm_num_groups=min(32, args.unet_channels[0] // 4), use_linear_projection=True)


class EMA:
    """Exponential moving average of parameters, with the usual (1 + n) / (10 + n) warm-up."""

    def __init__(self, modules, decay: float):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.count = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        decay = min(self.decay, (1 + self.count) / (10 + self.count))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def unet_batch(latents, ids, empty_ids, alphas, args, gen):
    """A noised batch: (x_t, t, ids, eps) with offset noise and caption dropout."""
    b = args.batch_size
    pick = torch.randint(len(latents), (b,), generator=gen, device=args.device)
    x0 = latents[pick]                                                      # (B, 4, 16, 16), scaled
    drop = torch.rand(b, generator=gen, device=args.device) < args.caption_dropout
    ids = torch.where(drop[:, None], empty_ids, ids[pick])                 # (B, 77)
    eps = torch.randn(x0.shape, generator=gen, device=args.device)
    eps = eps + args.offset_noise * torch.randn(b, 4, 1, 1, generator=gen, device=args.device)
    t = torch.randint(0, len(alphas), (b,), generator=gen, device=args.device)
    a = alphas[t].view(b, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, ids, eps               # DDPM eq. 4 (Ho et al. 2020)


def loss_weights(alphas: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor | None:
    """Min-SNR-gamma (Hang et al. 2023) for epsilon prediction: min(SNR, gamma) / SNR per sample, None if off.

    It lowers the weight of the low-noise steps (SNR > gamma), whose fine detail dominates the epsilon loss,
    so the steps where the layout, i.e. the shape, is decided get a larger share of the gradient."""
    if gamma <= 0:
        return None
    snr = alphas[t] / (1 - alphas[t])
    return snr.clamp(max=gamma) / snr


def train_unet(unet, text_encoder, latents, ids, empty_ids, args, deadline: float | None) -> dict:
    """Stage 4: the epsilon objective ||eps - eps_theta(x_t, t, text)||^2, UNet and text encoder together."""
    from diffusers import DDIMScheduler

    alphas = DDIMScheduler(**SD_SCHEDULER).alphas_cumprod.to(args.device)  # the sampler's own alpha-bar
    unet.to(args.device).train()
    text_encoder.to(args.device).train()
    modules = [unet, text_encoder]
    params = [p for m in modules for p in m.parameters()]
    gen = torch.Generator(args.device).manual_seed(args.seed + 4)
    schedule = Schedule(args.unet_steps, args.warmup)
    opt, sched = make_optimizer(params, args.lr, schedule, args.device)
    ema = EMA(modules, args.ema) if args.ema > 0 else None
    progress = Progress("unet", args.unet_steps, args.log_every)
    step = 0
    while step < schedule.total:
        x_t, t, batch_ids, eps = unet_batch(latents, ids, empty_ids, alphas, args, gen)
        with autocast(args.device):
            pred = unet(x_t, t, text_encoder(batch_ids)[0]).sample
        weights = loss_weights(alphas, t, args.min_snr)
        if weights is None:
            loss = F.mse_loss(pred.float(), eps)
        else:
            loss = (weights * (pred.float() - eps).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update()
        progress.update(step, loss, sched.get_last_lr()[0])
        step += 1
        fit_steps(schedule, step, deadline, progress.name)
        progress.total = schedule.total
    progress.report(step)
    if ema is not None:
        ema.copy_to_model()
    return dict(steps=step, requested=args.unet_steps, seconds=progress.elapsed, final_loss=progress.last_loss)


# ---- 5. save, check, report ------------------------------------------------------------------------

def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def time_unet_call(unet, cross_attention_dim: int) -> float:
    """Median ms of one UNet call on a (1, 4, 16, 16) latent, on CPU with one thread, fp32."""
    unet = unet.to("cpu").eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, MAX_LENGTH, cross_attention_dim)
    times = []
    for i in range(25):
        start = time.perf_counter()
        unet(x, t, ctx)
        times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return 1000 * float(np.median(times[5:]))


@torch.no_grad()
def evaluate_pipeline(folder: Path, args: argparse.Namespace) -> dict:
    """Load the saved folder as any SD model is loaded, generate, and grade with the judge."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(folder).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(args.seed + 5)
    captions = [shapes.sample_scene(rng).caption for _ in range(args.eval_images)]
    result, grid = {}, []
    for guidance in args.eval_guidance:
        images = []
        for i in range(0, len(captions), 64):
            gen = torch.Generator(args.device).manual_seed(args.seed + i)
            out = pipe(captions[i:i + 64], num_inference_steps=args.eval_steps, guidance_scale=guidance,
                       height=64, width=64, generator=gen, output_type="np").images
            images.extend((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
        verdicts = [judge(im) for im in images]
        truth = [shapes.parse_caption(c) for c in captions]
        score = {k: float(np.mean([(v.shape, v.colour, v.background)[j] == t[j] for v, t in zip(verdicts, truth)]))
                 for j, k in enumerate(("shape", "colour", "background"))}
        score["all"] = float(np.mean([v.caption == c for v, c in zip(verdicts, captions)]))
        result[f"guidance_{guidance:g}"] = score
        print(f"[eval] guidance {guidance:g}: judge says shape {score['shape']:.0%}, colour {score['colour']:.0%}, "
              f"background {score['background']:.0%}, all three {score['all']:.0%} of {len(captions)}", flush=True)
        grid.append(np.concatenate(images[:16], axis=1))
    Image.fromarray(np.concatenate(grid, axis=0)).save(folder / "samples.png")
    result["samples_png"] = {"rows": [f"guidance {g:g}" for g in args.eval_guidance], "captions": captions[:16]}
    return result


def file_sizes(folder: Path) -> dict:
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*.safetensors"))}
    total = sum(sizes.values())
    print(f"[save] weights {total / 2 ** 20:.2f} MiB: " + ", ".join(f"{k} {v / 2 ** 20:.2f}" for k, v in sizes.items()))
    if total > 20 * 2 ** 20:
        print("[save] WARNING: weights exceed the 20 MiB the repository allows", flush=True)
    return {"files": sizes, "total_bytes": total}


def hardware(args: argparse.Namespace) -> dict:
    import diffusers
    import transformers

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    info = dict(device=args.device, cpu=cpu, cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), python=platform.python_version(), torch=torch.__version__,
                diffusers=diffusers.__version__, transformers=transformers.__version__, numpy=np.__version__)
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def stage_deadline(args: argparse.Namespace, start: float, share: float) -> float | None:
    """When a stage must end under --budget-minutes: `share` of what is left after the save reserve."""
    if args.budget_minutes is None:
        return None
    left = args.budget_minutes * 60 - SAVE_RESERVE_S - (time.perf_counter() - start)
    return time.perf_counter() + share * max(left, 0.0)


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    args = parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    print(f"[setup] device {args.device}, {torch.get_num_threads()} threads, seed {args.seed}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    data = make_data(args)                                                               # 1. data
    if args.vae_from is None:
        vae = build_vae(args)
        vae_share = args.vae_steps * args.vae_step_cost / (args.vae_steps * args.vae_step_cost + args.unet_steps)
        vae_log = train_vae(vae, data, args, stage_deadline(args, start, vae_share))     # 2. VAE
        scale = set_scaling_factor(vae, data, args.device)
    else:
        vae, vae_log = load_vae(args.vae_from, args.device)
        scale = vae.config.scaling_factor
    vae_log.update(evaluate_vae(vae, data, args.device), scaling_factor=scale)
    tokenizer, text_encoder = build_text(args, work / "tokenizer")                       # 3. text
    latents = encode(vae, data["shapes"], args.device) * scale                           # (N, 4, 16, 16)
    ids, empty = tokenize(tokenizer, data["captions"], args.device), tokenize(tokenizer, [""], args.device)
    unet = build_unet(args, args.text_hidden)
    unet_log = train_unet(unet, text_encoder, latents, ids, empty, args, stage_deadline(args, start, 1.0))  # 4.
    unet_ms = time_unet_call(unet, args.text_hidden)                                     # 5. save, check
    print(f"[unet] one call on a 16x16 latent, batch 1, CPU, 1 thread: {unet_ms:.2f} ms", flush=True)
    models = dict(vae=vae, text_encoder=text_encoder, unet=unet)
    save_pipeline(work, **{k: m.to("cpu").eval() for k, m in models.items()}, tokenizer=tokenizer)
    report = dict(command=shlex.join(["python", *sys.argv]), seed=args.seed, hardware=hardware(args),
                  args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  parameters={k: count(m) for k, m in models.items()}, weights=file_sizes(work),
                  vae=vae_log, unet=dict(unet_log, cpu_call_ms=unet_ms), photos=data["photo_names"])
    report["eval"] = evaluate_pipeline(work, args)
    report["total_seconds"] = time.perf_counter() - start
    (work / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    os.replace(work, args.out)
    print(f"[done] {args.out} in {report['total_seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
