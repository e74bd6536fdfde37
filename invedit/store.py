"""Inversion files: tensors in safetensors, everything else in one JSON metadata block. Never pickle.

An inversion file holds x_T (and z_0, the latent it came from) plus whatever its method needs to replay
the trajectory (per-step tensors under `extra.<name>`), and metadata naming the model (with a weight
fingerprint), the schedule, the prompt, the method, the guidance, the image geometry and the versions.
Loading against a model says exactly what differs when they do not match.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .io import atomic_write
from .schedule import Schedule

FORMAT = "invedit.inversion/1"
SUFFIX = ".inversion.safetensors"


class InversionFileError(ValueError):
    """An inversion file that cannot be read or does not fit the model; the message says what differs."""


@dataclass(frozen=True)
class Inversion:
    """A saved inversion: the noise that regenerates an image, and how it was made."""

    x_T: torch.Tensor  # (B, 4, h, w) noise at the first level of `schedule`
    z0: torch.Tensor  # (B, 4, h, w) the latent that was inverted
    schedule: Schedule
    method: str
    prompt: str
    guidance: float
    model: Mapping[str, Any]  # spec, fingerprint, … (Model.describe())
    image: Mapping[str, Any] = field(default_factory=dict)  # Prepared.describe()
    stats: Mapping[str, Any] = field(default_factory=dict)  # residuals, network calls, seconds
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)  # per-step tensors of the method
    negative_prompt: str = ""
    pixels: Optional[torch.Tensor] = None  # (B, 3, H, W) uint8: the input exactly as the VAE saw it

    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt, "guidance": self.guidance,
                "schedule": self.schedule.to_dict(), "model": dict(self.model), "image": dict(self.image),
                "stats": dict(self.stats)}


def save_inversion(path: str | os.PathLike, inv: Inversion) -> Path:
    from safetensors.torch import save_file

    tensors = {"x_T": inv.x_T.detach().float().cpu().contiguous(), "z0": inv.z0.detach().float().cpu().contiguous()}
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in inv.extras.items()})
    if inv.pixels is not None:
        tensors["input"] = inv.pixels.detach().cpu().contiguous()
    meta = {"invedit": json.dumps(inv.metadata(), default=str)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_inversion(path: str | os.PathLike) -> Inversion:
    from safetensors import safe_open

    name = str(path)
    if not Path(name).is_file():
        raise InversionFileError(f"{name}: no such inversion file")
    try:
        with safe_open(name, framework="pt") as f:
            raw = (f.metadata() or {}).get("invedit")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise InversionFileError(f"{name}: not a readable safetensors file ({exc})") from None
    if raw is None or "x_T" not in tensors:
        raise InversionFileError(f"{name}: a safetensors file, but not an invedit inversion (no metadata block)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InversionFileError(f"{name}: its metadata block is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InversionFileError(f"{name}: format {found!r} is not {FORMAT!r}")
    try:
        return validate(_from_parts(meta, tensors))
    except (KeyError, TypeError, ValueError) as exc:
        what = f"lacks {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InversionFileError(f"{name}: not a usable inversion: {what}") from None


def _from_parts(meta: dict, tensors: dict[str, torch.Tensor]) -> Inversion:
    extras = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    pixels = tensors.get("input", extras.pop("input", None))  # files before 0.2 kept the input among the extras
    for key, kind in (("prompt", str), ("negative_prompt", str), ("method", str), ("schedule", dict),
                      ("model", dict), ("image", dict), ("stats", dict)):
        if key in meta and not isinstance(meta[key], kind):
            raise TypeError(f"metadata {key!r} is a {type(meta[key]).__name__}, not a {kind.__name__}")
    guidance = meta["guidance"]
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"guidance {guidance!r} is not a finite number")
    return Inversion(tensors["x_T"], tensors["z0"], Schedule.from_dict(meta["schedule"]), meta["method"],
                     meta["prompt"], float(guidance), meta["model"], meta.get("image", {}),
                     meta.get("stats", {}), extras, meta.get("negative_prompt", ""), pixels)


def _check_tensor(name: str, t: torch.Tensor, shape: tuple, floating: bool = True) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"tensor {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if floating and (not t.is_floating_point() or not bool(torch.isfinite(t).all())):
        raise ValueError(f"tensor {name} is not all finite floating-point numbers")


def validate(inv: Inversion) -> Inversion:
    """Check everything an inversion will be trusted with: the method is known and carries its tensors with
    the right shapes, every float is finite, the schedule is the one its noise config gives for its steps, and
    the image geometry is consistent and within the input limits. Raises ValueError naming the problem."""
    from .io import MAX_PIXELS
    from .methods import METHODS

    if inv.method not in METHODS:
        raise ValueError(f"method {inv.method!r} is not one of {', '.join(METHODS)}")
    if inv.schedule != Schedule.create(inv.schedule.noise, inv.schedule.steps):
        raise ValueError(f"its schedule is not the {inv.schedule.steps}-step schedule of its noise config")
    if inv.x_T.dim() != 4:
        raise ValueError(f"tensor x_T has shape {tuple(inv.x_T.shape)}, expected (batch, channels, height, width)")
    _check_tensor("x_T", inv.x_T, inv.x_T.shape)
    _check_tensor("z0", inv.z0, inv.x_T.shape)
    m, (N, B) = METHODS[inv.method], (inv.schedule.steps, inv.x_T.shape[0])
    for key in m.requires:
        if key not in inv.extras:
            raise ValueError(f"method {inv.method} needs the tensor extra.{key}, which the file lacks")
    for key, t in inv.extras.items():
        if key in m.per_step:
            if t.dim() < 2 or tuple(t.shape[:2]) != (N, B):
                raise ValueError(f"tensor extra.{key} has shape {tuple(t.shape)}, expected ({N}, {B}, …)")
            if key in ("offsets", "pivot"):
                _check_tensor(f"extra.{key}", t, (N, *inv.x_T.shape))
        elif key in m.noises:
            _check_tensor(f"extra.{key}", t, inv.x_T.shape)
        else:
            raise ValueError(f"tensor extra.{key} is not one method {inv.method} uses")
        _check_tensor(f"extra.{key}", t, t.shape)
    _check_geometry(inv, MAX_PIXELS)
    return inv


def _check_geometry(inv: Inversion, max_pixels: int) -> None:
    if inv.pixels is None:
        return
    p = inv.pixels
    if p.dtype != torch.uint8 or p.dim() != 4 or p.shape[0] != inv.x_T.shape[0] or p.shape[1] != 3:
        raise ValueError(f"tensor input has shape {tuple(p.shape)} and dtype {p.dtype}, expected (B, 3, H, W) uint8")
    H, W = p.shape[-2:]
    if H % inv.x_T.shape[-2] or W % inv.x_T.shape[-1] or H // inv.x_T.shape[-2] != W // inv.x_T.shape[-1]:
        raise ValueError(f"input {W}×{H} is not a multiple of the latent {inv.x_T.shape[-1]}×{inv.x_T.shape[-2]}")
    for key in ("original_size", "resized_size"):
        size = inv.image.get(key, [W, H])
        if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(isinstance(v, int) and v > 0
                                                                              for v in size)):
            raise ValueError(f"image {key} {size!r} is not two positive integers")
        if size[0] * size[1] > max_pixels:
            raise ValueError(f"image {key} {size[0]}×{size[1]} is above the {max_pixels // 1_000_000} MP input limit")
    box = inv.image.get("content_box", [0, 0, W, H])
    if (not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, int) for v in box)
            or not 0 <= box[0] < box[2] <= W or not 0 <= box[1] < box[3] <= H):
        raise ValueError(f"image content_box {box!r} does not lie inside the {W}×{H} input")


def mismatches(inv: Inversion, model_info: Mapping[str, Any], schedule: Schedule | None = None) -> list[str]:
    """What differs between an inversion and the model (and schedule) it is about to be used with."""
    problems = []
    if "family" in inv.model and inv.model.get("family") != model_info.get("family"):
        problems.append(f"family: made with a {inv.model.get('family')} model, now a {model_info.get('family')} one")
    if inv.model.get("fingerprint") != model_info.get("fingerprint"):
        problems.append(f"model: made with {inv.model.get('model')!r} (fingerprint {inv.model.get('fingerprint')}), "
                        f"now {model_info.get('model')!r} (fingerprint {model_info.get('fingerprint')})")
    noise = inv.schedule.noise.to_dict()
    for key, value in model_info.get("noise", {}).items():
        if noise.get(key) != value:
            problems.append(f"scheduler {key}: inversion has {noise.get(key)!r}, model has {value!r}")
    if schedule is not None and schedule.timesteps != inv.schedule.timesteps:
        problems.append(f"steps: inversion has {inv.schedule.steps}, asked for {schedule.steps}")
    return problems
