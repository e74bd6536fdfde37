"""Null-text inversion (Mokady et al. 2022, "Null-text Inversion for Editing Real Images using Guided
Diffusion Models", Algorithm 1).

A guided sampling step drifts off the w = 1 inversion trajectory (the *pivot*). Step by step, from
the noise end, optimise the unconditional embedding ∅_i so that the guided step from the current
latent lands on the pivot's next latent; keep ∅_i, take the step, and start ∅_{i+1} from ∅_i. The
per-step embeddings are what a reconstruction (or an edit) must replay.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .ddim import StepCallback, step_coefficients
from .schedule import Schedule

CondEpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NullTextOptions:
    inner_steps: int = 10  # Adam steps per DDIM step at most (the paper's N)
    lr: float = 1e-2  # Adam learning rate at the first step, decayed linearly to half at the last
    tol: float = 1e-5  # stop a step's optimisation when the MSE to the pivot is below tol + i·tol_growth
    tol_growth: float = 2e-5  # the paper's code loosens the tolerance by this much per step

    def __post_init__(self) -> None:
        if self.inner_steps < 0 or self.lr <= 0 or self.tol < 0:
            raise ValueError(f"null-text needs inner_steps >= 0, lr > 0, tol >= 0; got {self}")


@dataclass(frozen=True)
class NullTextResult:
    uncond: torch.Tensor  # (N, B, L, D) the optimised unconditional embedding of each step and sample
    losses: tuple[float, ...]  # (N,) MSE to the pivot reached at each step
    network_calls: int  # forward calls (each optimisation step also runs one backward pass)


def _guided_step(model_eps: CondEpsFn, x, t, cond_eps, uncond, scale, a, b):
    eps_u = model_eps(x, t, uncond)
    return a * x + b * (eps_u + scale * (cond_eps - eps_u))  # Ho & Salimans 2022, eq. 6, then DDIM eq. 12


def null_text_optimise(model_eps: CondEpsFn, cond: torch.Tensor, uncond: torch.Tensor, scale: float,
                       pivot: Sequence[torch.Tensor], schedule: Schedule, options: NullTextOptions = NullTextOptions(),
                       callback: Optional[StepCallback] = None) -> NullTextResult:
    """Optimise per-step unconditional embeddings so guided sampling from pivot[0] follows `pivot`.

    `pivot` holds the latents of the w = 1 inversion at every level, x_T first (Trajectory.latents).
    """
    x = pivot[0]
    embeddings, losses, calls = [], [], 0
    cond = cond.expand(x.shape[0], *cond.shape[1:])
    uncond = uncond.expand(x.shape[0], *uncond.shape[1:])  # one embedding per sample, optimised together
    for i in range(schedule.steps):
        a, b = step_coefficients(*schedule.step_alphas(i))
        t, target = schedule.timesteps[i], pivot[i + 1]
        with torch.no_grad():
            cond_eps = model_eps(x, t, cond)
        u = uncond.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([u], lr=options.lr * (1 - 0.5 * i / schedule.steps))
        loss = None
        for _ in range(options.inner_steps):
            with torch.enable_grad():
                loss = torch.nn.functional.mse_loss(_guided_step(model_eps, x, t, cond_eps, u, scale, a, b), target)
                calls += 1
                if loss.item() < options.tol + i * options.tol_growth:
                    break
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
        uncond = u.detach()
        with torch.no_grad():
            x = _guided_step(model_eps, x, t, cond_eps, uncond, scale, a, b)
        calls += 2
        embeddings.append(uncond)
        losses.append(float(torch.nn.functional.mse_loss(x, target)))
        if callback is not None:
            callback(i + 1, schedule.steps)
    return NullTextResult(torch.stack(embeddings), tuple(losses), calls)
