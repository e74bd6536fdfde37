"""Prompt edits of an inverted image: the source branch replays the inversion, target branches take its attention.

One batch of R = 1 + K rows regenerates from the inversion's x_T (Prompt-to-Prompt, Hertz et al. 2022):
row 0 under the source prompt replays the inversion the way its method does (`methods.replay`: direct
inversion's closed loop, null-text's per-step ∅, …, applied to every row), rows 1…K under the target
prompts take the source row's attention (`control.EditController`). A per-step hook does what changes
the latents themselves: `strength` (targets follow the source until the last fraction of steps, as
SDEdit starts late) and local blending (outside the mask of the blend words a target is the source).
After decoding, `composite` may put the reconstruction back where an edit changed the pixels only a little
(`EditSettings.composite`): a post-process in pixel space, not part of the diffusion edit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .control import MODES, EditController, EditPlan, blend_mask, local_blend, refine_mapper
from .methods import Conditioning, counted, MethodOptions, Progress, no_progress, replay
from .schedule import Schedule
from .store import Inversion


@dataclass(frozen=True)
class EditSettings:
    """How an edit uses the source branch. Defaults: the best of the sweep in docs/edit-tuning.md (shipped model)."""

    cross_replace: float = 0.8  # fraction of steps (from the noisy end) whose cross-attention maps are injected
    self_replace: float = 0.0  # fraction of steps whose self-attention maps are injected (P2P: 0.2–0.6 on SD)
    blend: tuple[str, ...] = ()  # local blend words: outside their attention mask a target keeps the source latent
    keep: tuple[str, ...] = ()  # words whose attention mask is kept from the source (alone: blend everywhere else)
    blend_threshold: float = 0.3  # mask = normalised word attention above this (P2P's LocalBlend)
    blend_dilate: int = 1  # max-pool radius of the mask, in attention cells (P2P: 1)
    blend_start: float = 0.0  # fraction of steps before blending starts (P2P's null-text notebook: 0.2)
    reweight: tuple[tuple[str, float], ...] = ()  # (word, scale): targets' attention to the word × scale
    strength: float = 1.0  # fraction of the last steps that edit; before them targets follow the source
    mode: str = "auto"  # replace (word swap, equal token counts) | refine (aligned tokens) | auto
    control: bool = True  # False: no attention control, targets simply regenerate from x_T (a baseline)
    composite: float = 0.3  # pixel composite: reconstruction where an edit changed < this × its largest change; 0 off

    def __post_init__(self) -> None:
        for name in ("cross_replace", "self_replace", "blend_start", "strength"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be a fraction between 0 and 1, got {value}")
        if not 0.0 <= self.composite < 1.0:
            raise ValueError(f"composite must be a fraction in [0, 1) (0: off), got {self.composite}")
        if not 0.0 <= self.blend_threshold < 1.0 or self.blend_dilate < 0:
            raise ValueError(f"blend threshold must be in [0, 1) and dilation >= 0, got {self.blend_threshold}, "
                             f"{self.blend_dilate}")
        if self.mode not in ("auto", *MODES):
            raise ValueError(f"mode {self.mode!r} is not one of auto, {', '.join(MODES)}")
        for word, scale in self.reweight:
            if not (scale >= 0 and scale != float("inf")):
                raise ValueError(f"reweight scale of {word!r} must be a finite number >= 0, got {scale}")


@dataclass(frozen=True)
class EditRun:
    """What one edit batch produced."""

    latents: torch.Tensor  # (R, 4, h, w) ẑ_0 of every row; row 0 is the source branch
    mask: Optional[torch.Tensor]  # (K, h, w) the last local-blend mask of each target, or None
    maps: Optional[torch.Tensor]  # (L, h', w') the source row's cross-attention, summed over steps and layers
    mode: str  # the alignment used: replace | refine
    network_calls: int  # UNet calls of the replay (each on the whole batch)


def choose_mode(model, source: str, targets: Sequence[str], mode: str) -> str:
    """replace when every target has the source's token count, else refine; a forced replace is checked."""
    n = len(model.token_ids(source))
    counts = {t: len(model.token_ids(t)) for t in targets}
    if mode == "replace":
        bad = [f"{t!r} ({k} tokens)" for t, k in counts.items() if k != n]
        if bad:
            raise ValueError(f"--mode replace swaps words token for token, but the source {source!r} has {n} tokens "
                             f"and {', '.join(bad)} differ; use --mode refine (or auto) for added or removed words")
        return mode
    if mode == "refine":
        return mode
    return "replace" if all(k == n for k in counts.values()) else "refine"


def word_weights(model, prompts: Sequence[str], words: Sequence[str], what: str,
                 rows: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(len(prompts), L): 1 at the tokens of `words` in each prompt. Every word must appear in one of them."""
    L = model.tokenizer.model_max_length
    weights = torch.zeros(len(prompts), L)
    for word in words:
        found = False
        for r, prompt in enumerate(prompts):
            positions = model.word_positions(prompt, word)
            weights[r, positions] = 1.0
            found = found or (bool(positions) and (rows is None or r in rows))
        if not found:
            raise ValueError(f"{what} word {word!r} is not in the prompts: {' | '.join(prompts)}")
    return weights


def make_plan(model, prompts: Sequence[str], schedule: Schedule, settings: EditSettings) -> EditPlan:
    """The attention plan of an edit of prompts[0] into prompts[1:]."""
    L, N = model.tokenizer.model_max_length, schedule.steps
    mode = choose_mode(model, prompts[0], prompts[1:], settings.mode)
    source_ids = model.token_ids(prompts[0])
    mappers, alphas = [], []
    for target in prompts[1:]:
        if mode == "replace":
            mappers.append(torch.arange(L))
            alphas.append(torch.ones(L))
        else:
            mapper, alpha = refine_mapper(source_ids, model.token_ids(target), L)
            mappers.append(mapper)
            alphas.append(alpha)
    equalizer = None
    if settings.reweight:
        equalizer = torch.ones(len(prompts) - 1, L)
        for word, scale in settings.reweight:
            hits = word_weights(model, prompts, [word], "reweight", rows=range(1, len(prompts)))[1:]
            equalizer = torch.where(hits > 0, torch.full_like(equalizer, scale), equalizer)
    dev = model.device
    return EditPlan(rows=len(prompts), steps={t: i for i, t in enumerate(schedule.timesteps)},
                    cross_until=round(settings.cross_replace * N) if settings.control else 0,
                    self_until=round(settings.self_replace * N) if settings.control else 0, mode=mode,
                    mapper=torch.stack(mappers).to(dev), alphas=torch.stack(alphas).to(dev),
                    equalizer=None if equalizer is None else equalizer.to(dev))


class _Hook:
    """strength, then local blend, after each step; remembers the last blend mask."""

    def __init__(self, controller: EditController, schedule: Schedule, settings: EditSettings,
                 blend: Optional[torch.Tensor], keep: Optional[torch.Tensor], latent_hw: tuple[int, int]):
        self.controller, self.schedule, self.s, self.hw = controller, schedule, settings, latent_hw
        self.blend, self.keep = blend, keep
        N = schedule.steps
        self.follow_until = round((1 - settings.strength) * N)  # targets := source after steps i < this
        self.blend_from = round(settings.blend_start * N)
        self.mask: Optional[torch.Tensor] = None

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i < self.follow_until:
            return x[:1].expand_as(x).clone()
        if (self.blend is None and self.keep is None) or i < self.blend_from:
            return x
        maps = self.controller.store.summed(self.schedule.timesteps[:i + 1], self.hw)
        if maps is None:
            return x
        on = lambda w: None if w is None else w.to(maps.device)  # noqa: E731
        self.mask = blend_mask(maps, on(self.blend), on(self.keep), self.hw, self.s.blend_threshold,
                               self.s.blend_dilate)
        return local_blend(x, self.mask)


def edit_latents(model, inversion: Inversion, targets: Sequence[str], settings: EditSettings = EditSettings(),
                 options: MethodOptions = MethodOptions(), progress: Progress = no_progress) -> EditRun:
    """Regenerate `inversion` under its own prompt (row 0) and each target (rows 1…K) in one batch."""
    from .model.attention import attention_control

    if inversion.x_T.shape[0] != 1:
        raise ValueError(f"an edit takes one inverted image, got a batch of {inversion.x_T.shape[0]}")
    prompts = [inversion.prompt, *targets]
    R, schedule = len(prompts), inversion.schedule
    plan = make_plan(model, prompts, schedule, settings)
    blend = word_weights(model, prompts, settings.blend, "blend") if settings.blend else None
    keep = word_weights(model, prompts, settings.keep, "keep") if settings.keep else None
    controller = EditController(plan)
    hw = tuple(inversion.x_T.shape[-2:])
    hook = _Hook(controller, schedule, settings, blend, keep, hw)
    calls = [0]
    with torch.no_grad():
        emb = model.encode_text(prompts)  # (R, L, D)
        c = Conditioning(counted(model.eps, calls), emb, model.encode_negative(inversion.negative_prompt),
                         inversion.guidance, source=emb[:1])
        extras = {k: v.to(model.device) for k, v in inversion.extras.items()}
        x_T = inversion.x_T.to(model.device).repeat(R, 1, 1, 1)
        with attention_control(model, controller):  # installed even without control: it records the maps
            z = replay(inversion.method, c, x_T, extras, schedule, options, hook=hook,
                       callback=lambda d, n: progress("edit", d, n))
    maps = controller.store.summed(schedule.timesteps, hw)
    return EditRun(z, None if hook.mask is None else hook.mask[1:, 0], None if maps is None else maps[0], plan.mode,
                   calls[0])


def composite(edited: torch.Tensor, recon: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each edit composited over the reconstruction in pixel space, and its soft mask.

    edited (K, 3, H, W) and recon (1, 3, H, W) in the same units. d = max over RGB of |edit − recon|, and
    t = threshold × the edit's own largest d: where d < t/2 the output is the reconstruction, where d > t the
    edit, linear in between (mask (K, H, W) in [0, 1]). No pixel ends further than t/2 from the edit (the largest
    of (1 − mask)·d), so the composite removes the small drift of a target branch away from the edit (the
    decoder's haze, a background's tint) and cannot hide a large change: a shape drawn too big stays too big.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"composite threshold must be in (0, 1), got {threshold}")
    d = (edited - recon).abs().amax(1)  # (K, H, W)
    t = threshold * d.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    mask = ((d - t / 2) / (t / 2)).clamp(0, 1)
    return recon + mask[:, None] * (edited - recon), mask


__all__ = ["EditSettings", "EditRun", "choose_mode", "word_weights", "make_plan", "edit_latents", "composite"]
