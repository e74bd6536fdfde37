"""Orchestration of interpolation: photos or saved inversions in, frames, sheet, GIF, MP4 and report out.

1. Every input becomes an inversion (a saved file is reused, a photo is inverted and saved).
2. The inversions must share model, schedule, method, guidance and latent size; a clear error otherwise.
3. Each consecutive pair is a segment: weights are chosen (evenly, or at equal frame distances), the
   noises and conditionings mixed (`interpolate.py`) and the frames regenerated in batches.
4. The report gives each frame's distance to the segment's endpoints, consecutive-frame distances with
   their mean and spread, how closely the end frames match each image's own reconstruction, and timings.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from . import __version__
from .api import (InveditError, InversionSettings, Progress, conditioning_for, invert_image, prepared_from,
                  reconstruct, replay_options)
from .interpolate import MODES, SPACINGS, consecutive_distances, lerp, mix_extras, mix_noise, rms_distance, spread, \
    stack_extras, uniform_weights
from .io import contact_sheet, moved, output_set, save_gif, save_image, save_mp4, to_uint8, write_text
from .methods import Conditioning, counted, method, no_progress, replay
from .report import image_metrics, jsonable
from .store import SUFFIX, Inversion, InversionFileError, load_inversion, mismatches, save_inversion


@dataclass(frozen=True)
class InterpolationSettings:
    frames: int = 16  # frames per pair of inputs, both ends included
    mode: str = "slerp"  # how the noises are mixed: slerp (keeps the norm) or lerp
    renormalise: bool = False  # AdaIN: give mixed noise the mixed per-channel statistics (DiffMorpher)
    spacing: str = "even"  # even weights, or "uniform": equal distances between consecutive frames (IMPUS)
    rounds: int = 1  # uniform spacing: re-spacing passes (each renders the segment once more)
    batch_size: int = 8  # frames through the UNet at once
    fps: float = 8.0  # GIF and MP4 frame rate

    def __post_init__(self) -> None:
        if self.frames < 2 or self.batch_size < 1 or self.rounds < 0 or self.fps <= 0:
            raise InveditError(f"need frames >= 2, batch_size >= 1, rounds >= 0, fps > 0; got {self}")
        if self.mode not in MODES or self.spacing not in SPACINGS:
            raise InveditError(f"mode must be one of {MODES} and spacing one of {SPACINGS}")


@dataclass(frozen=True)
class InterpolateResult:
    frames: tuple[Image.Image, ...]
    weights: tuple[tuple[int, float], ...]  # (segment, weight) of each frame
    report: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def _as_inversion(model, item, prompt: str, settings: InversionSettings, max_side, fit, progress):
    """(inversion, warnings, whether it is new and should be saved with the outputs)."""
    if isinstance(item, Inversion):
        return item, [], False
    if str(item).endswith(".safetensors"):
        try:
            return load_inversion(item), [], False
        except InversionFileError as exc:
            raise InveditError(str(exc)) from None
    result = invert_image(model, item, prompt, settings, None, max_side, fit, progress)
    return result.inversion, list(result.warnings), True


def check_compatible(model, inversions: Sequence[Inversion], names: Sequence[str]) -> None:
    """Raise an InveditError saying what differs, if the inversions cannot be mixed with this model."""
    first = inversions[0]
    for inv, name in zip(inversions, names):
        problems = mismatches(inv, model.describe())
        for attr in ("method", "guidance", "negative_prompt"):
            if getattr(inv, attr) != getattr(first, attr):
                problems.append(f"{attr}: {getattr(inv, attr)!r}, but {names[0]} has {getattr(first, attr)!r}")
        if inv.schedule.timesteps != first.schedule.timesteps:
            problems.append(f"steps: {inv.schedule.steps}, but {names[0]} has {first.schedule.steps}")
        if inv.x_T.shape != first.x_T.shape:
            problems.append(f"latent size {tuple(inv.x_T.shape[-2:])}, but {names[0]} has {tuple(first.x_T.shape[-2:])}"
                            " (give images of one size, or --fit crop)")
        if problems:
            raise InveditError(f"{name} cannot be interpolated with the others:\n  " + "\n  ".join(problems))


class _Segment:
    """Renders frames between two inversions at any weights, in batches."""

    def __init__(self, model, a: Inversion, b: Inversion, settings: InterpolationSettings):
        self.model, self.a, self.b, self.s = model, a, b, settings
        self.ca = conditioning_for(model, a.prompt, a.negative_prompt, a.guidance)
        self.cb = conditioning_for(model, b.prompt, b.negative_prompt, b.guidance)
        self.box = prepared_from(a).content
        self.method = method(a.method)
        self.extras = [{k: v.to(model.device) for k, v in inv.extras.items() if k not in self.method.anchors}
                       for inv in (a, b)]
        self.counter = [0]

    def _batch(self, weights: Sequence[float]) -> list[np.ndarray]:
        a, b, s, dev = self.a, self.b, self.s, self.model.device
        x_T = torch.cat([mix_noise(a.x_T, b.x_T, w, s.mode, s.renormalise) for w in weights]).to(dev)
        cond = torch.cat([lerp(self.ca.cond, self.cb.cond, w) for w in weights])
        uncond = torch.cat([lerp(self.ca.uncond, self.cb.uncond, w) for w in weights])
        m = self.method
        extras = stack_extras([mix_extras(*self.extras, w, s.mode, s.renormalise, m.noises) for w in weights],
                              m.per_step)
        ends = 0
        if m.frames_with_ends:  # BDIA: both inversions ride along, each frame follows their corrections mixed
            ends, (xa, xb) = 2, (inv.extras["x_1"].to(dev) for inv in (a, b))
            x_T = torch.cat([a.x_T.to(dev), b.x_T.to(dev), x_T])
            cond = torch.cat([self.ca.cond, self.cb.cond, cond])
            uncond = torch.cat([self.ca.uncond, self.cb.uncond, uncond])
            extras = {"x_1": torch.cat([xa, xb, *(mix_noise(xa, xb, w, s.mode, s.renormalise) for w in weights)]),
                      "mix": torch.tensor([[1.0, 0.0], [0.0, 1.0], *([1 - w, w] for w in weights)], device=dev)}
        c = Conditioning(counted(self.model.eps, self.counter), cond, uncond, a.guidance)
        z = replay(a.method, c, x_T, extras, a.schedule, replay_options(a))[ends:]
        return [to_uint8(p) for p in self.box(self.model.decode(z))]

    def render(self, weights: Sequence[float]) -> list[np.ndarray]:
        n = self.s.batch_size
        with torch.no_grad():
            return [im for k in range(0, len(weights), n) for im in self._batch(weights[k:k + n])]

    def frames(self) -> tuple[list[float], list[np.ndarray]]:
        if self.s.spacing == "uniform":
            return uniform_weights(self.render, self.s.frames, self.s.rounds)
        weights = [float(w) for w in np.linspace(0, 1, self.s.frames)]
        return weights, self.render(weights)


def interpolate(model, inputs: Sequence[Any], prompts: Sequence[str] = ("",),
                settings: InversionSettings = InversionSettings(method="fixed-point"),
                interp: InterpolationSettings = InterpolationSettings(),
                out: Optional[str | os.PathLike] = None, max_side: Optional[int] = None, fit: str = "pad",
                progress: Progress = no_progress, names: Optional[Sequence[str]] = None) -> InterpolateResult:
    """Interpolate between two or more photos or inversion files (see the module docstring).

    `names` label the inputs in the report (default: their file names)."""
    if len(inputs) < 2:
        raise InveditError("interpolation needs at least two inputs")
    if len(prompts) not in (1, len(inputs)):
        raise InveditError(f"give one prompt, or one per input ({len(inputs)}); got {len(prompts)}")
    prompts = list(prompts) * len(inputs) if len(prompts) == 1 else list(prompts)
    names = list(names) if names is not None else [getattr(x, "name", None) or Path(str(x)).name for x in inputs]
    start, warnings, inversions, new = time.perf_counter(), [], [], {}
    for item, prompt in zip(inputs, prompts):  # 1. inputs → inversions
        inv, w, made = _as_inversion(model, item, prompt, settings, max_side, fit, progress)
        inversions.append(inv)
        warnings += w
        if made:
            new[f"{Path(str(item)).stem}{SUFFIX}"] = inv
    check_compatible(model, inversions, names)  # 2.
    seconds = {"invert": time.perf_counter() - start}
    frames, weights, segments, calls = [], [], [], 0
    for k, (a, b) in enumerate(zip(inversions, inversions[1:])):  # 3.
        segment = _Segment(model, a, b, interp)
        ws, images = segment.frames()
        calls += segment.counter[0]
        segments.append(_segment_report(names[k], names[k + 1], ws, images))
        keep = slice(0 if k == 0 else 1, None)  # a chain shares its inner endpoints
        frames += images[keep]
        weights += [(k, w) for w in ws[keep]]
        progress("interpolate", k + 1, len(inversions) - 1)
    seconds["render"] = time.perf_counter() - start - seconds["invert"]
    report = {"invedit": __version__, "inputs": names, "prompts": prompts, "settings": interp.__dict__,
              "method": inversions[0].method, "guidance": inversions[0].guidance, "steps": inversions[0].schedule.steps,
              "segments": segments, "endpoints": _endpoint_report(model, inversions, frames, names),
              "network_calls": calls, "seconds": seconds, "model": model.describe()}
    pil = tuple(Image.fromarray(f) for f in frames)
    paths = _write(out, pil, weights, report, interp, new) if out is not None else {}
    return InterpolateResult(pil, tuple(weights), report, paths, tuple(warnings))


def _segment_report(a: str, b: str, weights: Sequence[float], images: Sequence[np.ndarray]) -> dict[str, Any]:
    unit = [im.astype(np.float64) / 255 for im in images]
    d = consecutive_distances(unit)
    return {"from": a, "to": b, "weights": list(weights),
            "distance_to_start": [rms_distance(u, unit[0]) for u in unit],
            "distance_to_end": [rms_distance(u, unit[-1]) for u in unit],
            "consecutive": d, "consecutive_mean": float(np.mean(d)), "spread": spread(d)}


def _endpoint_report(model, inversions, frames, names) -> list[dict[str, Any]]:
    """PSNR against the input of each end frame and of the image's own reconstruction (they should agree)."""
    rows = []
    per_segment = (len(frames) - 1) // (len(inversions) - 1)
    unit = lambda a: a.astype(np.float64) / 255  # noqa: E731
    for k, (inv, name) in enumerate(zip(inversions, names)):
        prepared = prepared_from(inv)
        ref = unit(to_uint8(prepared.content(prepared.pixels)[0]))
        recon = reconstruct(model, inv).content  # the single-image reconstruction, at the working size
        frame = frames[k * per_segment]
        rows.append({"input": name, "frame": k * per_segment,
                     "frame_psnr_vs_input": image_metrics(unit(frame), ref)["psnr"],
                     "reconstruction_psnr_vs_input": image_metrics(unit(recon), ref)["psnr"],
                     "frame_psnr_vs_reconstruction": image_metrics(unit(frame), unit(recon))["psnr"]})
    return rows


def _write(out, frames, weights, report, interp: InterpolationSettings,
           inversions: dict[str, Inversion]) -> dict[str, Path]:
    """Every output in one set (`io.output_set`): the frames folder is replaced whole, so none is stale."""
    labels = [f"{s}:{w:.2f}" for s, w in weights]
    with output_set(out) as stage:
        paths: dict[str, Path] = {f"inversion {name}": save_inversion(stage / name, inv)
                                  for name, inv in inversions.items()}
        for k, frame in enumerate(frames):
            save_image(stage / "frames" / f"frame_{k:03d}.png", frame)
        paths["frames"] = stage / "frames"
        paths["sheet"] = save_image(stage / "sheet.png", contact_sheet(list(frames), labels))
        paths["gif"] = save_gif(stage / "morph.gif", list(frames), interp.fps)
        paths["mp4"] = save_mp4(stage / "morph.mp4", list(frames), interp.fps)
        paths["report"] = write_text(stage / "interpolation.json", json.dumps(jsonable(report), indent=2))
    return moved(paths, stage, out)


__all__ = ["InterpolationSettings", "InterpolateResult", "interpolate", "check_compatible", "SUFFIX"]
