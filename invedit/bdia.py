"""BDIA: exact inversion at one network call per step (Zhang, Lewis & Kleijn, "Exact Diffusion Inversion via
Bi-directional Integration Approximation", ECCV 2024).

At level k (x_T is level 0) one ε = ε(x_k, t_k) gives two DDIM moves: forwards to level k + 1 and
backwards to level k − 1 (`ddim.step_coefficients` in both directions). BDIA replaces the DDIM update
x_{k+1} = x_k + Δ_fwd by

    x_{k+1} = γ·(x_{k−1} − x_k − Δ_back) + x_k + Δ_fwd          (BDIA-DDIM, γ ∈ (0, 1])
            = γ·x_{k−1} + (a_fwd − γ·a_back)·x_k + (b_fwd − γ·b_back)·ε

where x_{k−1} − x_k − Δ_back is what the last step overshot (zero on an exact ODE path). The update is
affine in x_{k−1} with x_k and ε(x_k) known on both sides, so it runs backwards exactly:

    x_{k−1} = (x_{k+1} − (a_fwd − γ·a_back)·x_k − (b_fwd − γ·b_back)·ε) / γ

The state is a pair of levels. Inversion starts from (z_0, one plain DDIM inversion step) and ends at
(x_T, x_1); the replay starts from that stored pair, so the first sampling step costs no call and every
step after it one: N calls to invert, N − 1 to replay, exact to float rounding under any guidance.

γ = 1 (the default) is the time-symmetric update: run backwards, its second root is −1/γ, so γ < 1
amplifies rounding and the start's mismatch by (1/γ) per step in the inversion (γ = 0.5 over 50 steps:
2⁵⁰). γ → 0 is plain DDIM, which cannot be inverted.

Rows that are not the inverted trajectory (edits under other prompts) must not run BDIA themselves: at
γ = 1 its second root sits on the unit circle, and a contracting ODE (sampling under guidance is one)
pushes it outside, so any departure from the stored pair grows into an even/odd oscillation (measured on
the shipped model: garbled edits). They take a DDIM step plus the source rows' BDIA correction
γ·(x_{k−1} − x_k − Δ_back) — the closed loop of direct inversion (Ju et al. 2023) with BDIA's exact
trajectory as the pivot, at no extra network call; a target equal to the source is the source bit for bit.
"""
from __future__ import annotations

from typing import Optional

import torch

from .ddim import EpsFn, Hook, StepCallback, latent_dtype, step_coefficients
from .guidance import tile
from .schedule import Schedule


def check_gamma(gamma: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"BDIA's gamma must be in (0, 1], got {gamma}")


def _moves(schedule: Schedule, k: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The DDIM coefficients (a, b) from level k forwards to k + 1 and backwards to k − 1, for 1 ≤ k < N."""
    return (step_coefficients(schedule.alphas[k], schedule.alphas[k + 1]),
            step_coefficients(schedule.alphas[k], schedule.alphas[k - 1]))


def bdia_sample(eps_fn: EpsFn, x_T: torch.Tensor, x_1: torch.Tensor, schedule: Schedule, gamma: float = 1.0,
                callback: Optional[StepCallback] = None, hook: Optional[Hook] = None,
                sources: Optional[int] = None, mix: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run the schedule forwards from the pair (level 0, level 1) to the clean end; returns level N.

    The first `sources` rows (all when None) run BDIA; the rows after them, laid out prompt-major in groups of
    `sources`, take a DDIM step plus their source row's correction (see the module docstring). With `mix`
    (R, P), row r takes Σ_p mix[r, p]·correction_p of the first P rows instead (interpolation frames between
    two inversions replayed in the same batch: rows [1, 0] and [0, 1] are the inversions themselves).
    `hook(i, x)` replaces the level i + 1 just reached (step 0 reaches the stored x_1)."""
    check_gamma(gamma)
    dtype = latent_dtype(x_T)
    prev, x = x_T.to(dtype), x_1.to(dtype)
    N = schedule.steps
    P = mix.shape[1] if mix is not None else x_T.shape[0] if sources is None else sources
    for k in range(N):
        if k > 0:
            (a_fwd, b_fwd), (a_back, b_back) = _moves(schedule, k)
            eps = eps_fn(x, schedule.timesteps[k]).to(dtype)
            correction = gamma * (prev[:P] - (a_back * x[:P] + b_back * eps[:P]))  # γ·(x_{k−1} − x_k − Δ_back)
            spread = tile(correction, x.shape[0]) if mix is None else \
                torch.einsum("rp,p...->r...", mix.to(dtype), correction)
            prev, x = x, a_fwd * x + b_fwd * eps + spread
        if hook is not None:
            x = hook(k, x)
        if callback is not None:
            callback(k + 1, N)
    return x


def bdia_invert(eps_fn: EpsFn, z0: torch.Tensor, schedule: Schedule, gamma: float = 1.0,
                callback: Optional[StepCallback] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert z_0 (level N) to the pair (x_T, x_1) that `bdia_sample` regenerates it from: N network calls."""
    check_gamma(gamma)
    N = schedule.steps
    nxt = z0.to(latent_dtype(z0))  # level k + 1
    a, b = step_coefficients(*schedule.step_alphas(N - 1))
    x = (nxt - b * eps_fn(nxt, schedule.timesteps[N - 1]).to(nxt.dtype)) / a  # level N − 1: plain DDIM inversion
    if callback is not None:
        callback(1, N)
    for done, k in enumerate(range(N - 1, 0, -1), start=2):  # from the pair (k, k + 1) to level k − 1
        (a_fwd, b_fwd), (a_back, b_back) = _moves(schedule, k)
        eps = eps_fn(x, schedule.timesteps[k]).to(x.dtype)
        nxt, x = x, (nxt - (a_fwd * x + b_fwd * eps)) / gamma + (a_back * x + b_back * eps)  # the step, undone
        if callback is not None:
            callback(done, N)
    return x, nxt  # (level 0, level 1); with N = 1, level 1 is z_0 itself
