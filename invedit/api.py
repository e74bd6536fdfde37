"""The library API: every command of the CLI is one call here. Returns frozen dataclasses, prints nothing.

Progress is reported through a callback `progress(stage, done, total)`; warnings (an inversion that did
not converge, a prompt that was truncated) come back in the results for the caller to show.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from . import __version__
from .ddim import sample
from .invert import FixedPointOptions
from .methods import METHODS, PIVOTS, Conditioning, MethodOptions, Progress, invert_with, no_progress, replay
from .edit import EditSettings
from .nulltext import NullTextOptions
from .io import Prepared, load_image, moved, output_set, prepare, read_image, save_image, to_uint8, write_text
from .report import comparison_image, jsonable, latent_error, reconstruction_metrics
from .schedule import Schedule
from .store import SUFFIX, Inversion, InversionFileError, load_inversion, mismatches, save_inversion

def _assets() -> Path:
    """The shipped assets: the repository's assets/ folder, or the same files installed as `invedit_assets`."""
    beside = Path(__file__).resolve().parent.parent / "assets"
    if (beside / "models").is_dir():
        return beside
    from importlib.util import find_spec

    spec = find_spec("invedit_assets")  # a namespace package: its folder is its one search location
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else beside


ASSETS = _assets()
DEFAULT_MODEL = ASSETS / "models" / "shapes-64"


class InveditError(ValueError):
    """A problem with the user's input that the caller should show as a message, not a traceback."""


@dataclass(frozen=True)
class InversionSettings:
    steps: int = 50  # DDIM steps; the same Schedule is used to regenerate
    method: str = "bdia"  # one of methods.METHODS; see the table in methods.py
    guidance: float = 1.0  # classifier-free guidance scale the inversion is made for
    tol: float = 1e-6  # fixed-point: relative residual to stop at
    max_iter: int = 20  # fixed-point: iterations per step at most
    negative_prompt: str = ""  # the unconditional prompt of guidance
    pivot: str = "ddim"  # negative-prompt / null-text / direct: how the w = 1 pivot is inverted
    null_text_steps: int = 10  # null-text: Adam steps per DDIM step at most
    null_text_lr: float = 1e-2  # null-text: Adam learning rate (the paper's, for SD; the shipped model wants 0.1)
    edict_mix: float = 0.93  # edict: mixing weight p
    bdia_gamma: float = 1.0  # bdia: γ in (0, 1]; 1 is the time-symmetric update (below 1 the inversion is unstable)

    def __post_init__(self) -> None:
        for name in ("guidance", "tol", "null_text_lr", "edict_mix", "bdia_gamma"):
            if not math.isfinite(getattr(self, name)):
                raise InveditError(f"{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if self.method not in METHODS:
            raise InveditError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.steps < 1:
            raise InveditError(f"steps must be at least 1, got {self.steps}")
        if self.pivot not in PIVOTS:
            raise InveditError(f"pivot {self.pivot!r} is not one of {', '.join(PIVOTS)}")
        try:
            self.options()
        except ValueError as exc:
            raise InveditError(str(exc)) from None

    def options(self) -> MethodOptions:
        return MethodOptions(FixedPointOptions(self.tol, self.max_iter), self.pivot,
                             NullTextOptions(inner_steps=self.null_text_steps, lr=self.null_text_lr), self.edict_mix,
                             self.bdia_gamma)


@dataclass(frozen=True)
class InvertResult:
    inversion: Inversion
    prepared: Prepared
    path: Optional[Path]  # the inversion file, when written
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReconstructResult:
    report: dict[str, Any]  # JSON-ready: metrics, settings, timings, versions
    image: Any  # PIL image at the input's size
    paths: dict[str, Path] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    content: Any = None  # (H, W, 3) uint8: the reconstruction at the working size, padding removed


def default_model() -> str:
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        raise InveditError(f"no --model given and the shipped model is not at {DEFAULT_MODEL}: "
                           "pass --model <diffusers folder | .safetensors file | hub id>")
    return str(DEFAULT_MODEL)


def load(model: Optional[str] = None, device: str = "auto", dtype: str = "fp32", model_config: Optional[str] = None):
    """Load a model (the shipped one when `model` is None) through the model adapter."""
    from .model import ModelLoadError, load_model

    try:
        return load_model(model or default_model(), device=device, dtype=dtype, config=model_config)
    except ModelLoadError as exc:
        raise InveditError(str(exc)) from None


@contextmanager
def _timed(seconds: dict[str, float], stage: str, device: torch.device) -> Iterator[None]:
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # once per stage, never inside the step loop
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


def conditioning_for(model, prompt: str, negative_prompt: str, guidance: float) -> Conditioning:
    cond, uncond = model.encode_text([prompt]), model.encode_negative(negative_prompt)  # (1, L, D) each
    return Conditioning(model.eps, cond, uncond, guidance)


def _prompt_warnings(model, prompt: str) -> list[str]:
    n, limit = model.token_count(prompt), model.tokenizer.model_max_length
    return [f"prompt is {n} tokens long and was truncated to {limit}"] if n > limit else []


def check_image(path: str | os.PathLike) -> None:
    """Open and decode an image file, raising ImageError if it cannot be used (no model needed)."""
    read_image(path)


def invert_prepared(model, prepared: Prepared, prompt: str = "", settings: InversionSettings = InversionSettings(),
                    progress: Progress = no_progress) -> tuple[Inversion, list[str]]:
    """Invert an image already sized for the model (see `io.prepare`)."""
    return invert_many(model, [prepared], [prompt], settings, progress)[0]


def invert_many(model, prepared: Sequence[Prepared], prompts: Sequence[str],
                settings: InversionSettings = InversionSettings(),
                progress: Progress = no_progress) -> list[tuple[Inversion, list[str]]]:
    """Invert images of one working size together, one UNet batch, each under its own prompt; every image gets
    the inversion it would get alone (to float rounding: methods act per image). Seconds, calls and
    residuals in each inversion's stats are the batch's."""
    if len(prepared) != len(prompts) or not prepared:
        raise InveditError(f"give one prompt per image: {len(prepared)} images, {len(prompts)} prompts")
    if len({tuple(p.pixels.shape) for p in prepared}) != 1:
        raise InveditError("images inverted together need one working size: " +
                           ", ".join(f"{p.source} {tuple(p.pixels.shape[-2:])}" for p in prepared))
    seconds: dict[str, float] = {}
    schedule = Schedule.create(model.noise, settings.steps)
    with torch.no_grad():
        with _timed(seconds, "encode", model.device):
            z0 = model.encode_image(torch.cat([p.pixels for p in prepared]))  # (B, 4, H/f, W/f)
            cond = model.encode_text(list(prompts))  # (B, L, D)
            c = Conditioning(model.eps, cond, model.encode_negative(settings.negative_prompt), settings.guidance)
        with _timed(seconds, "invert", model.device):
            result = invert_with(settings.method, c, z0, schedule, settings.options(), progress)
    finite = [r for r in result.residuals if r == r]
    stats = {"residuals": list(result.residuals), "network_calls": result.network_calls,
             "max_residual": max(finite) if finite else float("nan"), "seconds": seconds, "batch": len(prepared),
             "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__}}
    per_step = METHODS[settings.method].per_step
    out = []
    for k, (p, prompt) in enumerate(zip(prepared, prompts)):
        extras = {name: (t[:, k:k + 1] if name in per_step else t[k:k + 1]).clone() for name, t in result.extras.items()}
        pixels = p.pixels.mul(127.5).add(127.5).round().to(torch.uint8)
        inversion = Inversion(result.x_T[k:k + 1].clone(), z0[k:k + 1].clone(), schedule, settings.method, prompt,
                              settings.guidance, model.describe(), {**p.describe(), "invedit": __version__}, stats,
                              extras, settings.negative_prompt, pixels)
        out.append((inversion, _prompt_warnings(model, prompt) + _convergence_warnings(settings, result.residuals)))
    return out


def _convergence_warnings(settings: InversionSettings, residuals) -> list[str]:
    uses_fixed_point = settings.method == "fixed-point" or (
        settings.pivot == "fixed-point" and settings.method in ("negative-prompt", "direct"))
    bad = [r for r in residuals if r > settings.tol]
    if not uses_fixed_point or not bad:
        return []
    return [f"fixed-point iteration did not reach tol {settings.tol:g} on {len(bad)} of {len(residuals)} steps "
            f"(largest residual {max(bad):.2e}); raise --max-iter or --steps for a closer inverse"]


def invert_image(model, image: str | os.PathLike, prompt: str = "", settings: InversionSettings = InversionSettings(),
                 out: Optional[str | os.PathLike] = None, max_side: Optional[int] = None, fit: str = "pad",
                 progress: Progress = no_progress) -> InvertResult:
    """Load a photo, invert it, and write `<out>/<stem>.inversion.safetensors` when `out` is given.

    `max_side` defaults to the model's native resolution; 0 keeps the photo's own size.
    """
    prepared = load_image(image, model.multiple, model.native_size if max_side is None else max_side, fit)
    inversion, warnings = invert_prepared(model, prepared, prompt, settings, progress)
    path = save_inversion(Path(out) / f"{Path(image).stem}{SUFFIX}", inversion) if out is not None else None
    return InvertResult(inversion, prepared, path, tuple(warnings))


def replay_options(inversion: Inversion) -> MethodOptions:
    saved = inversion.stats.get("settings", {})
    return MethodOptions(edict_mix=float(saved.get("edict_mix", 0.93)), bdia_gamma=float(saved.get("bdia_gamma", 1.0)))


def prepared_from(inversion: Inversion) -> Prepared:
    """Rebuild the input geometry (and pixels) stored in an inversion file."""
    info = inversion.image
    if inversion.pixels is None:
        raise InversionFileError("the inversion file holds no input image to compare against")
    pixels = inversion.pixels.float().sub(127.5).div(127.5)
    return Prepared(pixels, info.get("source", "?"), tuple(info.get("original_size", pixels.shape[-1:-3:-1])),
                    tuple(info.get("resized_size", pixels.shape[-1:-3:-1])),
                    tuple(info.get("content_box", (0, 0, pixels.shape[-1], pixels.shape[-2]))),
                    info.get("fit", "pad"), tuple(info.get("notes", ())))


def fitting_inversion(model, inversion: Inversion | str | os.PathLike) -> Inversion:
    """An inversion (loaded from its file when given a path) that fits `model`; an InveditError says what differs."""
    name = "the inversion"
    if not isinstance(inversion, Inversion):
        name = str(inversion)
        try:
            inversion = load_inversion(inversion)
        except InversionFileError as exc:
            raise InveditError(str(exc)) from None
    problems = mismatches(inversion, model.describe())
    if problems:
        raise InveditError(f"{name} does not fit this model:\n  " + "\n  ".join(problems))
    return inversion


def reconstruct(model, inversion: Inversion | str | os.PathLike, out: Optional[str | os.PathLike] = None,
                stem: Optional[str] = None, progress: Progress = no_progress, *,
                save: bool = False) -> ReconstructResult:
    """Regenerate an inversion with its own schedule, prompt and guidance; measure and (optionally) write it.

    With `save`, the inversion file is written too, in the same set of outputs (all or none appear in `out`)."""
    if not isinstance(inversion, Inversion):
        stem = stem or Path(inversion).name.removesuffix(SUFFIX).removesuffix(".safetensors")
    inversion = fitting_inversion(model, inversion)
    prepared = prepared_from(inversion)
    seconds: dict[str, float] = {}
    with torch.no_grad():
        with _timed(seconds, "sample", model.device):
            c = conditioning_for(model, inversion.prompt, inversion.negative_prompt, inversion.guidance)
            extras = {k: v.to(model.device) for k, v in inversion.extras.items()}
            z_hat = replay(inversion.method, c, inversion.x_T.to(model.device), extras, inversion.schedule,
                           replay_options(inversion), callback=lambda d, n: progress("reconstruct", d, n))
        with _timed(seconds, "decode", model.device):
            recon, vae = model.decode(torch.cat([z_hat, inversion.z0.to(z_hat)])).chunk(2)  # one batch
    report = _report(model, inversion, prepared, recon, vae, latent_error(z_hat.cpu(), inversion.z0.cpu()), seconds)
    image = prepared.restore(recon)
    paths = _write_outputs(out, stem or Path(prepared.source).stem, image, prepared, recon, vae, report,
                           inversion if save else None)
    return ReconstructResult(report, image, paths, (), to_uint8(prepared.content(recon)[0]))


def describe_image(model, prepared: Prepared) -> dict[str, Any]:
    """A prepared image as reports give it, with whether the VAE works on it in tiles (`Model.vae_tiled`)."""
    return {**prepared.describe(), "vae_tiled": model.vae_tiled(*prepared.pixels.shape[-2:])}


def _report(model, inversion: Inversion, prepared: Prepared, recon, vae, lat_err: float,
            seconds: dict[str, float]) -> dict[str, Any]:
    stats = inversion.stats
    return {
        "invedit": __version__,
        "metrics": reconstruction_metrics(prepared.content(prepared.pixels)[0], prepared.content(vae)[0],
                                          prepared.content(recon)[0]),
        "latent_error": lat_err,
        "inversion": {"method": inversion.method, "steps": inversion.schedule.steps, "guidance": inversion.guidance,
                      "prompt": inversion.prompt, "negative_prompt": inversion.negative_prompt,
                      "network_calls": stats.get("network_calls"),
                      "max_residual": stats.get("max_residual", float("nan")),
                      "settings": stats.get("settings", {}), "timesteps": list(inversion.schedule.timesteps)},
        "seconds": {**{f"invert.{k}": v for k, v in stats.get("seconds", {}).items()}, **seconds},
        "image": describe_image(model, prepared),
        "model": model.describe(),
    }


def _write_outputs(out, stem: str, image, prepared: Prepared, recon, vae, report,
                   inversion: Optional[Inversion] = None) -> dict[str, Path]:
    if out is None:
        return {}
    compare = comparison_image(prepared.content(prepared.pixels)[0], prepared.content(vae)[0],
                               prepared.content(recon)[0])
    with output_set(out) as stage:
        paths = {"inversion": save_inversion(stage / f"{stem}{SUFFIX}", inversion)} if inversion is not None else {}
        paths.update({"reconstruction": save_image(stage / f"{stem}.recon.png", image),
                      "comparison": save_image(stage / f"{stem}.compare.png", compare),
                      "report": write_text(stage / f"{stem}.report.json", json.dumps(jsonable(report), indent=2))})
    return moved(paths, stage, out)


def roundtrip(model, image: str | os.PathLike, prompt: str = "", settings: InversionSettings = InversionSettings(),
              out: Optional[str | os.PathLike] = None, max_side: Optional[int] = None, fit: str = "pad",
              progress: Progress = no_progress) -> ReconstructResult:
    """Invert a photo and regenerate it: the inversion file, reconstruction, comparison and report."""
    inverted = invert_image(model, image, prompt, settings, None, max_side, fit, progress)
    result = reconstruct(model, inverted.inversion, out, Path(image).stem, progress, save=True)
    return ReconstructResult(result.report, result.image, result.paths, inverted.warnings + result.warnings,
                             result.content)


@dataclass(frozen=True)
class SampleResult:
    images: tuple[Any, ...]  # PIL images
    latents: torch.Tensor  # (n, 4, h, w) the clean latents
    settings: dict[str, Any]
    paths: tuple[Path, ...] = ()


def generate(model, prompt: str, *, n: int = 1, seed: int = 0, steps: int = 50, guidance: float = 5.0,
             negative_prompt: str = "", eta: float = 0.0, size: Optional[int] = None,
             out: Optional[str | os.PathLike] = None, progress: Progress = no_progress) -> SampleResult:
    """Plain DDIM generation from seeded noise (drawn on the CPU, so a seed gives the same noise everywhere)."""
    size = size or model.native_size
    if not (math.isfinite(guidance) and math.isfinite(eta)):
        raise InveditError(f"guidance and eta must be finite numbers, got {guidance} and {eta}")
    if size % model.multiple:
        raise InveditError(f"size {size} is not a multiple of {model.multiple}, which this model needs")
    from .io import MAX_WORK_PIXELS

    if size * size > MAX_WORK_PIXELS:
        raise InveditError(f"size {size} is above the working budget of {MAX_WORK_PIXELS / 1e6:.3g} MP "
                           f"(memory grows with it): use --size {int(MAX_WORK_PIXELS ** 0.5)} or less")
    g = torch.Generator().manual_seed(seed)
    f = model.vae_scale_factor
    x_T = torch.randn(n, model.unet.config.in_channels, size // f, size // f, generator=g)
    schedule = Schedule.create(model.noise, steps)
    with torch.no_grad():
        z = sample(conditioning_for(model, prompt, negative_prompt, guidance).eps_fn(), x_T.to(model.device), schedule,
                   eta=eta,
                   generator=torch.Generator().manual_seed(seed + 1) if eta > 0 else None,
                   callback=lambda d, k: progress("sample", d, k))
        pixels = model.decode(z)
    from PIL import Image

    images = tuple(Image.fromarray(to_uint8(p)) for p in pixels)
    settings = {"prompt": prompt, "negative_prompt": negative_prompt, "n": n, "seed": seed, "steps": steps,
                "guidance": guidance, "eta": eta, "size": size, "model": model.describe(), "invedit": __version__}
    paths: tuple[Path, ...] = ()
    if out is not None:
        with output_set(out) as stage:
            staged = {str(i): save_image(stage / f"sample_{seed}_{i}.png", im) for i, im in enumerate(images)}
            write_text(stage / f"sample_{seed}.json", json.dumps(jsonable(settings), indent=2))
        paths = tuple(moved(staged, stage, out).values())
    return SampleResult(images, z.cpu(), settings, paths)


def edit(model, image_or_inversion, source: Optional[str], targets, settings: "EditSettings" = EditSettings(),
         inversion: InversionSettings = InversionSettings(guidance=7.5), out: Optional[str | os.PathLike] = None,
         max_side: Optional[int] = None, fit: str = "pad", progress: Progress = no_progress,
         stem: Optional[str] = None):
    """Edit a photo (or a saved inversion made with `source`) into each target prompt; see `editor.edit`.

    Returns an `editor.EditResult`: the edited images, the source branch's reconstruction, and the report.
    """
    from .editor import edit as run_edit

    return run_edit(model, image_or_inversion, source, targets, inversion, settings, out, max_side, fit, progress,
                    stem)


__all__ = ["InveditError", "EditSettings", "edit", "InversionSettings", "InvertResult", "ReconstructResult", "SampleResult", "default_model",
           "load", "check_image", "conditioning_for", "prepared_from", "replay_options", "invert_image", "invert_prepared", "invert_many", "fitting_inversion", "reconstruct", "roundtrip", "generate", "prepare"]
