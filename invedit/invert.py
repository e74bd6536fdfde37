"""DDIM inversion: from a clean latent z_0 back to the noise x_T that regenerates it.

Sampling step i maps level i to level i + 1 with x_{i+1} = a·x_i + b·ε(x_i, t_i) (see `ddim.py`).
Its exact inverse solves x_i = (x_{i+1} − b·ε(x_i, t_i)) / a, a fixed-point problem in x_i.

- `ddim` (plain DDIM inversion, the baseline of diffusers' DDIMInverseScheduler and of
  prompt-to-prompt): ε is taken at the start of the backward step, ε(x_{i+1}, t_i) ≈ ε(x_i, t_i),
  a first-order approximation that drifts.
- `fixed-point`: start from the plain step and iterate x ← (x_{i+1} − b·ε(x, t_i)) / a until the
  sampling step maps x back onto x_{i+1} (Pan et al. 2023, "Effective Real Image Editing with
  Accelerated Iterative Diffusion Inversion"; Garibi et al. 2024, ReNoise). The residual reached at
  each step is recorded: it says how exact the inversion is, and whether the iteration converged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .ddim import EpsFn, StepCallback, latent_dtype, step_coefficients
from .schedule import Schedule

METHODS = ("ddim", "fixed-point")


@dataclass(frozen=True)
class FixedPointOptions:
    tol: float = 1e-6  # stop when ‖step(x) − x_{i+1}‖ / ‖x_{i+1}‖ falls below this
    max_iter: int = 20  # iterations per step at most (each costs one network call)
    anderson: int = 2  # Anderson acceleration memory (0: plain Picard iteration x ← g(x))

    def __post_init__(self) -> None:
        if self.tol < 0 or self.max_iter < 1 or self.anderson < 0:
            raise ValueError(f"fixed-point needs tol >= 0, max_iter >= 1 and anderson >= 0, got "
                             f"{self.tol}, {self.max_iter}, {self.anderson}")


@dataclass(frozen=True)
class Trajectory:
    """The result of inverting a latent: x_T plus what the method measured on the way."""

    x_T: torch.Tensor  # (B, C, h, w) noise at level 0
    latents: tuple[torch.Tensor, ...]  # (N+1,) x at each level, level 0 first (x_T) … level N (z_0)
    residuals: tuple[float, ...]  # (N,) relative residual of the sampling step reached at each level
    iterations: tuple[int, ...]  # (N,) network calls spent on each step
    network_calls: int

    @property
    def max_residual(self) -> float:
        return max(self.residuals) if self.residuals else 0.0


def _relative_each(diff: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """‖diff_b‖ / ‖ref_b‖ for each sample b of a batch: (B,)."""
    return diff.flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp(min=1e-12)


def _relative(diff: torch.Tensor, ref: torch.Tensor) -> float:
    """max over the batch of ‖diff‖ / ‖ref‖."""
    return float(_relative_each(diff, ref).max())


def _anderson(history: list[tuple[torch.Tensor, torch.Tensor]], g: torch.Tensor) -> torch.Tensor:
    """Anderson acceleration (Walker & Ni 2011, type II): the next iterate from the last m + 1 residuals,
    for each sample of the batch on its own (one least-squares problem per image).

    With f_k = g(x_k) − x_k, choose γ minimising ‖f_k − ΔF·γ‖ and step to g(x_k) − (ΔX + ΔF)·γ.
    With one entry (or m = 0) it is the plain iteration x ← g(x).
    """
    if len(history) < 2:
        return g
    B = g.shape[0]
    xs = torch.stack([h[0].reshape(B, -1) for h in history], 2).double()  # (B, n, m+1)
    fs = torch.stack([h[1].reshape(B, -1) for h in history], 2).double()
    dx, df = xs[..., 1:] - xs[..., :-1], fs[..., 1:] - fs[..., :-1]  # (B, n, m)
    gamma = torch.linalg.lstsq(df, fs[..., -1:]).solution  # (B, m, 1)
    return (g.reshape(B, -1).double() - ((dx + df) @ gamma).squeeze(2)).reshape(g.shape).to(g.dtype)


def invert_step(eps_fn: EpsFn, x_to: torch.Tensor, t: int, alpha_from: float, alpha_to: float,
                method: str, options: FixedPointOptions) -> tuple[torch.Tensor, float, int]:
    """Invert sampling step (level ᾱ_from → ᾱ_to, label t): find x_from with step(x_from) = x_to.

    Each image of a batch is iterated on its own and stops at its own tolerance (a converged image is kept
    as it was while the others go on), so a batch gives what one-at-a-time runs give.
    Returns (x_from, largest relative residual of the sampling step over the batch, network calls).
    """
    a, b = step_coefficients(alpha_from, alpha_to)
    eps = eps_fn(x_to, t).to(x_to.dtype)  # plain DDIM inversion: ε at the start of the backward step
    x = (x_to - b * eps) / a  # DDIM eq. 12, reversed
    calls = 1
    if method == "ddim":
        return x, float("nan"), calls  # unknown for plain DDIM until measured (one more call)
    B = x.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    result, final = x.clone(), torch.full((B,), float("inf"), dtype=torch.float64, device=x.device)
    best_r, best_x = final.clone(), x.clone()
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x_k, g(x_k) − x_k) for Anderson
    for _ in range(options.max_iter):
        eps = eps_fn(x, t).to(x.dtype)
        g = (x_to - b * eps) / a  # g(x): the fixed-point map, DDIM eq. 12 reversed with ε(x)
        calls += 1
        # step(x) − x_to = a·x + b·ε(x) − x_to = a·(x − g(x)): the residual of x comes for free
        r = abs(a) * _relative_each(x - g, x_to).double()  # (B,)
        now = (r <= options.tol) & ~done  # within tol/a of x: keep g, one iteration further on
        result[now], final[now], done = g[now], r[now], done | now
        better = (r < best_r) & ~done
        best_r, best_x[better] = torch.where(better, r, best_r), x[better]
        if bool(done.all()):
            break
        history = (history + [(x, g - x)])[-(options.anderson + 1):]
        x = torch.where(done.view(-1, *[1] * (x.dim() - 1)), x, _anderson(history, g))
    # not converged (a rough network or a large step): the best iterate seen, with its true residual
    result[~done], final[~done] = best_x[~done], best_r[~done]
    return result, float(final.max()), calls


def invert(eps_fn: EpsFn, z0: torch.Tensor, schedule: Schedule, method: str = "ddim",
           options: Optional[FixedPointOptions] = None, callback: Optional[StepCallback] = None,
           measure_residuals: bool = False) -> Trajectory:
    """Walk `schedule` backwards from z_0 (level N) to x_T (level 0).

    `measure_residuals` spends one extra network call per step of plain DDIM inversion to record how
    far its sampling step lands from where it started (fixed-point always records it).
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {METHODS}")
    options = options or FixedPointOptions()
    x = z0.to(latent_dtype(z0))
    latents, residuals, iterations = [x], [], []
    for k, i in enumerate(reversed(range(schedule.steps))):
        alpha_from, alpha_to = schedule.step_alphas(i)
        t = schedule.timesteps[i]
        x_to = x
        x, residual, calls = invert_step(eps_fn, x_to, t, alpha_from, alpha_to, method, options)
        if method == "ddim" and measure_residuals:
            a, b = step_coefficients(alpha_from, alpha_to)
            residual = _relative(a * x + b * eps_fn(x, t).to(x.dtype) - x_to, x_to)
            calls += 1
        latents.append(x)
        residuals.append(residual)
        iterations.append(calls)
        if callback is not None:
            callback(k + 1, schedule.steps)
    return Trajectory(x, tuple(reversed(latents)), tuple(reversed(residuals)), tuple(reversed(iterations)),
                      sum(iterations))
