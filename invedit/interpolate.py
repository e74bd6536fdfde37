"""Interpolation between inverted images: mix their noises and conditionings, regenerate the frames.

- `slerp` between noises x_T (DDIM, Song et al. 2021, §5.3; Shoemake 1985): Gaussian noise lives near
  a sphere of radius √d, which a straight line (`lerp`) cuts through, shrinking the norm mid-way and
  giving washed-out frames; slerp keeps the norm.
- `adain`: renormalise the mixed noise's per-channel mean and std to the mix of the endpoints' (the AdaIN
  fix of DiffMorpher, Zhang et al. 2024, eq. 5), so in-between frames start from noise that looks like
  the endpoints'.
- `uniform_weights`: place the mixing weights so consecutive frames are equally far apart (IMPUS,
  Yang et al. 2024 — perceptually uniform sampling), by inverting the cumulative frame distance of a
  first, evenly spaced pass.
Conditionings (text embeddings, null-text's per-step embeddings, direct inversion's offsets) are mixed
linearly, so each endpoint regenerates exactly its own reconstruction.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

MODES = ("slerp", "lerp")
SPACINGS = ("even", "uniform")


def lerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    return a if w == 0 else (b if w == 1 else (1 - w) * a + w * b)


def slerp(a: torch.Tensor, b: torch.Tensor, w: float, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation of each sample of a batch, flattened (falls back to lerp when nearly parallel)."""
    if w == 0 or w == 1:
        return a if w == 0 else b
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp(min=1e-30)
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    out = torch.where(cos[:, None].abs() > dot_threshold, (1 - w) * fa + w * fb,
                      (torch.sin((1 - w) * theta) * fa + torch.sin(w * theta) * fb) / torch.sin(theta).clamp(min=1e-30))
    return out.reshape(a.shape).to(a.dtype)


def adain(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Give x (B, C, h, w) the per-channel mean and std of the w-mix of a's and b's (DiffMorpher eq. 5)."""
    if w == 0 or w == 1:
        return x  # the endpoints keep their own noise exactly
    mean = lambda t: t.mean(dim=(2, 3), keepdim=True)  # noqa: E731
    std = lambda t: t.std(dim=(2, 3), keepdim=True).clamp(min=1e-8)  # noqa: E731
    target_mean, target_std = lerp(mean(a), mean(b), w), lerp(std(a), std(b), w)
    return (x - mean(x)) / std(x) * target_std + target_mean


def mix_noise(a: torch.Tensor, b: torch.Tensor, w: float, mode: str = "slerp", renormalise: bool = False):
    if mode not in MODES:
        raise ValueError(f"interpolation mode {mode!r} is not one of {MODES}")
    x = slerp(a, b, w) if mode == "slerp" else lerp(a, b, w)
    return adain(x, a, b, w) if renormalise else x


def mix_extras(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], w: float, mode: str,
               renormalise: bool, noises: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Mix the per-method tensors of two inversions: `noises` (EDICT's y_T) like x_T, the rest linearly."""
    if set(a) != set(b):
        raise ValueError(f"the inversions carry different tensors: {sorted(a)} vs {sorted(b)}")
    return {k: mix_noise(a[k], b[k], w, mode, renormalise) if k in noises else lerp(a[k], b[k], w) for k in a}


def stack_extras(frames: Sequence[Mapping[str, torch.Tensor]], per_step: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Batch the extras of several frames along their batch axis (axis 1 for the `per_step` (N, B, …) ones)."""
    return {k: torch.cat([f[k] for f in frames], 1 if k in per_step else 0) for k in frames[0]}


def rms_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two images in [0, 1] (the frame distance of the reports)."""
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def consecutive_distances(images: Sequence[np.ndarray]) -> list[float]:
    return [rms_distance(x, y) for x, y in zip(images, images[1:])]


def respace(weights: Sequence[float], distances: Sequence[float], frames: int) -> list[float]:
    """New weights at equal steps of cumulative distance (piecewise-linear inverse of arc length)."""
    arc = np.concatenate([[0.0], np.cumsum(distances)])
    if arc[-1] <= 0:
        return list(np.linspace(0, 1, frames))
    target = np.linspace(0, arc[-1], frames)
    new = np.interp(target, arc, np.asarray(weights, dtype=np.float64))
    new[0], new[-1] = 0.0, 1.0
    return [float(w) for w in new]


def uniform_weights(render: Callable[[Sequence[float]], list[np.ndarray]], frames: int, rounds: int = 1,
                    probe: int | None = None) -> tuple[list[float], list[np.ndarray]]:
    """Weights whose rendered frames are (nearly) equally far apart, and those frames.

    Each round renders at the current weights and moves them to equal steps of the cumulative frame
    distance; `probe` frames (default: `frames`) are used for the first estimate.
    """
    weights = list(np.linspace(0, 1, probe or frames))
    images = render(weights)
    for _ in range(rounds):
        weights = respace(weights, consecutive_distances(images), frames)
        images = render(weights)
    return weights, images


def spread(distances: Sequence[float]) -> float:
    """std ÷ mean of consecutive-frame distances: 0 is perfectly even, lower is smoother."""
    d = np.asarray(distances, dtype=np.float64)
    return float(d.std() / d.mean()) if d.size and d.mean() > 0 else math.nan
