"""Deterministic DDIM steps in both directions, and DDIM sampling (η ≥ 0).

Everything here is a pure function over tensors and an `eps_fn(x, t) -> ε` callable
(k-diffusion style): the model adapter and the guidance combinator build `eps_fn`.

With η = 0, a DDIM step (Song et al. 2021, eq. 12) is an Euler step of the probability-flow ODE
in the variables x/√ᾱ and σ = √((1 − ᾱ)/ᾱ) (DDIM eq. 14):

    x_to / √ᾱ_to = x_from / √ᾱ_from + (σ_to − σ_from) · ε

The same line serves sampling (ᾱ grows) and inversion (ᾱ shrinks); the ends are called
`_from` and `_to`, never prev/next.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .schedule import Schedule

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x (B,C,h,w), timestep) -> ε (B,C,h,w)
StepCallback = Callable[[int, int], None]  # (steps done, steps in all)
Hook = Callable[[int, torch.Tensor], torch.Tensor]  # (step i, x at level i + 1) -> x: changes a trajectory


def step_coefficients(alpha_from: float, alpha_to: float) -> tuple[float, float]:
    """(a, b) such that one DDIM step is x_to = a·x_from + b·ε (DDIM eq. 12, η = 0), in float64."""
    a = math.sqrt(alpha_to / alpha_from)
    sigma_from = math.sqrt((1 - alpha_from) / alpha_from)
    sigma_to = math.sqrt((1 - alpha_to) / alpha_to)
    b = math.sqrt(alpha_to) * (sigma_to - sigma_from)
    return a, b


def ddim_step(x_from: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """One deterministic DDIM step from level ᾱ_from to ᾱ_to, either direction (DDIM eq. 12, η = 0)."""
    a, b = step_coefficients(alpha_from, alpha_to)
    return a * x_from + b * eps


def predict_x0(x: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    """x̂_0 = (x − √(1 − ᾱ)·ε) / √ᾱ (DDIM eq. 12, first term)."""
    return (x - math.sqrt(1 - alpha) * eps) / math.sqrt(alpha)


def ddim_sigma(alpha_from: float, alpha_to: float, eta: float) -> float:
    """σ of DDIM eq. 16: η·√((1 − ᾱ_to)/(1 − ᾱ_from))·√(1 − ᾱ_from/ᾱ_to)."""
    if eta == 0.0 or alpha_from >= 1.0:
        return 0.0
    return eta * math.sqrt((1 - alpha_to) / (1 - alpha_from)) * math.sqrt(max(0.0, 1 - alpha_from / alpha_to))


def stochastic_step(x_from: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float, eta: float,
                    generator: torch.Generator) -> torch.Tensor:
    """DDIM eq. 12 with η > 0: x̂_0 re-noised along ε with part of the noise drawn fresh."""
    sigma = ddim_sigma(alpha_from, alpha_to, eta)
    x0 = predict_x0(x_from, eps, alpha_from)
    direction = math.sqrt(max(0.0, 1 - alpha_to - sigma**2)) * eps
    z = torch.randn(x_from.shape, generator=generator, device=generator.device, dtype=x_from.dtype)
    return math.sqrt(alpha_to) * x0 + direction + sigma * z.to(x_from.device)


def latent_dtype(x: torch.Tensor) -> torch.dtype:
    """Latent arithmetic runs in float32 even when the network runs in fp16/bf16 (float64 stays float64)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sample(eps_fn: EpsFn, x_T: torch.Tensor, schedule: Schedule, *, eta: float = 0.0,
           generator: Optional[torch.Generator] = None, start: int = 0,
           callback: Optional[StepCallback] = None, hook: Optional[Hook] = None) -> torch.Tensor:
    """Run the schedule forwards from level `start` (x_T at level 0) to the clean end.

    η = 0 is deterministic DDIM; η > 0 needs an explicit `generator` so a run can be repeated.
    `hook(i, x)`, when given, replaces x after step i (direct inversion's corrections, local blending).
    """
    if eta > 0 and generator is None:
        raise ValueError("stochastic sampling (eta > 0) needs an explicit torch.Generator")
    x = x_T.to(latent_dtype(x_T))
    for i in range(start, schedule.steps):
        alpha_from, alpha_to = schedule.step_alphas(i)
        eps = eps_fn(x, schedule.timesteps[i]).to(x.dtype)
        if eta > 0:
            x = stochastic_step(x, eps, alpha_from, alpha_to, eta, generator)
        else:
            x = ddim_step(x, eps, alpha_from, alpha_to)
        if hook is not None:
            x = hook(i, x)
        if callback is not None:
            callback(i + 1 - start, schedule.steps - start)
    return x


def compose_hooks(*hooks: Optional[Hook]) -> Optional[Hook]:
    """One hook that runs the given ones in order (None where none is given)."""
    chain = [h for h in hooks if h is not None]
    if not chain:
        return None
    if len(chain) == 1:
        return chain[0]

    def composed(i: int, x: torch.Tensor) -> torch.Tensor:
        for h in chain:
            x = h(i, x)
        return x

    return composed


def to_epsilon(output: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str) -> torch.Tensor:
    """Convert a network's output to ε, so the math only ever sees ε.

    v-prediction (Salimans & Ho 2022, §4): v = √ᾱ·ε − √(1 − ᾱ)·x_0, hence ε = √ᾱ·v + √(1 − ᾱ)·x.
    sample-prediction: ε = (x − √ᾱ·x̂_0) / √(1 − ᾱ).
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return math.sqrt(alpha) * output + math.sqrt(1 - alpha) * x
    if prediction_type == "sample":
        return (x - math.sqrt(alpha) * output) / math.sqrt(1 - alpha)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")
