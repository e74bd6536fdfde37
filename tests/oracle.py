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
