"""Inversion methods behind one interface: `invert_with(method, …)` and `regenerate(method, …)`.

| method            | inverts at          | replays with                         | network calls per step | exact? |
|-------------------|---------------------|--------------------------------------|------------------------|--------|
| `ddim`            | w (plain DDIM)      | guided DDIM                          | 1 (+1 to regenerate)   | no: first-order drift |
| `fixed-point`     | w, each step solved | guided DDIM                          | ≤ max_iter + 1         | to the residual it reports |
| `negative-prompt` | 1 (pivot method)    | the source prompt as the negative    | pivot's                | as exact as its pivot at w = 1 |
| `null-text`       | 1, then optimise ∅  | per-step optimised ∅                 | pivot's + optimisation | to the optimisation's loss |
| `direct`          | 1 (pivot method)    | guided DDIM + recorded corrections   | pivot's + 1            | yes, by construction |
| `edict`           | w, coupled (x, y)   | coupled sequences                    | 2                      | yes, to float rounding |

Each method returns the tensors its replay needs (`extras`), stored in the inversion file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch

from .ddim import StepCallback, sample, step_coefficients
from .edict import edict_invert, edict_sample
from .guidance import CondEpsFn, guided
from .invert import FixedPointOptions, Trajectory, invert
from .nulltext import NullTextOptions, null_text_optimise
from .schedule import Schedule

METHODS = ("ddim", "fixed-point", "negative-prompt", "null-text", "direct", "edict")
PIVOTS = ("ddim", "fixed-point")
Progress = Callable[[str, int, int], None]  # (stage, steps done, steps in all)


@dataclass(frozen=True)
class Conditioning:
    """A conditional model and the conditionings of classifier-free guidance."""

    model_eps: CondEpsFn
    cond: torch.Tensor  # (1, L, D) the prompt's embedding
    uncond: torch.Tensor  # (1, L, D) the negative (usually empty) prompt's embedding
    scale: float  # guidance scale w

    def eps_fn(self, scale: Optional[float] = None):
        return guided(self.model_eps, self.cond, self.uncond, self.scale if scale is None else scale)


@dataclass(frozen=True)
class MethodOptions:
    fixed_point: FixedPointOptions = field(default_factory=FixedPointOptions)
    pivot: str = "ddim"  # how negative-prompt, null-text and direct invert at w = 1 (ddim: as their papers)
    null_text: NullTextOptions = field(default_factory=NullTextOptions)
    edict_mix: float = 0.93  # EDICT's p

    def __post_init__(self) -> None:
        if self.pivot not in PIVOTS:
            raise ValueError(f"pivot {self.pivot!r} is not one of {PIVOTS}")


@dataclass(frozen=True)
class MethodResult:
    x_T: torch.Tensor  # (B, 4, h, w)
    extras: dict[str, torch.Tensor]  # what `regenerate` needs besides x_T
    residuals: tuple[float, ...]  # per step: the method's own measure of how exact the step is
    network_calls: int


def no_progress(stage: str, done: int, total: int) -> None:
    """The default Progress: report nothing."""


def _pivot(c: Conditioning, z0, schedule, options: MethodOptions, progress: Progress) -> Trajectory:
    return invert(c.eps_fn(1.0), z0, schedule, options.pivot, options.fixed_point,
                  callback=lambda d, n: progress("invert", d, n))


def _direct_offsets(c: Conditioning, pivot: Trajectory, schedule: Schedule, progress: Progress) -> torch.Tensor:
    """Ju et al. 2023 (PnP Inversion), Algorithm 1: the gap between the guided step from the pivot and
    the pivot's next latent, recorded per step so that replay lands on the pivot exactly."""
    eps_fn, offsets = c.eps_fn(), []
    for i in range(schedule.steps):
        a, b = step_coefficients(*schedule.step_alphas(i))
        x = pivot.latents[i]
        offsets.append(pivot.latents[i + 1] - (a * x + b * eps_fn(x, schedule.timesteps[i]).to(x.dtype)))
        progress("correct", i + 1, schedule.steps)
    return torch.stack(offsets)  # (N, B, 4, h, w)


def invert_with(method: str, c: Conditioning, z0: torch.Tensor, schedule: Schedule,
                options: MethodOptions = MethodOptions(), progress: Progress = no_progress) -> MethodResult:
    """Invert z_0 (level N) to x_T (level 0) with `method`; see the table above."""
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")
    if method in ("ddim", "fixed-point"):
        traj = invert(c.eps_fn(), z0, schedule, method, options.fixed_point, lambda d, n: progress("invert", d, n))
        return MethodResult(traj.x_T, {}, traj.residuals, traj.network_calls)
    if method == "edict":
        x, y = edict_invert(c.eps_fn(), z0, schedule, options.edict_mix, lambda d, n: progress("invert", d, n))
        return MethodResult(x, {"y_T": y}, (float("nan"),) * schedule.steps, 2 * schedule.steps)
    pivot = _pivot(c, z0, schedule, options, progress)
    if method == "negative-prompt":
        return MethodResult(pivot.x_T, {}, pivot.residuals, pivot.network_calls)
    if method == "direct":
        offsets = _direct_offsets(c, pivot, schedule, progress)
        return MethodResult(pivot.x_T, {"offsets": offsets}, pivot.residuals, pivot.network_calls + schedule.steps)
    if c.scale == 1.0:  # w = 1 never evaluates the unconditional branch: nothing to optimise
        uncond = c.uncond.expand(z0.shape[0], *c.uncond.shape[1:])
        return MethodResult(pivot.x_T, {"uncond": uncond[None].repeat(schedule.steps, 1, 1, 1)}, pivot.residuals,
                            pivot.network_calls)
    nt = null_text_optimise(c.model_eps, c.cond, c.uncond, c.scale, pivot.latents, schedule, options.null_text,
                            lambda d, n: progress("null-text", d, n))
    return MethodResult(pivot.x_T, {"uncond": nt.uncond}, nt.losses, pivot.network_calls + nt.network_calls)


def replay_conditioning(method: str, c: Conditioning, extras: Mapping[str, torch.Tensor],
                        schedule: Schedule) -> Conditioning:
    """The conditioning a method regenerates with (its unconditional branch replaced where it says so)."""
    if method == "negative-prompt":
        return Conditioning(c.model_eps, c.cond, c.cond, c.scale)  # Miyake et al. 2023: ∅ := the source prompt
    if method == "null-text":
        per_step = dict(zip(schedule.timesteps, extras["uncond"].to(c.cond.device)))
        return _PerStepUncond(c.model_eps, c.cond, c.uncond, c.scale, per_step)
    return c


@dataclass(frozen=True)
class _PerStepUncond(Conditioning):
    per_step: Mapping[int, torch.Tensor] = field(default_factory=dict)  # timestep → (B, L, D)

    def eps_fn(self, scale: Optional[float] = None):
        return guided(self.model_eps, self.cond, self.per_step.__getitem__, self.scale if scale is None else scale)


def regenerate(method: str, c: Conditioning, x_T: torch.Tensor, extras: Mapping[str, torch.Tensor],
               schedule: Schedule, options: MethodOptions = MethodOptions(),
               callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Run the schedule forwards from x_T the way `method` replays its inversion; returns ẑ_0."""
    if method == "edict":
        x, _ = edict_sample(c.eps_fn(), x_T, extras["y_T"].to(x_T.device), schedule, options.edict_mix, callback)
        return x
    c = replay_conditioning(method, c, extras, schedule)
    offsets = extras.get("offsets") if method == "direct" else None
    return sample(c.eps_fn(), x_T, schedule, callback=callback, offsets=offsets)
