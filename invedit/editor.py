"""Orchestration of prompt edits: a photo or a saved inversion in; edited images, pictures and a report out.

1. The input becomes an inversion made with the source prompt (a saved file is checked against the model
   and the source prompt; a photo is inverted and its inversion saved beside the outputs).
2. `edit.edit_latents` regenerates the source branch and every target in one batch.
3. One decode for all rows and for the VAE round trip of the input; with `EditSettings.composite` (on by
   default) each edit is composited over the reconstruction where it changed the pixels only a little
   (`edit.composite`): outside that soft mask the output *is* the reconstruction, so what the report keeps there
   is the reconstruction's fidelity, and the edit's own drift shows only inside it.
4. Each edit is measured: what it kept (PSNR/SSIM outside its blend mask, against the input and against
   the source branch's reconstruction) and what it changed (inside the mask, or everywhere without one).
5. Nothing is written until everything above succeeded; then every file is written atomically.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .api import (InveditError, InversionSettings, describe_image, fitting_inversion, invert_image, prepared_from,
                  replay_options)
from .edit import EditRun, EditSettings, composite, edit_latents
from .io import Prepared, moved, output_set, save_image, write_text
from .methods import Progress, no_progress
from .report import jsonable, region_metrics, side_by_side, to_unit
from .store import SUFFIX, Inversion, save_inversion


@dataclass(frozen=True)
class EditResult:
    images: tuple[Image.Image, ...]  # one edited image per target, at the input's size
    reconstruction: Image.Image  # the source branch: the inversion replayed
    report: dict[str, Any]  # JSON-ready: settings, timings, calls, per-target figures
    paths: dict[str, Path] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    mask: Optional[np.ndarray] = None  # (K, H, W) bool: each target's blend mask at the working size, or None
    composite_mask: Optional[np.ndarray] = None  # (K, H, W) in [0, 1]: where each edit was kept over the reconstruction
    pictures: dict[str, Optional[np.ndarray]] = field(default_factory=dict)  # "compare", "attention": (H, W, 3) uint8


def _inversion_from_file(model, path, source: Optional[str]) -> tuple[Inversion, list[str]]:
    """A saved inversion, checked against the model and the source prompt (its own settings are used)."""
    inversion = fitting_inversion(model, path)
    if source is not None and source != inversion.prompt:
        raise InveditError(f"{path} was inverted with the prompt {inversion.prompt!r}, not --source {source!r}: "
                           "leave --source out to use the file's prompt, or invert the photo again with it")
    return inversion, []


def _mask_pixels(mask: Optional[torch.Tensor], prepared: Prepared) -> Optional[np.ndarray]:
    """(K, h, w) latent masks → (K, H', W') bool at the working size, padding removed."""
    if mask is None:
        return None
    H, W = prepared.pixels.shape[-2:]
    big = F.interpolate(mask[:, None].float().cpu(), size=(H, W), mode="nearest")[:, 0]
    left, top, right, bottom = prepared.box
    return big[:, top:bottom, left:right].numpy() > 0.5


def measure(original: np.ndarray, vae: np.ndarray, recon: np.ndarray, edited: np.ndarray,
            mask: Optional[np.ndarray]) -> dict[str, Any]:
    """What one edit kept and changed; (H, W, 3) images in [0, 1], `mask` (H, W) bool or None (whole image)."""
    everywhere = np.ones(original.shape[:2], bool)
    outside = everywhere if mask is None else ~mask
    kept = {"region": "whole image" if mask is None else "outside the blend mask",
            "fraction": float(outside.mean()),
            "vs_input": region_metrics(edited, original, outside),
            "vs_reconstruction": region_metrics(edited, recon, outside),
            "vae_vs_input": region_metrics(vae, original, outside)}
    inside = everywhere if mask is None else mask
    changed = {"region": "whole image" if mask is None else "inside the blend mask",
               "mean_abs_change_vs_reconstruction": float(np.abs(edited - recon)[inside].mean()) if inside.any()
               else float("nan")}
    return {"kept": kept, "changed": changed}


def _attention_picture(model, prompt: str, maps: Optional[torch.Tensor], original: np.ndarray) -> Optional[np.ndarray]:
    """The source branch's cross-attention per token over a grey input, P2P's visualisation."""
    if maps is None:
        return None
    ids = model.token_ids(prompt)[1:-1]
    words = [w.replace("</w>", "") for w in model.tokenizer.convert_ids_to_tokens(ids)]
    grey = (original.mean(axis=2, keepdims=True).repeat(3, 2) * 255).astype(np.float32)
    panels = []
    for k, word in enumerate(words, start=1):
        m = maps[k].float().cpu().numpy()
        m = cv2.resize(m / max(m.max(), 1e-12), original.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        heat = cv2.cvtColor(cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        panels.append((word, (0.4 * grey + 0.6 * heat).astype(np.uint8)))
    return side_by_side(panels, min_height=128) if panels else None


def _compare_picture(original, recon, edits, masks, kept) -> np.ndarray:
    """input | reconstruction | edits | blend masks | composite masks (white: the edit, black: the reconstruction)."""
    u8 = lambda a: (a * 255).round().astype(np.uint8)  # noqa: E731
    grey = lambda m: np.repeat(u8(np.asarray(m, np.float32))[..., None], 3, 2)  # noqa: E731
    many = len(edits) > 1
    panels = [("input", u8(original)), ("reconstruction", u8(recon))]
    panels += [(f"edit {k + 1}" if many else "edit", u8(e)) for k, e in enumerate(edits)]
    if masks is not None:
        panels += [(f"mask {k + 1}" if many else "blend mask", grey(m)) for k, m in enumerate(masks)]
    if kept is not None:
        panels += [(f"composite {k + 1}" if many else "composite mask", grey(m)) for k, m in enumerate(kept)]
    return side_by_side(panels)


def edit(model, image_or_inversion: Any, source: Optional[str], targets: Sequence[str],
         settings: InversionSettings = InversionSettings(guidance=7.5), edit_settings: EditSettings = EditSettings(),
         out: Optional[str | os.PathLike] = None, max_side: Optional[int] = None, fit: str = "pad",
         progress: Progress = no_progress, stem: Optional[str] = None) -> EditResult:
    """Edit a photo (or an inversion) from `source` to each of `targets`; see the module docstring.

    Outputs are named after the input (`stem` overrides that)."""
    targets, stem_override = list(targets), stem
    if not targets or any(not t.strip() for t in targets):
        raise InveditError("give at least one non-empty target prompt (--target)")
    start, warnings = time.perf_counter(), []
    item = image_or_inversion
    if isinstance(item, Inversion) or str(item).endswith(".safetensors"):  # 1.
        if isinstance(item, Inversion):
            inversion, stem, written = item, "edit", None
        else:
            inversion, w = _inversion_from_file(model, item, source)
            stem, written = Path(item).name.removesuffix(SUFFIX).removesuffix(".safetensors"), None
            warnings += w
    else:
        if source is None:
            raise InveditError("an image needs --source: the prompt that describes it as it is")
        inverted = invert_image(model, item, source, settings, None, max_side, fit, progress)
        inversion, stem, written = inverted.inversion, Path(item).stem, inverted.inversion
        warnings += inverted.warnings
    seconds = {"invert": time.perf_counter() - start}
    try:  # 2.
        run = edit_latents(model, inversion, targets, edit_settings, replay_options(inversion), progress)
    except ValueError as exc:
        raise InveditError(str(exc)) from None
    seconds["edit"] = time.perf_counter() - start - seconds["invert"]
    prepared = prepared_from(inversion)
    with torch.no_grad():  # 3.
        pixels = model.decode(torch.cat([run.latents, inversion.z0.to(run.latents.device)]))
    raw, blended = pixels[1:len(targets) + 1], None
    if edit_settings.composite > 0:
        edits, blended = composite(raw, pixels[:1], edit_settings.composite)
        pixels = torch.cat([pixels[:1], edits, pixels[len(targets) + 1:]])
    seconds["decode"] = time.perf_counter() - start - seconds["invert"] - seconds["edit"]
    result = _finish(model, inversion, prepared, targets, run, pixels, edit_settings, seconds, warnings,
                     (raw, blended))
    if out is None:
        return result
    paths = _write(Path(out), stem_override or stem, result, written)  # 5.
    return replace(result, paths=paths)


def _composite_report(threshold: float, raw: torch.Tensor, final: torch.Tensor, mask: Optional[torch.Tensor],
                      prepared: Prepared) -> list[dict[str, Any]]:
    """Per target: the composite's settings, how much of the image kept the edit, and how far it moved a pixel."""
    if mask is None:
        return [{"threshold": 0.0, "applied": False}] * raw.shape[0]
    moved = prepared.content((final - raw).abs()).amax(dim=(1, 2, 3)) / 2  # [-1, 1] → [0, 1] units
    fraction = prepared.content(mask).flatten(1).mean(1)
    return [{"threshold": threshold, "applied": True, "edit_fraction": float(f), "max_change_of_edit": float(m),
             "note": "outside the composite mask the output is the reconstruction"} for f, m in zip(fraction, moved)]


def _finish(model, inversion: Inversion, prepared: Prepared, targets, run: EditRun, pixels: torch.Tensor,
            edit_settings: EditSettings, seconds, warnings, composited) -> EditResult:
    """Measure every edit (step 4) and build the report, images and pictures, writing nothing.
    `composited` = (the edits as decoded, the composite's masks or None)."""
    unit = [to_unit(p) for p in prepared.content(pixels)]  # rows…, VAE round trip
    original = to_unit(prepared.content(prepared.pixels)[0])
    recon, vae, edits = unit[0], unit[-1], unit[1:-1]
    masks = _mask_pixels(run.mask, prepared)
    raw, blended = composited
    comp = _composite_report(edit_settings.composite, raw, pixels[1:len(targets) + 1], blended, prepared)
    per_target = [{"target": t, **measure(original, vae, recon, e, None if masks is None else masks[k]),
                   "mask_fraction": None if masks is None else float(masks[k].mean()), "composite": comp[k]}
                  for k, (t, e) in enumerate(zip(targets, edits))]
    calls = inversion.stats.get("network_calls", 0)
    report = {"invedit": __version__, "source": inversion.prompt, "targets": list(targets), "mode": run.mode,
              "inversion": {"method": inversion.method, "steps": inversion.schedule.steps,
                            "guidance": inversion.guidance, "negative_prompt": inversion.negative_prompt,
                            "network_calls": calls, "settings": inversion.stats.get("settings", {})},
              "edit_settings": {k: getattr(edit_settings, k) for k in edit_settings.__dataclass_fields__},
              "network_calls": {"invert": calls, "edit": run.network_calls, "total": calls + run.network_calls,
                                "batch_rows": 1 + len(targets)},
              "reconstruction_vs_input": region_metrics(recon, original, np.ones(original.shape[:2], bool)),
              "edits": per_target, "seconds": seconds, "image": describe_image(model, prepared),
              "model": model.describe()}
    images = tuple(prepared.restore(pixels[k:k + 1]) for k in range(1, len(targets) + 1))
    composite_masks = None if blended is None else prepared.content(blended).cpu().numpy()
    pictures = {"compare": _compare_picture(original, recon, edits, masks, composite_masks),
                "attention": _attention_picture(model, inversion.prompt, run.maps, original)}
    return EditResult(images, prepared.restore(pixels[:1]), report, {}, tuple(warnings), masks, composite_masks,
                      pictures)


def _write(out: Path, stem: str, result: EditResult, inversion: Optional[Inversion]) -> dict[str, Path]:
    """Every output in one set (`io.output_set`): all of them appear in `out`, or none."""
    many = len(result.images) > 1
    names = [f"{stem}.edit-{k + 1}.png" if many else f"{stem}.edit.png" for k in range(len(result.images))]
    for k, name in enumerate(names):
        result.report["edits"][k]["image"] = str(out / name)
    with output_set(out) as stage:
        paths = {"inversion": save_inversion(stage / f"{stem}{SUFFIX}", inversion)} if inversion is not None else {}
        for k, (name, image) in enumerate(zip(names, result.images)):
            paths[f"edit-{k + 1}" if many else "edit"] = save_image(stage / name, image)
        paths["reconstruction"] = save_image(stage / f"{stem}.edit-recon.png", result.reconstruction)
        paths["compare"] = save_image(stage / f"{stem}.edit-compare.png", result.pictures["compare"])
        if result.pictures.get("attention") is not None:
            paths["attention"] = save_image(stage / f"{stem}.attention.png", result.pictures["attention"])
        paths["report"] = write_text(stage / f"{stem}.edit.json", json.dumps(jsonable(result.report), indent=2))
    return moved(paths, stage, out)


__all__ = ["EditResult", "EditSettings", "edit", "measure"]
