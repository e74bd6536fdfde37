"""EDICT: exact inversion through two coupled latent sequences (Wallace et al. 2022, "EDICT: Exact
Diffusion Inversion via Coupled Transformations", eqs. 14–15).

Each DDIM step updates x from y's noise prediction and y from x's, then mixes them with weight p.
Every line of the step is an affine map whose inverse is written out, so inversion is exact up to
floating-point rounding, for any network and any guidance: no fixed point to solve. Two network
calls per step; p close to 1 (0.93) keeps the two sequences together.
"""
from __future__ import annotations

from typing import Optional

import torch

from .ddim import EpsFn, Hook, StepCallback, latent_dtype, step_coefficients
from .schedule import Schedule


def _check(p: float) -> None:
    if not 0.5 <= p < 1.0:
        raise ValueError(f"EDICT mixing weight must be in [0.5, 1), got {p}")


def edict_sample(eps_fn: EpsFn, x: torch.Tensor, y: torch.Tensor, schedule: Schedule, p: float = 0.93,
                 callback: Optional[StepCallback] = None, hook: Optional[Hook] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the coupled sequences forwards (noise → clean): EDICT eq. 14, then the mixing of eq. 15.

    `hook(i, ·)`, when given, is applied to both sequences after step i (local blending)."""
    _check(p)
    dtype = latent_dtype(x)
    x, y = x.to(dtype), y.to(dtype)
    for i in range(schedule.steps):
        a, b = step_coefficients(*schedule.step_alphas(i))
        t = schedule.timesteps[i]
        x_inter = a * x + b * eps_fn(y, t).to(dtype)
        y_inter = a * y + b * eps_fn(x_inter, t).to(dtype)
        x = p * x_inter + (1 - p) * y_inter
        y = p * y_inter + (1 - p) * x
        if hook is not None:
            x, y = hook(i, x), hook(i, y)
        if callback is not None:
            callback(i + 1, schedule.steps)
    return x, y


def edict_invert(eps_fn: EpsFn, z0: torch.Tensor, schedule: Schedule, p: float = 0.93,
                 callback: Optional[StepCallback] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the coupled sequences backwards (clean → noise) from x = y = z_0: each line of
    `edict_sample`'s step undone in reverse order."""
    _check(p)
    x = y = z0.to(latent_dtype(z0))
    for k, i in enumerate(reversed(range(schedule.steps))):
        a, b = step_coefficients(*schedule.step_alphas(i))
        t = schedule.timesteps[i]
        y_inter = (y - (1 - p) * x) / p
        x_inter = (x - (1 - p) * y_inter) / p
        y = (y_inter - b * eps_fn(x_inter, t).to(x.dtype)) / a
        x = (x_inter - b * eps_fn(y, t).to(x.dtype)) / a
        if callback is not None:
            callback(k + 1, schedule.steps)
    return x, y
