"""Recipes: a TOML file says what to invert, reconstruct, edit and interpolate, for one photo or many.

    model = ""                      # a diffusers folder, .safetensors file or hub id; "" = the shipped model
    out = "runs/recolour"           # every output lands inside this folder
    [defaults]                      # inversion settings of every step (steps, method, guidance, …)
    method = "direct"
    [[inputs]]                      # files, globs or folders, each with the prompt that describes it
    path = "assets/scenes/*.png"
    prompt = "a yellow star on a blue background"
    [[steps]]                       # run in order for every input (interpolate: once, over all inputs)
    kind = "edit"
    targets = ["a red star on a blue background"]

1. The file is read with `tomllib` and validated into frozen pydantic models (unknown keys forbidden); a bad
   value is refused before any work, naming the file, line and key.
2. Inputs become items with distinct names (two `photo.png` in different folders: `photo`, `photo-2`).
3. Each (item, step) runs unless the manifest says it finished with the same settings and its outputs are
   still there; inversions are cached by (image content, model fingerprint, prompt, settings, geometry), so
   steps and later runs share them. A failing item is recorded and the batch goes on (unless fail_fast).
4. `summary.json` lists every item and step with its status, outputs, figures and seconds.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .api import InveditError, InversionSettings
from .edit import EditSettings
from .methods import METHODS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
Progress = Callable[[str, int, int], None]


class RecipeError(InveditError):
    """A recipe that cannot run; the message names the file, line and key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Defaults(_Model):
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    method: Literal[tuple(METHODS)] = Field("direct", description="inversion method")  # type: ignore[valid-type]
    guidance: float = Field(7.5, ge=0, le=100, description="classifier-free guidance scale")
    negative_prompt: str = ""
    tol: float = Field(1e-6, ge=0)
    max_iter: int = Field(20, ge=1)
    pivot: Literal["ddim", "fixed-point"] = "ddim"
    null_text_steps: int = Field(10, ge=0)
    null_text_lr: float = Field(1e-2, gt=0)
    edict_mix: float = Field(0.93, ge=0.5, lt=1)
    bdia_gamma: float = Field(1.0, gt=0, le=1, description="bdia: γ (1: time-symmetric, the stable choice)")
    max_side: Optional[int] = Field(None, ge=0, description="downscale to this long side; 0: none")
    fit: Literal["pad", "crop"] = "pad"
    batch_size: int = Field(4, ge=1, le=64, description="images inverted together (one UNet batch)")

    def key(self) -> dict[str, Any]:
        """What decides an inversion's numbers (the batch size does not: methods act per image)."""
        return self.model_dump(exclude={"batch_size"})

    def inversion(self) -> InversionSettings:
        keys = ("steps", "method", "guidance", "negative_prompt", "tol", "max_iter", "pivot", "null_text_steps",
                "null_text_lr", "edict_mix", "bdia_gamma")
        return InversionSettings(**{k: getattr(self, k) for k in keys})


class Input(_Model):
    path: str = Field(description="a file, a glob or a folder, relative to the recipe's folder")
    prompt: str = Field("", description="what the images show (the source prompt of edits)")
    targets: Optional[list[str]] = Field(None, description="this input's edit targets, instead of the step's")


class InvertStep(_Model):
    kind: Literal["invert"]


class ReconstructStep(_Model):
    kind: Literal["reconstruct"]


class EditStep(_Model):
    kind: Literal["edit"]
    targets: list[str] = Field(default_factory=list, description="target prompts (an input may give its own)")
    cross_replace: float = Field(EditSettings.cross_replace, ge=0, le=1)
    self_replace: float = Field(EditSettings.self_replace, ge=0, le=1)
    blend: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)
    blend_threshold: float = Field(EditSettings.blend_threshold, ge=0, lt=1)
    blend_dilate: int = Field(EditSettings.blend_dilate, ge=0)
    blend_start: float = Field(EditSettings.blend_start, ge=0, le=1)
    composite: float = Field(EditSettings.composite, ge=0, lt=1)
    reweight: dict[str, float] = Field(default_factory=dict)
    strength: float = Field(EditSettings.strength, ge=0, le=1)
    mode: Literal["auto", "replace", "refine"] = "auto"

    def settings(self) -> EditSettings:
        d = self.model_dump(exclude={"kind", "targets"})
        return EditSettings(**{**d, "blend": tuple(d["blend"]), "keep": tuple(d["keep"]),
                               "reweight": tuple(d["reweight"].items())})


class InterpolateStep(_Model):
    kind: Literal["interpolate"]
    frames: int = Field(16, ge=2, le=1000)
    mode: Literal["slerp", "lerp"] = "slerp"
    renormalise: bool = False
    spacing: Literal["even", "uniform"] = "even"
    fps: float = Field(8.0, ge=0.1, le=100)


Step = Annotated[Union[InvertStep, ReconstructStep, EditStep, InterpolateStep], Field(discriminator="kind")]


class Recipe(_Model):
    model: str = Field("", description="diffusers folder, .safetensors file or hub id; empty: the shipped model")
    out: str = Field("runs/recipe", description="output folder, relative to the recipe's folder")
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    fail_fast: bool = False
    defaults: Defaults = Field(default_factory=Defaults)
    inputs: list[Input] = Field(min_length=1)
    steps: list[Step] = Field(min_length=1)

    @field_validator("out")
    @classmethod
    def _named_out(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("out must name a folder")
        return value


# --- reading -------------------------------------------------------------------------------------------------
def _line_of(text: str, loc: tuple) -> int:
    """The line of the TOML text where the key at pydantic location `loc` is set (best effort; 1-based)."""
    lines, start = text.splitlines(), 0
    for k, part in enumerate(loc):
        if isinstance(part, int) and k > 0 and isinstance(loc[k - 1], str):
            headers = [i for i, line in enumerate(lines) if re.match(rf"\s*\[\[\s*{re.escape(loc[k - 1])}\s*\]\]", line)]
            if part < len(headers):
                start = headers[part]
        elif isinstance(part, str):
            for i in range(start, len(lines)):
                if re.match(rf"\s*(\[\s*)?{re.escape(part)}\s*(=|\])", lines[i]):
                    start = i
                    break
    return start + 1


def _apply_sets(data: dict, sets: list[str]) -> dict:
    """`--set key=value`: a TOML value at a dotted key; a bare key of [defaults] may be given without it."""
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r} is not KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        path = key.strip().split(".")
        if len(path) == 1 and path[0] in Defaults.model_fields:
            path = ["defaults", path[0]]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return data


def load_recipe(path: str | os.PathLike, sets: list[str] = ()) -> Recipe:
    """Read and validate a recipe; every problem is a RecipeError naming the file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Recipe.model_validate(_apply_sets(data, list(sets)))
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = tuple(e["loc"]) + (("kind",) if e["type"] in ("union_tag_invalid", "union_tag_not_found") else ())
            problems.append(f"{path}:{_line_of(text, loc)}: {'.'.join(str(p) for p in loc)}: {e['msg']}")
        raise RecipeError("the recipe is not valid:\n  " + "\n  ".join(problems)) from None


def schema() -> dict[str, Any]:
    return Recipe.model_json_schema()


# --- items -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    name: str  # unique within the run: the output subfolder
    path: Path
    prompt: str
    targets: Optional[tuple[str, ...]]


def _expand(base: Path, entry: Input) -> list[Path]:
    pattern = Path(entry.path).expanduser()
    pattern = pattern if pattern.is_absolute() else base / pattern
    if pattern.is_dir():
        found = sorted(p for p in pattern.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif any(c in str(pattern) for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    else:
        found = [pattern] if pattern.is_file() else []
    return found


def items_of(recipe: Recipe, base: Path, where: str) -> list[Item]:
    """Every input file, with a distinct name; a path that matches nothing is an error naming it."""
    items, seen = [], {}
    for k, entry in enumerate(recipe.inputs):
        files = _expand(base, entry)
        if not files:
            raise RecipeError(f"{where}: inputs.{k}.path {entry.path!r} matches no image file (from {base})")
        for f in files:
            count = seen[f.stem] = seen.get(f.stem, 0) + 1
            name = f.stem if count == 1 else f"{f.stem}-{count}"
            items.append(Item(name, f, entry.prompt, tuple(entry.targets) if entry.targets is not None else None))
    return items


def output_folder(base: Path, recipe: Recipe, where: str) -> Path:
    """The recipe's `out`, inside which every output stays; a symlinked folder is refused."""
    out = Path(recipe.out).expanduser()
    out = Path(os.path.normpath(out if out.is_absolute() else base / out))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RecipeError(f"{where}: out {recipe.out!r} is a link or a file, not a folder")
    return out


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
