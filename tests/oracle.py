"""The analytic oracle: Gaussian data N(m, s²·I), whose ideal ε and DDIM ODE have closed forms.

For x_t = √ᾱ·x_0 + √(1 − ᾱ)·ε with x_0 ~ N(m, s²I), the marginal is N(√ᾱ·m, v(ᾱ)·I) with
v(ᾱ) = ᾱ·s² + 1 − ᾱ, so the ideal noise prediction is E[ε | x_t] = √(1 − ᾱ)·(x − √ᾱ·m) / v(ᾱ), and the
probability-flow ODE keeps (x − √ᾱ·m) / √v(ᾱ) constant: an exact map between any two levels.
"""
from __future__ import annotations

import math

import torch

from invedit.schedule import Schedule


class GaussianOracle:
    def __init__(self, schedule: Schedule, mean: float = 0.5, std: float = 0.3):
        self.schedule, self.m, self.s = schedule, mean, std
        self.alpha_of = dict(zip(schedule.timesteps, schedule.alphas))

    def v(self, alpha: float) -> float:
        return alpha * self.s**2 + 1 - alpha

    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alpha_of[t]
        return math.sqrt(1 - a) * (x - math.sqrt(a) * self.m) / self.v(a)

    def flow(self, x: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
        """The exact ODE solution from level ᾱ_from to level ᾱ_to."""
        z = (x - math.sqrt(alpha_from) * self.m) / math.sqrt(self.v(alpha_from))
        return math.sqrt(alpha_to) * self.m + math.sqrt(self.v(alpha_to)) * z


class ConditionalOracle:
    """Gaussian data whose mean is the mean of the row's conditioning embedding: a conditional model with a
    closed form. ε is linear in the mean, so classifier-free guidance at scale w is this oracle with the mean
    m_∅ + w·(m_c − m_∅) (`at`), and every inversion method has a known target."""

    def __init__(self, schedule: Schedule, std: float = 0.3):
        self.schedule, self.s = schedule, std
        self.alpha_of = dict(zip(schedule.timesteps, schedule.alphas))

    def eps(self, x: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        a = self.alpha_of[t]
        m = cond.mean(dim=(1, 2)).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)  # (B, 1, 1, 1) one mean per row
        return math.sqrt(1 - a) * (x - math.sqrt(a) * m) / (a * self.s**2 + 1 - a)

    def at(self, mean: float) -> GaussianOracle:
        """The unconditional oracle of one mean (the guided model's)."""
        return GaussianOracle(self.schedule, mean, self.s)
