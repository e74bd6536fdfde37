"""Prompt-to-Prompt attention control (Hertz et al. 2022) as plain torch functions, keyed on the timestep.

An edit regenerates R rows in one batch: row 0 is the source prompt (it replays the inversion), rows
1…R−1 are target prompts. In every attention layer the UNet sees the batch `[uncond rows, cond rows]`
under guidance (w ≠ 1), or `[cond rows]` at w = 1: that order is this module's contract with
`guidance.guided`. As in P2P's code, only the conditional half is edited:

- cross-attention, steps i < cross_until: each target row takes the source row's maps, word for word
  (`replace`: prompts of equal token count, P2P's AttentionReplace) or along a token alignment
  (`refine`: words added or removed, P2P's AttentionRefine with `seq_aligner`'s global alignment);
- self-attention, steps i < self_until, in layers of at most `max_self_tokens` queries: the target rows
  take the source row's maps (P2P's `replace_self_attention`, 16² on SD);
- re-weighting (P2P's AttentionReweight): a target row's attention to chosen tokens is scaled;
- local blend (P2P's LocalBlend): a mask from the summed cross-attention of chosen words, max-pooled
  (dilated), normalised to its peak and thresholded, less the mask of words to keep (the null-text
  notebook's `substruct_words`); outside it a target row's latent is the source row's. `blend_mask` and
  `local_blend` are the two halves; the edit runs them as a step hook.

Controllers are keyed on the timestep, never on a call counter: fixed-point calls the network many times
per step, EDICT twice, so a counter would drift. Calls at a timestep that is not in the schedule (or with
a batch that is not R or 2R rows) pass through unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

MODES = ("replace", "refine")
MAX_MAP_TOKENS = 32 * 32  # cross-attention maps are stored for layers of at most this many queries (P2P: 32²)


# --- token alignment (P2P's seq_aligner, written anew) -------------------------------------------------
def align_tokens(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """Global alignment (Needleman & Wunsch 1970; match 1, mismatch −1, gap 0, as P2P's seq_aligner):
    for each target token, the index of the source token it aligns with, or −1 for an inserted token."""
    n, m = len(source), len(target)
    score = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            score[i][j] = max(diag, score[i - 1][j], score[i][j - 1])
    mapping, i, j = [-1] * m, n, m
    while i > 0 and j > 0:  # trace back, preferring matches, then gaps in the target, then in the source
        if source[i - 1] == target[j - 1] and score[i][j] == score[i - 1][j - 1] + 1:
            mapping[j - 1], i, j = i - 1, i - 1, j - 1
        elif score[i][j] == score[i - 1][j]:
            i -= 1
        elif score[i][j] == score[i][j - 1]:
            j -= 1
        else:  # a mismatch taken diagonally: the target token is new
            i, j = i - 1, j - 1
    return mapping


def refine_mapper(source: Sequence[int], target: Sequence[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper (length,) long, alphas (length,)) for P2P's refinement: target token j reads the source map
    at mapper[j] where alphas[j] = 1, its own map where 0 (new words). Padding maps onto padding."""
    aligned = align_tokens(source, target)[:length]
    mapper = torch.arange(length) - len(target) + len(source)  # padding after the prompts, aligned at their ends
    mapper = mapper.clamp(0, length - 1)
    alphas = torch.ones(length)
    for j, k in enumerate(aligned):
        mapper[j] = max(k, 0)
        alphas[j] = float(k >= 0)
    return mapper, alphas


# --- the controller --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EditPlan:
    """What an edit does to attention, decided before the first step (all tensors on the UNet's device)."""

    rows: int  # R: the source row and R − 1 targets
    steps: dict[int, int]  # timestep → step index i
    cross_until: int  # steps i < cross_until inject cross-attention
    self_until: int  # steps i < self_until inject self-attention
    mode: str  # "replace" | "refine"
    mapper: torch.Tensor  # (R−1, L) long: target token j reads source token mapper[j]
    alphas: torch.Tensor  # (R−1, L): 1 where a target token has a source counterpart (refine), else 0
    equalizer: Optional[torch.Tensor] = None  # (R−1, L) per-token attention scale of the targets, or None
    max_self_tokens: int = 16 * 16  # self-attention is injected in layers with at most this many queries

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")


def replace_cross(base: torch.Tensor, own: torch.Tensor, plan: EditPlan) -> torch.Tensor:
    """Targets' cross-attention (K, H, Q, L) from the source's (H, Q, L): P2P's replace / refine."""
    mapped = base[:, :, plan.mapper].permute(2, 0, 1, 3)  # (K, H, Q, L): base[h, q, mapper[k, l]]
    if plan.mode == "replace":
        return mapped  # equal token counts: the mapper is the identity
    a = plan.alphas[:, None, None, :].to(own.dtype)
    return mapped * a + own * (1 - a)


def reweight(attn: torch.Tensor, equalizer: torch.Tensor) -> torch.Tensor:
    """P2P's AttentionReweight: scale each target's (K, H, Q, L) attention to token l by equalizer[k, l]."""
    return attn * equalizer[:, None, None, :].to(attn.dtype)


@dataclass
class AttentionStore:
    """The conditional rows' cross-attention maps, averaged over heads: timestep → layer → (R, Q, L).
    A repeated call at a timestep (fixed-point, EDICT) overwrites, so the store stays keyed on the step."""

    maps: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def add(self, t: int, place: str, probs: torch.Tensor) -> None:
        if probs.shape[2] <= MAX_MAP_TOKENS:
            self.maps.setdefault(t, {})[place] = probs.mean(1).detach()

    def summed(self, timesteps: Sequence[int], latent_hw: tuple[int, int]) -> Optional[torch.Tensor]:
        """Maps summed over `timesteps` and layers, each layer resized to the finest stored grid: (R, L, h, w)."""
        layers = [m for t in timesteps for m in self.maps.get(t, {}).values()]
        if not layers:
            return None
        grids = [_grid(m.shape[1], latent_hw) for m in layers]
        size = max(grids)
        total = None
        for m, (h, w) in zip(layers, grids):
            grid = m.permute(0, 2, 1).reshape(m.shape[0], m.shape[2], h, w).float()
            grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False) if (h, w) != size else grid
            total = grid if total is None else total + grid
        return total


def _grid(queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a layer's query grid, from its query count and the latent's aspect ratio."""
    H, W = latent_hw
    scale = round(math.sqrt(H * W / queries))
    return max(1, H // scale), max(1, W // scale)


class EditController:
    """The attention controller of one edit: `controller(probs (B, H, Q, L), place, is_cross, t) -> probs`."""

    def __init__(self, plan: EditPlan):
        self.plan, self.store = plan, AttentionStore()

    def wants(self, is_cross: bool, queries: int) -> bool:
        """Whether a layer's maps are needed: every cross-attention (stored, replaced, re-weighted); self-attention
        only where it may be injected."""
        return is_cross or (self.plan.self_until > 0 and queries <= self.plan.max_self_tokens)

    def __call__(self, probs: torch.Tensor, place: str, is_cross: bool, t: int) -> torch.Tensor:
        plan, R = self.plan, self.plan.rows
        i = plan.steps.get(int(t))
        if i is None or probs.shape[0] not in (R, 2 * R):
            return probs
        cond = probs[probs.shape[0] - R:]  # (R, H, Q, L): the conditional half
        if is_cross:
            self.store.add(int(t), place, cond)
        targets, changed = cond[1:], False
        if is_cross and i < plan.cross_until:
            targets, changed = replace_cross(cond[0], targets, plan), True
        elif not is_cross and i < plan.self_until and cond.shape[2] <= plan.max_self_tokens:
            targets, changed = cond[:1].expand_as(targets), True
        if is_cross and plan.equalizer is not None:
            targets, changed = reweight(targets, plan.equalizer), True
        if not changed:
            return probs
        return torch.cat([probs[:probs.shape[0] - R], cond[:1], targets])


# --- local blend -----------------------------------------------------------------------------------------
def word_mask(maps: torch.Tensor, words: torch.Tensor, latent_hw: tuple[int, int], threshold: float = 0.3,
              dilate: int = 1) -> torch.Tensor:
    """P2P's LocalBlend mask, (R, 1, h, w) in {0, 1}: row k is the union of the source's and row k's masks.

    `maps` (R, L, h', w') are summed cross-attention maps, `words` (R, L) weighs the chosen words' tokens in
    each row's prompt; each row's word map is max-pooled over (2·dilate + 1)² cells, resized to the latent,
    normalised to its peak and thresholded. A row without any of the words has an empty mask of its own."""
    m = (maps * words[:, :, None, None].to(maps.dtype)).sum(1, keepdim=True)  # (R, 1, h', w')
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    m = F.interpolate(m, size=latent_hw, mode="nearest")
    m = m / m.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
    mask = (m > threshold).float()
    return torch.maximum(mask[:1], mask)


def blend_mask(maps: torch.Tensor, blend: Optional[torch.Tensor], keep: Optional[torch.Tensor],
               latent_hw: tuple[int, int], threshold: float = 0.3, dilate: int = 1) -> torch.Tensor:
    """Where each row may differ from the source, (R, 1, h, w): the blend words' mask (everywhere when no blend
    words are given) less the keep words' mask (P2P's `substruct_words`, null-text notebook)."""
    R = maps.shape[0]
    mask = torch.ones(R, 1, *latent_hw, device=maps.device) if blend is None else \
        word_mask(maps, blend, latent_hw, threshold, dilate)
    if keep is not None:
        mask = mask * (1 - word_mask(maps, keep, latent_hw, threshold, dilate))
    return mask


def local_blend(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (R, C, h, w): outside each target row's mask its latent is the source row's (P2P's LocalBlend)."""
    return torch.cat([x[:1], x[:1] + mask[1:].to(x.dtype) * (x[1:] - x[:1])])
