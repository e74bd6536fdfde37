"""Benchmark: prompt edits of inverted images on the shipped shapes-64 model, judged against exact ground truth.

What is edited. Scenes of the shapes world (`shapes.sample_scene(default_rng(seed))`, rendered at 64 px;
benchmark seeds 1000…, tuning seeds 2000…, never overlapping). Each scene gets three edits whose targets
are drawn from the same rng after the scene: a colour swap (new shape colour, not the old one nor the
background), a shape swap (new shape) and a background swap (new background, not the old one nor the shape
colour). Source and target prompts are the world's captions (`shapes.caption_for`).

Who edits. Every scene is inverted once per inversion method (`api.invert_prepared`, the source caption,
`--steps`, guidance `--guidance`); each inversion is reused for every edit of the scene. Conditions:
- `no control`: `EditSettings(control=False)`: the target row regenerates from x_T under the target prompt;
- `P2P`: Prompt-to-Prompt attention control (`--cross-replace`, `--self-replace`), no local blend, the edit as
  decoded;
- `P2P + composite`: the same decoded rows (not run again) composited over the source branch's reconstruction
  where the edit changed the pixels by less than `--composite` × its largest change (`invedit.edit.composite`, the
  default of `invedit edit`): outside that soft mask the output is the reconstruction, so its preservation
  column measures where the edit's own change reaches into the region, not the target branch's small drift;
- `P2P + blend`: the same plus local blend on the source caption's shape word (colour swap), the old and the
  new shape words (shape swap), or "background" (background swap), with `--blend-threshold/-dilate/-start`,
  without composite;
each × every method; plus the peers LEDITS++ and DiffEdit (`edit_peers.py`, once per edit: they invert
on their own).

What is measured, per edit:
- success: `invedit.judge` reads every attribute of the target caption in the edit (shape, colour and
  background all equal the target's); `asked` = the named attribute changed to the target's, `kept` = the
  two others stayed;
- preservation: PSNR of the edit against the input over the region the edit must not touch, known from the
  scene: colour swap, outside the old shape dilated by 3 px; shape swap, outside the scene's circumscribed
  disk dilated by 3 px; background swap, inside the old shape eroded by 3 px. The same PSNR for the VAE
  round trip of the input (the ceiling no inversion can beat) and the gap = ceiling − edit, in dB;
- colour and background swaps: IoU of the judge's shape mask of the edit with the scene's shape mask;
- cost: wall seconds and UNet calls of inversion + edit (the inversion counted in full for every edit: what
  one edit costs a user); a call is one UNet forward on the whole batch (an edit batch is the source row and
  the target row, ×2 under classifier-free guidance); the peers' own seconds and calls.

`--tune` sweeps P2P's settings with method `direct` on the tuning scenes, ranked by success rate, then mean
PSNR outside the edit region: (a) cross × self replace without blend, (b) blend threshold × dilation × start
with the best of (a); it writes the sweep table (`--tune-md`) and prints the command for the full run.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_edit.py --tune
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_edit.py --cross-replace 0.8 --self-replace 0 \\
        --blend-threshold 0.3 --blend-dilate 1 --blend-start 0 --slow-scenes 20   # docs/edit-benchmark.{json,md}
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_edit.py --scenes 1 --methods direct --json /tmp/e.json \\
        --md /tmp/e.md --examples /tmp/e.png                          # a smoke test
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from invedit import api, shapes
from invedit.edit import EditSettings, composite, edit_latents
from invedit.io import prepare, save_image, to_uint8, write_text
from invedit.judge import judge
from invedit.methods import METHODS
from invedit.report import jsonable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import cpu_name  # noqa: E402
from edit_peers import PeerUnavailable, load_peers  # noqa: E402

SIZE = 64  # the shipped model's native size
KINDS = ("colour", "shape", "background")
ATTRIBUTE = {"shape": 0, "colour": 1, "background": 2}  # kind → index in (shape, colour, background)
CONDITIONS = ("no control", "P2P", "P2P + composite", "P2P + blend")
PEERS = ("LEDITS++", "DiffEdit")
PEER_FN = {"LEDITS++": "ledits", "DiffEdit": "diffedit"}
MARGIN_PX = 3  # the preserved region stays this far from anything the edit may change
BENCH_SEED, TUNE_SEED = 1000, 2000
TUNE_SCENES = 12
TUNE_METHOD = "direct"
SWEEP_CROSS = (0.2, 0.4, 0.6, 0.8, 1.0)
SWEEP_SELF = (0.0, 0.2, 0.4, 0.6, 0.8)
SWEEP_THRESHOLD = (0.3, 0.5, 0.7, 0.8)
SWEEP_DILATE = (0, 1)
SWEEP_START = (0.0, 0.2)
EXAMPLE_SCENES = 4
ROOT = Path(__file__).resolve().parent.parent


# --- scenes and edits ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Edit:
    """One edit of a scene: its kind, the target (shape, colour, background), the blend words, and the
    boolean (H, W) region it must leave as it was."""

    kind: str
    source: str
    target: tuple[str, str, str]
    blend: tuple[str, ...]
    keep: np.ndarray

    @property
    def caption(self) -> str:
        return shapes.caption_for(*self.target)


def _pick(rng: np.random.Generator, choices: list[str]) -> str:
    return choices[int(rng.integers(len(choices)))]


def _disk_kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), _disk_kernel(px)).astype(bool)


def shrink(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), _disk_kernel(px)).astype(bool)


def circumscribed_disk(scene: shapes.Scene, size: int, extra_px: float) -> np.ndarray:
    """Pixels whose centre lies within the shape's circumscribed circle grown by extra_px."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    cx, cy = np.array(scene.centre) * size
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= (scene.size * size / 2 + extra_px) ** 2


def draw_scene(seed: int) -> tuple[shapes.Scene, list[Edit]]:
    """The scene of `seed` and its three edits, targets drawn from the scene's own rng after the scene."""
    rng = np.random.default_rng(seed)
    scene = shapes.sample_scene(rng)
    colours = list(shapes.COLOURS)
    colour = _pick(rng, [c for c in colours if c not in (scene.colour, scene.background)])
    shape = _pick(rng, [s for s in shapes.SHAPES if s != scene.shape])
    background = _pick(rng, [c for c in colours if c not in (scene.background, scene.colour)])
    mask = shapes.shape_mask(scene, SIZE)
    old = (scene.shape, scene.colour, scene.background)
    return scene, [
        Edit("colour", scene.caption, (old[0], colour, old[2]), (scene.shape,), ~grow(mask, MARGIN_PX)),
        Edit("shape", scene.caption, (shape, old[1], old[2]), (scene.shape, shape),
             ~circumscribed_disk(scene, SIZE, MARGIN_PX)),
        Edit("background", scene.caption, (old[0], old[1], background), ("background",), shrink(mask, MARGIN_PX)),
    ]


# --- measuring ------------------------------------------------------------------------------------------
def region_psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """PSNR in dB of two uint8 RGB images over the pixels of `region` (nan for an empty region)."""
    if not region.any():
        return float("nan")
    diff = a[region].astype(np.float64) - b[region].astype(np.float64)
    return float(10 * math.log10(255.0 ** 2 / max(float(np.mean(diff ** 2)), 1e-10)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def score(edit: Edit, truth_mask: np.ndarray, image: np.ndarray, vae: np.ndarray, out: np.ndarray) -> dict:
    """What the judge reads in `out` and how much of the region to keep survived (see the module docstring)."""
    verdict = judge(out)
    read = (verdict.shape, verdict.colour, verdict.background)
    named = ATTRIBUTE[edit.kind]
    psnr, ceiling = region_psnr(out, image, edit.keep), region_psnr(vae, image, edit.keep)
    return {
        "read": list(read), "success": read == edit.target, "asked": read[named] == edit.target[named],
        "kept": all(read[k] == edit.target[k] for k in range(3) if k != named),
        "psnr": psnr, "ceiling": ceiling, "gap": ceiling - psnr,
        "iou": iou(verdict.mask, truth_mask) if edit.kind != "shape" else float("nan"),
    }


# --- running edits --------------------------------------------------------------------------------------
@dataclass
class Bench:
    """The loaded model (and peers) and the settings every edit of a run shares."""

    model: object
    steps: int
    guidance: float
    p2p: EditSettings  # cross/self replace and the blend parameters; blend words come per edit
    null_text_lr: Optional[float] = None
    peers: object = None
    _last: Optional[tuple] = None  # (key, decoded rows, cost) of the last edit run: a composite reuses it

    def invert(self, image: np.ndarray, caption: str, method: str):
        kwargs = {} if self.null_text_lr is None else {"null_text_lr": self.null_text_lr}
        settings = api.InversionSettings(steps=self.steps, method=method, guidance=self.guidance, **kwargs)
        prepared = prepare(Image.fromarray(image), self.model.multiple, SIZE)
        inv, _ = api.invert_prepared(self.model, prepared, caption, settings)
        return inv

    def vae_round_trip(self, image: np.ndarray) -> np.ndarray:
        prepared = prepare(Image.fromarray(image), self.model.multiple, SIZE)
        with torch.no_grad():
            return to_uint8(self.model.decode(self.model.encode_image(prepared.pixels))[0])

    def warm_up(self) -> None:
        """One short inversion and edit (seed 0), so that the first timed edit does not pay first-call setup."""
        scene, edits = draw_scene(0)
        steps, self.steps = self.steps, 2
        try:
            inv = self.invert(shapes.render(scene, SIZE), scene.caption, "ddim")
            self.edit(inv, edits[0], self.p2p)
        finally:
            self.steps = steps

    def edit(self, inv, edit: Edit, settings: EditSettings) -> tuple[np.ndarray, dict]:
        """The edited image (composited when settings.composite > 0) and its cost (inversion + edit), plus whether
        the source row replayed the input. Settings that differ from the last run's only in the composite reuse
        its decoded rows (and its cost: the composite itself takes milliseconds)."""
        key = (id(inv), edit.caption, replace(settings, composite=0.0))
        if self._last is None or self._last[0] != key:
            start = time.perf_counter()
            run = edit_latents(self.model, inv, [edit.caption], settings, api.replay_options(inv))
            with torch.no_grad():
                pixels = self.model.decode(run.latents)
            seconds = time.perf_counter() - start
            replay = judge(to_uint8(pixels[0]))
            cost = {"seconds": sum(inv.stats["seconds"].values()) + seconds, "calls": inv.stats["network_calls"]
                    + run.network_calls, "edit_seconds": seconds, "edit_calls": run.network_calls,
                    "replay_ok": (replay.shape, replay.colour, replay.background) == shapes.parse_caption(edit.source)}
            self._last = (key, pixels, cost)
        _, pixels, cost = self._last
        out = pixels[1:2]
        if settings.composite > 0:
            out = composite(out, pixels[:1], settings.composite)[0]
        return to_uint8(out[0]), dict(cost)

    def peer(self, name: str, image: np.ndarray, edit: Edit, seed: int) -> tuple[Optional[np.ndarray], dict]:
        start = time.perf_counter()
        try:
            out = getattr(self.peers, PEER_FN[name])(image, edit.source, edit.caption, steps=self.steps,
                                                     guidance=self.guidance, seed=seed)
        except PeerUnavailable as exc:
            return None, {"error": str(exc)}
        return out, {"seconds": time.perf_counter() - start, "calls": self.peers.calls}


def settings_for(condition: str, edit: Edit, p2p: EditSettings) -> EditSettings:
    """The EditSettings of a condition: no control, or P2P's settings with this edit's blend words or none, and
    the composite only for `P2P + composite`."""
    if condition == "no control":
        return EditSettings(control=False, composite=0.0)
    return replace(p2p, blend=edit.blend if condition == "P2P + blend" else (),
                   composite=p2p.composite if condition == "P2P + composite" else 0.0)


def record(seed: int, edit: Edit, condition: str, method: str, measured: dict,
           cost: dict) -> dict:
    return {"seed": seed, "kind": edit.kind, "source": edit.source, "target": edit.caption,
            "condition": condition, "method": method, **measured, **cost}


def run_scene(bench: Bench, seed: int, methods: list[str], conditions: tuple[str, ...], peers: tuple[str, ...],
              keep_images: bool) -> tuple[list[dict], dict]:
    """Every edit of one scene: records, and (when keep_images) the images keyed (kind, condition, method)."""
    scene, edits = draw_scene(seed)
    image, truth = shapes.render(scene, SIZE), shapes.shape_mask(scene, SIZE)
    vae = bench.vae_round_trip(image)
    records, images = [], {"input": image, "vae": vae, "edits": edits}
    for method in methods:
        inv = bench.invert(image, scene.caption, method)
        for edit in edits:
            for condition in conditions:
                out, cost = bench.edit(inv, edit, settings_for(condition, edit, bench.p2p))
                records.append(record(seed, edit, condition, method, score(edit, truth, image, vae, out), cost))
                if keep_images:
                    images[(edit.kind, condition, method)] = out
    for edit in edits:
        for name in peers:
            out, cost = bench.peer(name, image, edit, seed)
            measured = score(edit, truth, image, vae, out) if out is not None else {}
            records.append(record(seed, edit, name, "—", measured, cost))
            if keep_images and out is not None:
                images[(edit.kind, name, "—")] = out
    return records, images


# --- aggregates -----------------------------------------------------------------------------------------
def _mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def aggregate(records: list[dict]) -> dict:
    """Means over a group of edit records (a failed peer run counts as a failure with no PSNR)."""
    ran = [r for r in records if "success" in r]
    return {"n": len(records), "failed_runs": len(records) - len(ran),
            "success": _mean(float(r.get("success", False)) for r in records),
            "asked": _mean(float(r.get("asked", False)) for r in records),
            "kept": _mean(float(r.get("kept", False)) for r in records),
            "psnr": _mean(r["psnr"] for r in ran), "ceiling": _mean(r["ceiling"] for r in ran),
            "gap": _mean(r["gap"] for r in ran), "iou": _mean(r["iou"] for r in ran),
            "seconds": _mean(r["seconds"] for r in ran), "calls": _mean(r["calls"] for r in ran),
            "replay_ok": _mean(float(r["replay_ok"]) for r in ran if "replay_ok" in r)}


def rank_key(row: dict) -> tuple[float, float]:
    """Higher is better: success rate first, then mean PSNR outside the edit region."""
    psnr = row["psnr"] if row["psnr"] == row["psnr"] else -math.inf
    return row["success"], psnr


def summarise(records: list[dict], methods: list[str], conditions: tuple[str, ...],
              peers: tuple[str, ...]) -> list[dict]:
    """One row per (kind, condition, method), in table order: condition × method, then the peers."""
    table = []
    for kind in KINDS:
        keys = [(c, m) for c in conditions for m in methods] + [(p, "—") for p in peers]
        for condition, method in keys:
            sel = [r for r in records if (r["kind"], r["condition"], r["method"]) == (kind, condition, method)]
            if sel:
                table.append({"kind": kind, "condition": condition, "method": method, **aggregate(sel)})
    return table


def best_rows(table: list[dict]) -> list[dict]:
    """Per kind: the best invedit row, the best `no control` row and each peer, for the summary table."""
    rows = []
    for kind in KINDS:
        mine = [r for r in table if r["kind"] == kind and r["condition"] not in PEERS]
        if not mine:
            continue
        rows.append({"label": "best", **max(mine, key=rank_key)})
        plain = [r for r in mine if r["condition"] == "no control"]
        if plain:
            rows.append({"label": "best no control", **max(plain, key=rank_key)})
        rows += [{"label": "peer", **r} for r in table if r["kind"] == kind and r["condition"] in PEERS]
    return rows


# --- markdown -------------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return "—" if v != v else f"{100 * v:.0f}"


def _num(v: float, fmt: str = "{:.2f}") -> str:
    return "—" if v != v else fmt.format(v)


TABLE_HEAD = ("| condition | method | n | success % | asked % | kept % | PSNR outside vs input | VAE ceiling | "
              "gap dB | mask IoU | s / edit | UNet calls / edit |")


def table_line(r: dict, first: str, second: str) -> str:
    return (f"| {first} | {second} | {r['n']} | {_pct(r['success'])} | {_pct(r['asked'])} | {_pct(r['kept'])} | "
            f"{_num(r['psnr'])} | {_num(r['ceiling'])} | {_num(r['gap'])} | {_num(r['iou'], '{:.3f}')} | "
            f"{_num(r['seconds'], '{:.1f}')} | {_num(r['calls'], '{:.0f}')} |")


def markdown(header: dict, table: list[dict]) -> str:
    p2p = header["settings"]["p2p"]
    lines = [
        "# Edit benchmark: prompt edits on the shipped shapes-64 model",
        "",
        f"Command: `{header['command']}`  ",
        f"Date: {header['date']}; torch threads {header['torch_threads']}; CPU {header['cpu']} "
        f"({header['cpus']} cores, shared); device cpu, fp32; {header['minutes']:.1f} min in all"
        f"{'; PARTIAL: ' + str(header['scenes_done']) + ' of ' + str(header['scenes']) + ' scenes' if header['partial'] else ''}.  ",
        f"Model: `{header['model']}`, fingerprint `{header['fingerprint']}`; torch {header['versions']['torch']}, "
        f"diffusers {header['versions']['diffusers']}.  ",
        f"Scenes: {header['scenes_done']} (seeds {header['first_seed']}…{header['first_seed'] + header['scenes_done'] - 1}),"
        f" 3 edits each; {header['steps']} DDIM steps, guidance {header['guidance']:g}; methods "
        f"{', '.join(header['methods'])}.  ",
    ]
    if header["slow_methods"] and header["slow_scenes"] is not None:
        lines.append(f"**Cut:** {', '.join(header['slow_methods'])} ran on the first {header['slow_scenes']} scenes only "
                     f"(seeds {header['first_seed']}…{header['first_seed'] + header['slow_scenes'] - 1}) to keep the "
                     "run's time down; every other row covers every scene. Their `n` column says so.  ")
    lines += [
        f"P2P: cross_replace {p2p['cross_replace']}, self_replace {p2p['self_replace']}; blend: threshold "
        f"{p2p['blend_threshold']}, dilate {p2p['blend_dilate']}, start {p2p['blend_start']} "
        f"(mode {p2p['mode']}; null-text lr {header['null_text_lr'] or 'library default'}); composite "
        f"{p2p.get('composite', 0)} (`P2P + composite` only: the `P2P` rows' images composited over the "
        "reconstruction where they changed less than that fraction of their largest change).",
        "",
        "Columns: *n* = edits; *success* = the judge reads the whole target caption; *asked* = the named attribute "
        "became the target's; *kept* = the two others stayed; *PSNR outside vs input* = the edit vs the input over "
        "the region the edit must not touch (colour swap: outside the old shape dilated by 3 px; shape swap: "
        "outside the circumscribed disk dilated by 3 px; background swap: inside the old shape eroded by 3 px); "
        "*VAE ceiling* = the VAE round trip vs the input over the same region; *gap* = ceiling − edit (dB, mean per "
        "edit); *mask IoU* = the judge's shape mask of the edit vs the true shape (colour and background swaps); "
        "*s / edit* and *UNet calls / edit* = inversion + edit (the inversion counted in full for each edit; one "
        "call = one UNet forward on the whole batch); the peers count their own. Means over edits.",
    ]
    for kind in KINDS:
        rows = [r for r in table if r["kind"] == kind]
        if not rows:
            continue
        lines += ["", f"## {kind} swap", "", TABLE_HEAD, "|" + "---|" * 12]
        lines += [table_line(r, r["condition"], r["method"]) for r in rows]
    lines += ["", "## Summary: best condition per kind", "",
              "Best = highest success rate, then highest mean PSNR outside the edit region.", "",
              TABLE_HEAD.replace("| condition | method |", "| kind | row |"), "|" + "---|" * 12]
    lines += [table_line(r, r["kind"], f"{r['label']}: {r['condition']}" + ("" if r["method"] == "—" else
                                                                             f" / {r['method']}"))
              for r in best_rows(table)]
    lines += ["", "## Source replay", "",
              "Row 0 of every edit batch replays the inversion under the source caption; the share of edits whose "
              "row 0 the judge reads as the source caption, per method (all kinds and conditions):", "",
              "| method | replay read as source % |", "|---|---|"]
    for method in header["methods"]:
        rows = [r for r in table if r["method"] == method and r["replay_ok"] == r["replay_ok"]]
        n = sum(r["n"] for r in rows)
        if n:
            lines.append(f"| {method} | {_pct(sum(r['replay_ok'] * r['n'] for r in rows) / n)} |")
    lines += ["", "## Reading", "", ""]
    return "\n".join(lines)


# --- examples -------------------------------------------------------------------------------------------
def _short(edit: Edit) -> str:
    value = edit.target[ATTRIBUTE[edit.kind]]
    return f"-> {value}" + (" bg" if edit.kind == "background" else "")


def examples_grid(examples: list[dict], table: list[dict], scale: int = 2) -> np.ndarray:
    """Per kind one strip: for each example scene, input | no control | best condition (same method)."""
    tile, label_h = SIZE * scale, 14
    strips = []
    for kind in KINDS:
        mine = [r for r in table if r["kind"] == kind and r["condition"] not in PEERS]
        if not mine:
            continue
        best = max(mine, key=rank_key)
        cells, notes = [], []
        for ex in examples:
            edit = next(e for e in ex["edits"] if e.kind == kind)
            blank = np.zeros_like(ex["input"])  # a row that did not run on this scene (a cut slow method)
            cells += [ex["input"], ex.get((kind, "no control", best["method"]), blank),
                      ex.get((kind, best["condition"], best["method"]), blank)]
            notes.append(_short(edit))
        row = np.concatenate([np.kron(c, np.ones((scale, scale, 1), np.uint8)) for c in cells], axis=1)
        canvas = Image.new("RGB", (row.shape[1], row.shape[0] + 2 * label_h), (255, 255, 255))
        canvas.paste(Image.fromarray(row), (0, 2 * label_h))
        draw = ImageDraw.Draw(canvas)
        draw.text((2, 0), f"{kind} swap: input | no control / {best['method']} | {best['condition']} / "
                          f"{best['method']}", fill=(0, 0, 0))
        for k, note in enumerate(notes):
            draw.text((k * 3 * tile + 2, label_h), note, fill=(0, 0, 0))
        strips.append(np.asarray(canvas))
    return np.concatenate(strips, axis=0)


# --- the benchmark --------------------------------------------------------------------------------------
def command_line() -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE") if k in os.environ)
    return f"{env} python {shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}".strip()


def make_header(args, bench: Bench, methods: list[str], scenes_done: int, start: float) -> dict:
    info = bench.model.describe()
    return {"command": command_line(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch_threads": torch.get_num_threads(), "cpu": cpu_name(), "cpus": os.cpu_count(),
            "model": Path(info["model"]).name, "fingerprint": bench.model.fingerprint,
            "versions": {**info["versions"], "python": platform.python_version()},
            "scenes": args.scenes, "scenes_done": scenes_done, "partial": scenes_done < args.scenes,
            "first_seed": args.first_seed, "steps": args.steps, "guidance": args.guidance, "methods": methods,
            "slow_methods": args.slow_methods, "slow_scenes": args.slow_scenes, "null_text_lr": args.null_text_lr,
            "settings": {"p2p": asdict(bench.p2p), "no control": asdict(EditSettings(control=False, composite=0.0))},
            "minutes": (time.perf_counter() - start) / 60}


def rounded(value, digits: int = 6):
    """Floats to `digits` significant digits, recursively (the metrics and timings need no more)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def write_outputs(args, header: dict, table: list[dict], records: list[dict]) -> None:
    """JSON (header, table, one record per line) and markdown, each written atomically."""
    dump = lambda v: json.dumps(jsonable(rounded(v)), ensure_ascii=False)  # noqa: E731
    text = "\n".join(["{", f' "header": {dump(header)},', ' "table": [', ",\n".join("  " + dump(r) for r in table),
                      " ],", ' "records": [', ",\n".join("  " + dump(r) for r in records), " ]", "}", ""])
    write_text(args.json, text)
    write_text(args.md, markdown(header, table))


def methods_for(index: int, args) -> list[str]:
    if args.slow_scenes is None or index < args.slow_scenes:
        return list(args.methods)
    return [m for m in args.methods if m not in args.slow_methods]


def log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)


def benchmark(args, bench: Bench) -> None:
    start = time.perf_counter()
    conditions, peers = tuple(args.conditions), tuple(args.peers)
    records, examples = [], []
    for index in range(args.scenes):
        seed = args.first_seed + index
        t0 = time.perf_counter()
        done, images = run_scene(bench, seed, methods_for(index, args), conditions, peers,
                                 keep_images=index < EXAMPLE_SCENES)
        records += done
        if index < EXAMPLE_SCENES:
            examples.append(images)
        table = summarise(records, list(args.methods), conditions, peers)
        write_outputs(args, make_header(args, bench, list(args.methods), index + 1, start), table, records)
        hits = sum(bool(r.get("success")) for r in done)
        log(start, f"scene {index + 1}/{args.scenes} seed {seed} ({images['edits'][0].source}): {hits}/{len(done)} "
                   f"edits succeeded, {time.perf_counter() - t0:.1f} s")
    if examples and args.examples:
        save_image(args.examples, examples_grid(examples, table))
    for row in best_rows(table):
        print(f"{row['kind']:10s} {row['label']:15s} {row['condition']:12s} {row['method']:15s} "
              f"success {_pct(row['success']):>3s}%  PSNR {_num(row['psnr'])}  ceiling {_num(row['ceiling'])}  "
              f"gap {_num(row['gap'])} dB  n {row['n']}")


# --- tuning ---------------------------------------------------------------------------------------------
def sweep_edits(bench: Bench, inversions: list, settings: EditSettings, condition: str) -> list[dict]:
    """Every tuning edit under one setting (condition `P2P` or `P2P + blend`)."""
    records = []
    for seed, scene, edits, image, vae, inv in inversions:
        truth = shapes.shape_mask(scene, SIZE)
        for edit in edits:
            out, cost = bench.edit(inv, edit, settings_for(condition, edit, settings))
            records.append(record(seed, edit, condition, TUNE_METHOD, score(edit, truth, image, vae, out),
                                  cost))
    return records


def sweep(bench: Bench, inversions: list, grid: list[EditSettings], condition: str, start: float) -> list[dict]:
    rows = []
    for k, settings in enumerate(grid):
        records = sweep_edits(bench, inversions, settings, condition)
        per_kind = {kind: aggregate([r for r in records if r["kind"] == kind])["success"] for kind in KINDS}
        rows.append({"condition": condition, "settings": asdict(settings), **aggregate(records), "per_kind": per_kind})
        log(start, f"{condition} {k + 1}/{len(grid)} {describe_settings(settings, condition)}: success "
                   f"{_pct(rows[-1]['success'])}%, PSNR {_num(rows[-1]['psnr'])}")
    return sorted(rows, key=rank_key, reverse=True)


def describe_settings(s: EditSettings, condition: str) -> str:
    text = f"cross {s.cross_replace:g} self {s.self_replace:g}"
    if condition == "P2P + blend":
        text += f" threshold {s.blend_threshold:g} dilate {s.blend_dilate} start {s.blend_start:g}"
    return text


def tuning_markdown(header: dict, rows_a: list[dict], rows_b: list[dict], chosen: EditSettings) -> str:
    head = ("| rank | cross | self | threshold | dilate | start | success % | colour % | shape % | background % | "
            "PSNR outside | VAE ceiling | gap dB | mask IoU |")

    def line(i: int, r: dict, blend: bool) -> str:
        s = r["settings"]
        b = (f"{s['blend_threshold']:g} | {s['blend_dilate']} | {s['blend_start']:g}" if blend else "— | — | —")
        kinds = " | ".join(_pct(r["per_kind"][k]) for k in KINDS)
        return (f"| {i} | {s['cross_replace']:g} | {s['self_replace']:g} | {b} | {_pct(r['success'])} | {kinds} | "
                f"{_num(r['psnr'])} | {_num(r['ceiling'])} | {_num(r['gap'])} | {_num(r['iou'], '{:.3f}')} |")

    lines = [
        "# Edit tuning: Prompt-to-Prompt settings on the shapes-64 model",
        "",
        f"Command: `{header['command']}`  ",
        f"Date: {header['date']}; torch threads {header['torch_threads']}; CPU {header['cpu']}; "
        f"{header['minutes']:.1f} min in all.  ",
        f"Tuning scenes: seeds {TUNE_SEED}…{TUNE_SEED + TUNE_SCENES - 1} (never the benchmark's), 3 edits each "
        f"(colour, shape, background swap); method `{TUNE_METHOD}`, {header['steps']} steps, guidance "
        f"{header['guidance']:g}. Ranked by success rate, then mean PSNR outside the edit region (the columns are "
        "those of docs/edit-benchmark.md; success per kind in %).",
        "",
        f"Chosen: cross_replace {chosen.cross_replace:g}, self_replace {chosen.self_replace:g}, blend_threshold "
        f"{chosen.blend_threshold:g}, blend_dilate {chosen.blend_dilate}, blend_start {chosen.blend_start:g}.",
        "",
        "## (a) cross × self replace, no blend",
        "", head, "|" + "---|" * 14,
        *(line(i + 1, r, False) for i, r in enumerate(rows_a)),
        "",
        "## (b) local blend, with the best of (a)",
        "", head, "|" + "---|" * 14,
        *(line(i + 1, r, True) for i, r in enumerate(rows_b)),
        "",
    ]
    return "\n".join(lines)


def tune(args, bench: Bench) -> None:
    start = time.perf_counter()
    inversions = []
    for seed in range(TUNE_SEED, TUNE_SEED + TUNE_SCENES):
        scene, edits = draw_scene(seed)
        image = shapes.render(scene, SIZE)
        inversions.append((seed, scene, edits, image, bench.vae_round_trip(image),
                           bench.invert(image, scene.caption, TUNE_METHOD)))
    log(start, f"inverted {TUNE_SCENES} tuning scenes with {TUNE_METHOD}")
    grid_a = [EditSettings(cross_replace=c, self_replace=s) for c, s in itertools.product(SWEEP_CROSS, SWEEP_SELF)]
    rows_a = sweep(bench, inversions, grid_a, "P2P", start)
    best_a = EditSettings(**rows_a[0]["settings"])
    grid_b = [replace(best_a, blend_threshold=t, blend_dilate=d, blend_start=b)
              for t, d, b in itertools.product(SWEEP_THRESHOLD, SWEEP_DILATE, SWEEP_START)]
    rows_b = sweep(bench, inversions, grid_b, "P2P + blend", start)
    chosen = replace(EditSettings(**rows_b[0]["settings"]), blend=())
    header = {"command": command_line(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "torch_threads": torch.get_num_threads(), "cpu": cpu_name(), "steps": args.steps,
              "guidance": args.guidance, "minutes": (time.perf_counter() - start) / 60}
    write_text(args.tune_md, tuning_markdown(header, rows_a, rows_b, chosen))
    write_text(Path(args.tune_md).with_suffix(".json"),
               json.dumps(jsonable({"header": header, "a": rows_a, "b": rows_b, "chosen": asdict(chosen)}), indent=1))
    for name, rows in (("(a)", rows_a), ("(b)", rows_b)):
        print(f"{name} top 5:")
        for r in rows[:5]:
            print(f"  {describe_settings(EditSettings(**r['settings']), r['condition'])}:"
                  f" success {_pct(r['success'])}%, PSNR {_num(r['psnr'])}, gap {_num(r['gap'])}")
    print("full run: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_edit.py "
          f"--cross-replace {chosen.cross_replace:g} --self-replace {chosen.self_replace:g} "
          f"--blend-threshold {chosen.blend_threshold:g} --blend-dilate {chosen.blend_dilate} "
          f"--blend-start {chosen.blend_start:g}")


# --- command line ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    d = EditSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=60)
    p.add_argument("--first-seed", type=int, default=BENCH_SEED)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--slow-methods", nargs="*", default=["fixed-point", "null-text"], choices=list(METHODS),
                   help="methods that --slow-scenes limits")
    p.add_argument("--slow-scenes", type=int, default=None, help="run the slow methods on this many scenes only")
    p.add_argument("--null-text-lr", type=float, default=None, help="null-text's Adam lr (default: the library's)")
    p.add_argument("--cross-replace", type=float, default=d.cross_replace)
    p.add_argument("--self-replace", type=float, default=d.self_replace)
    p.add_argument("--blend-threshold", type=float, default=d.blend_threshold)
    p.add_argument("--blend-dilate", type=int, default=d.blend_dilate)
    p.add_argument("--blend-start", type=float, default=d.blend_start)
    p.add_argument("--composite", type=float, default=d.composite,
                   help="the composite threshold of `P2P + composite` (invedit edit's --composite)")
    p.add_argument("--json", default="docs/edit-benchmark.json")
    p.add_argument("--md", default="docs/edit-benchmark.md")
    p.add_argument("--examples", default="docs/edit-benchmark-examples.png",
                   help="grid of the first scenes: input | no control | best condition ('' to skip)")
    p.add_argument("--tune", action="store_true", help="sweep P2P's settings on the tuning scenes instead")
    p.add_argument("--tune-md", default="docs/edit-tuning.md")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    model = api.load(device="cpu")
    p2p = EditSettings(cross_replace=args.cross_replace, self_replace=args.self_replace,
                       blend_threshold=args.blend_threshold, blend_dilate=args.blend_dilate,
                       blend_start=args.blend_start, composite=args.composite)
    if args.composite == 0 and "P2P + composite" in args.conditions:
        raise SystemExit("--composite 0 leaves nothing to composite: drop 'P2P + composite' from --conditions")
    bench = Bench(model, args.steps, args.guidance, p2p, args.null_text_lr)
    bench.warm_up()
    if args.tune:
        tune(args, bench)
        return
    if args.peers:
        bench.peers = load_peers(api.default_model())
    benchmark(args, bench)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
