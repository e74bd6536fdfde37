"""Inversion files: tensors in safetensors, everything else in one JSON metadata block. Never pickle.

An inversion file holds x_T (and z_0, the latent it came from) plus whatever its method needs to replay
the trajectory (per-step tensors under `extra.<name>`), and metadata naming the model (with a weight
fingerprint), the schedule, the prompt, the method, the guidance, the image geometry and the versions.
Loading against a model says exactly what differs when they do not match.
"""
from __future__ import annotations

import json
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
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise InversionFileError(f"{name}: format {meta.get('format')!r} is not {FORMAT!r}")
    extras = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    pixels = tensors.get("input", extras.pop("input", None))  # files before 0.2 kept the input among the extras
    return Inversion(tensors["x_T"], tensors["z0"], Schedule.from_dict(meta["schedule"]), meta["method"],
                     meta["prompt"], float(meta["guidance"]), meta["model"], meta.get("image", {}),
                     meta.get("stats", {}), extras, meta.get("negative_prompt", ""), pixels)


def mismatches(inv: Inversion, model_info: Mapping[str, Any], schedule: Schedule | None = None) -> list[str]:
    """What differs between an inversion and the model (and schedule) it is about to be used with."""
    problems = []
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
