"""Inversion methods behind one interface: a registry of plain records, `invert_with` and `replay`.

| method            | inverts at          | replays with                                 | network calls per step | exact? |
|-------------------|---------------------|----------------------------------------------|------------------------|--------|
| `ddim`            | w (plain DDIM)      | guided DDIM                                  | 1 (+1 to replay)       | no: first-order drift |
| `fixed-point`     | w, each step solved | guided DDIM                                  | ≤ max_iter + 1         | to the residual it reports |
| `negative-prompt` | 1 (pivot method)    | the source prompt as the negative, every row | pivot's                | as exact as its pivot at w = 1 |
| `null-text`       | 1, then optimise ∅  | per-step optimised ∅, every row              | pivot's + optimisation | to the optimisation's loss |
| `direct`          | 1 (pivot method)    | guided DDIM, reset onto the pivot each step  | pivot's + 1            | yes: closed loop |
| `edict`           | w, coupled (x, y)   | coupled sequences                            | 2                      | yes, to float rounding |
| `bdia`            | w, pairs of levels  | BDIA from the stored pair (x_T, x_1)         | 1 (N − 1 to replay)    | yes, to float rounding |

Every method is one `Method` record in `METHODS`; `reconstruct`, `interpolate` and `edit` all go through
`replay`, which takes a per-step hook `(i, x) -> x` for whatever else changes a trajectory (local blend).

Rows. A replay batch holds R rows per inverted image, laid out prompt-major: `[source rows (P images),
row 1 (P images), …]`; the first P rows replay the inversion itself (the *source branch*), the others
(edits) run the same sampler with other conditionings. What a method stores applies to every row, as in
its paper: null-text's per-step ∅ and negative-prompt's source embedding condition every row; direct
inversion's correction (Ju et al. 2023) resets the source rows onto the pivot each step and moves every
other row with them, keeping its own deviation from the source (closed loop, as PnP Inversion's code).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional

import torch

from .bdia import bdia_invert, bdia_sample, check_gamma
from .ddim import EpsFn, Hook, StepCallback, compose_hooks, sample, step_coefficients
from .edict import edict_invert, edict_sample
from .guidance import CondEpsFn, guided, tile
from .invert import FixedPointOptions, Trajectory, invert
from .nulltext import NullTextOptions, null_text_optimise
from .schedule import Schedule

PIVOTS = ("ddim", "fixed-point")
Progress = Callable[[str, int, int], None]  # (stage, steps done, steps in all)
Extras = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Conditioning:
    """A conditional model and the conditionings of classifier-free guidance."""

    model_eps: CondEpsFn
    cond: torch.Tensor  # (B, L, D) one prompt embedding per row, or (1, L, D) for every row
    uncond: torch.Tensor  # (1, L, D) the negative (usually empty) prompt's embedding
    scale: float  # guidance scale w
    source: Optional[torch.Tensor] = None  # (1, L, D) the inverted prompt, when `cond` holds other rows too
    per_step_uncond: Optional[Mapping[int, torch.Tensor]] = None  # timestep → (P, L, D): null-text's ∅_t

    def eps_fn(self, scale: Optional[float] = None):
        uncond = self.per_step_uncond.__getitem__ if self.per_step_uncond is not None else self.uncond
        return guided(self.model_eps, self.cond, uncond, self.scale if scale is None else scale)

    @property
    def source_cond(self) -> torch.Tensor:
        return self.cond[:1] if self.source is None else self.source


@dataclass(frozen=True)
class MethodOptions:
    fixed_point: FixedPointOptions = field(default_factory=FixedPointOptions)
    pivot: str = "ddim"  # how negative-prompt, null-text and direct invert at w = 1 (ddim: as their papers)
    null_text: NullTextOptions = field(default_factory=NullTextOptions)
    edict_mix: float = 0.93  # EDICT's p
    bdia_gamma: float = 1.0  # BDIA's γ (1: time-symmetric; below 1 the inversion amplifies rounding by 1/γ a step)

    def __post_init__(self) -> None:
        if self.pivot not in PIVOTS:
            raise ValueError(f"pivot {self.pivot!r} is not one of {PIVOTS}")
        check_gamma(self.bdia_gamma)


@dataclass(frozen=True)
class MethodResult:
    x_T: torch.Tensor  # (B, 4, h, w)
    extras: dict[str, torch.Tensor]  # what `replay` needs besides x_T
    residuals: tuple[float, ...]  # per step: the method's own measure of how exact the step is
    network_calls: int


def no_progress(stage: str, done: int, total: int) -> None:
    """The default Progress: report nothing."""


def counted(model_eps: CondEpsFn, counter: list[int]) -> CondEpsFn:
    """`model_eps` that adds 1 to counter[0] per network call (a call carries the whole batch)."""
    def eps(x, t, cond):
        counter[0] += 1
        return model_eps(x, t, cond)

    return eps


# --- inverting ----------------------------------------------------------------------------------------
def _invert_plain(c: Conditioning, z0, schedule, options: MethodOptions, progress: Progress, name: str) -> MethodResult:
    traj = invert(c.eps_fn(), z0, schedule, name, options.fixed_point, lambda d, n: progress("invert", d, n))
    return MethodResult(traj.x_T, {}, traj.residuals, traj.network_calls)


def _pivot(c: Conditioning, z0, schedule, options: MethodOptions, progress: Progress) -> Trajectory:
    """The w = 1 inversion that negative-prompt, null-text and direct start from."""
    return invert(c.eps_fn(1.0), z0, schedule, options.pivot, options.fixed_point,
                  callback=lambda d, n: progress("invert", d, n))


def _invert_negative(c, z0, schedule, options, progress) -> MethodResult:
    pivot = _pivot(c, z0, schedule, options, progress)
    return MethodResult(pivot.x_T, {}, pivot.residuals, pivot.network_calls)


def _invert_null_text(c, z0, schedule, options, progress) -> MethodResult:
    pivot = _pivot(c, z0, schedule, options, progress)
    if c.scale == 1.0:  # w = 1 never evaluates the unconditional branch: nothing to optimise
        uncond = c.uncond.expand(z0.shape[0], *c.uncond.shape[1:])
        return MethodResult(pivot.x_T, {"uncond": uncond[None].repeat(schedule.steps, 1, 1, 1)}, pivot.residuals,
                            pivot.network_calls)
    nt = null_text_optimise(c.model_eps, c.cond, c.uncond, c.scale, pivot.latents, schedule, options.null_text,
                            lambda d, n: progress("null-text", d, n))
    return MethodResult(pivot.x_T, {"uncond": nt.uncond}, nt.losses, pivot.network_calls + nt.network_calls)


def _invert_direct(c, z0, schedule, options, progress) -> MethodResult:
    """Ju et al. 2023 (PnP Inversion), Algorithm 1: keep the pivot trajectory, and the gap between the guided
    step from each pivot latent and the next pivot latent (the open-loop correction, used when frames mix)."""
    pivot = _pivot(c, z0, schedule, options, progress)
    eps_fn, offsets = c.eps_fn(), []
    for i in range(schedule.steps):
        a, b = step_coefficients(*schedule.step_alphas(i))
        x = pivot.latents[i]
        offsets.append(pivot.latents[i + 1] - (a * x + b * eps_fn(x, schedule.timesteps[i]).to(x.dtype)))
        progress("correct", i + 1, schedule.steps)
    extras = {"offsets": torch.stack(offsets), "pivot": torch.stack(pivot.latents[1:])}  # (N, B, 4, h, w) each
    return MethodResult(pivot.x_T, extras, pivot.residuals, pivot.network_calls + schedule.steps)


def _invert_edict(c, z0, schedule, options, progress) -> MethodResult:
    x, y = edict_invert(c.eps_fn(), z0, schedule, options.edict_mix, lambda d, n: progress("invert", d, n))
    return MethodResult(x, {"y_T": y}, (float("nan"),) * schedule.steps, 2 * schedule.steps)


def _invert_bdia(c, z0, schedule, options, progress) -> MethodResult:
    x_T, x_1 = bdia_invert(c.eps_fn(), z0, schedule, options.bdia_gamma, lambda d, n: progress("invert", d, n))
    return MethodResult(x_T, {"x_1": x_1}, (float("nan"),) * schedule.steps, schedule.steps)


# --- replaying ----------------------------------------------------------------------------------------
def _same(c: Conditioning, extras: Extras, schedule: Schedule) -> Conditioning:
    return c


def _negative_uncond(c: Conditioning, extras: Extras, schedule: Schedule) -> Conditioning:
    return replace(c, uncond=c.source_cond)  # Miyake et al. 2023: ∅ := the source prompt, for every row


def _null_text_uncond(c: Conditioning, extras: Extras, schedule: Schedule) -> Conditioning:
    return replace(c, per_step_uncond=dict(zip(schedule.timesteps, extras["uncond"].to(c.cond.device))))


def _no_hook(extras: Extras) -> Optional[Hook]:
    return None


def _direct_hook(extras: Extras) -> Optional[Hook]:
    """Closed loop when the pivot is stored: source rows := pivot_{i+1}, every other row keeps its deviation
    from the source rows' step. Open loop (the recorded offsets added) for mixed frames that have no pivot."""
    if "pivot" not in extras:
        offsets = extras["offsets"]
        return lambda i, x: x + tile(offsets[i].to(x.device, x.dtype), x.shape[0])

    pivot = extras["pivot"]

    def reset(i: int, x: torch.Tensor) -> torch.Tensor:
        p = pivot[i].to(x.device, x.dtype)  # (P, 4, h, w)
        rows = x.view(-1, *p.shape)  # (R, P, 4, h, w), prompt-major
        return (p + (rows - rows[:1])).view_as(x)  # row 0: exactly the pivot

    return reset


Sampler = Callable[[EpsFn, torch.Tensor, Extras, Schedule, MethodOptions, Optional[StepCallback], Optional[Hook]],
                   torch.Tensor]  # (eps_fn, x_T rows, extras, schedule, options, callback, hook) -> ẑ_0


def _ddim_sampler(eps_fn, x_T, extras, schedule, options, callback, hook) -> torch.Tensor:
    return sample(eps_fn, x_T, schedule, callback=callback, hook=hook)


def _edict_sampler(eps_fn, x_T, extras, schedule, options, callback, hook) -> torch.Tensor:
    y_T = tile(extras["y_T"].to(x_T.device), x_T.shape[0])
    return edict_sample(eps_fn, x_T, y_T, schedule, options.edict_mix, callback, hook)[0]


def _bdia_sampler(eps_fn, x_T, extras, schedule, options, callback, hook) -> torch.Tensor:
    """The stored pair (x_T, x_1) with the source rows' closed loop. Interpolation frames come with both inversions
    in the batch and a `mix` of their corrections (`morph`); without x_1 at all, plain DDIM from the noise."""
    if "x_1" not in extras:
        return sample(eps_fn, x_T, schedule, callback=callback, hook=hook)
    if "mix" in extras:  # interpolation frames: x_1 for every row, the first rows the two inversions themselves
        return bdia_sample(eps_fn, x_T, extras["x_1"].to(x_T.device), schedule, options.bdia_gamma, callback, hook,
                           mix=extras["mix"].to(x_T.device))
    x_1 = tile(extras["x_1"].to(x_T.device), x_T.shape[0])
    return bdia_sample(eps_fn, x_T, x_1, schedule, options.bdia_gamma, callback, hook, sources=extras["x_1"].shape[0])


@dataclass(frozen=True)
class Method:
    """One inversion method: how it inverts, what it stores, how it replays."""

    name: str
    invert: Callable[..., MethodResult]  # (c, z0, schedule, options, progress) -> MethodResult
    calls_per_step: str  # network calls per step of the inversion, for help texts and reports
    conditioning: Callable[[Conditioning, Extras, Schedule], Conditioning] = _same  # the replay's conditioning
    hook: Callable[[Extras], Optional[Hook]] = _no_hook  # what corrects the replay after each step
    sampler: Sampler = _ddim_sampler  # how the replay runs the schedule (EDICT's coupled pair, BDIA's pairs of levels)
    per_step: tuple[str, ...] = ()  # extras shaped (N, P, …): batched along axis 1
    noises: tuple[str, ...] = ()  # extras that are noises: interpolated like x_T
    anchors: tuple[str, ...] = ()  # extras that only the inversion's own trajectory can use: dropped when mixed
    requires: tuple[str, ...] = ()  # extras a replay cannot do without
    frames_with_ends: bool = False  # interpolation replays both inversions beside its frames (extras "x_1", "mix")
    calls: Callable[[int, MethodOptions], tuple[int, int]] = lambda n, o: (n, n)  # (inversion at most, replay)


def _pivot_calls(n: int, o: MethodOptions) -> int:
    return n * (o.fixed_point.max_iter + 1) if o.pivot == "fixed-point" else n


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ddim", lambda *a: _invert_plain(*a, name="ddim"), "1"),
    Method("fixed-point", lambda *a: _invert_plain(*a, name="fixed-point"), "≤ max_iter + 1",
           calls=lambda n, o: (n * (o.fixed_point.max_iter + 1), n)),
    Method("negative-prompt", _invert_negative, "the pivot's", conditioning=_negative_uncond,
           calls=lambda n, o: (_pivot_calls(n, o), n)),
    Method("null-text", _invert_null_text, "the pivot's + ≤ null_text_steps + 2", conditioning=_null_text_uncond,
           per_step=("uncond",), requires=("uncond",),
           calls=lambda n, o: (_pivot_calls(n, o) + n * (o.null_text.inner_steps + 2), n)),
    Method("direct", _invert_direct, "the pivot's + 1", hook=_direct_hook, per_step=("offsets", "pivot"),
           anchors=("pivot",), requires=("offsets",), calls=lambda n, o: (_pivot_calls(n, o) + n, n)),
    Method("edict", _invert_edict, "2", sampler=_edict_sampler, noises=("y_T",), requires=("y_T",),
           calls=lambda n, o: (2 * n, 2 * n)),
    Method("bdia", _invert_bdia, "1", sampler=_bdia_sampler, noises=("x_1",), anchors=("x_1",), requires=("x_1",),
           calls=lambda n, o: (n, n - 1), frames_with_ends=True),
)}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown inversion method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def invert_with(name: str, c: Conditioning, z0: torch.Tensor, schedule: Schedule,
                options: MethodOptions = MethodOptions(), progress: Progress = no_progress) -> MethodResult:
    """Invert z_0 (level N) to x_T (level 0) with method `name`; see the table above."""
    return method(name).invert(c, z0, schedule, options, progress)


def replay(name: str, c: Conditioning, x_T: torch.Tensor, extras: Extras, schedule: Schedule,
           options: MethodOptions = MethodOptions(), *, hook: Optional[Hook] = None,
           callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Run the schedule forwards from x_T (R·P rows, prompt-major) the way method `name` replays; returns ẑ_0.

    `extras` are the method's tensors for the P inverted images; they apply to every row (see the module
    docstring). `hook(i, x)` runs after the method's own correction of step i.
    """
    m = method(name)
    c = m.conditioning(c, extras, schedule)
    return m.sampler(c.eps_fn(), x_T, extras, schedule, options, callback, compose_hooks(m.hook(extras), hook))
