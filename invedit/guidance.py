"""Classifier-free guidance as a combinator: (conditional model, conditionings, scale) -> eps_fn.

Ho & Salimans 2022, eq. 6 written in ε: ε̃ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)).
w = 1 is the plain conditional model (one network call); w ≠ 1 batches the unconditional and the
conditional branch into one call of twice the batch. The unconditional conditioning may change per
timestep (null-text inversion's optimised embeddings): pass a callable `t -> embedding` for that.
"""
from __future__ import annotations

from typing import Callable, Union

import torch

from .ddim import EpsFn

CondEpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (x, t, cond (B,L,D)) -> ε
Uncond = Union[torch.Tensor, Callable[[int], torch.Tensor]]


def tile(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a batch of P along axis 0 to `batch` = R·P rows (prompt-major: the whole block R times)."""
    n = t.shape[0]
    if n == batch:
        return t
    if n == 0 or batch % n:
        raise ValueError(f"a batch of {n} cannot fill a batch of {batch} rows")
    return t.expand(batch, *t.shape[1:]) if n == 1 else t.repeat(batch // n, *([1] * (t.dim() - 1)))


def conditional(model_eps: CondEpsFn, cond: torch.Tensor) -> EpsFn:
    """The model under one fixed conditioning, as an eps_fn."""
    return lambda x, t: model_eps(x, t, tile(cond, x.shape[0]))


def guided(model_eps: CondEpsFn, cond: torch.Tensor, uncond: Uncond, scale: float) -> EpsFn:
    """Classifier-free guidance at scale w (Ho & Salimans 2022, eq. 6)."""
    if scale == 1.0:
        return conditional(model_eps, cond)
    uncond_at = uncond if callable(uncond) else (lambda t: uncond)

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        B = x.shape[0]
        both = torch.cat([tile(uncond_at(t), B), tile(cond, B)])  # (2B, L, D): [uncond rows, cond rows]
        eps_u, eps_c = model_eps(torch.cat([x, x]), t, both).chunk(2)
        return eps_u + scale * (eps_c - eps_u)

    return eps_fn
