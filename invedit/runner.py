"""Running a recipe: every (item, step) once, resumable, with a manifest and a summary.

1. Items and tasks are planned before any work (`recipes.items_of`): a path that matches nothing fails here.
2. Each task has a key (its step's settings, the image's content, the model's fingerprint, the inversion
   settings); the manifest (`out/manifest.jsonl`, one line appended per finished task) says which keys are
   done. A task whose key is done and whose outputs all exist is skipped; a rerun after a kill redoes only
   what had not finished (each command's outputs appear all at once, `io.output_set`).
3. Inversions are made `batch_size` images at a time (one UNet batch) and cached in `out/.cache/` by their own
   key, shared by every step and run that needs them.
4. A failing task is recorded with its message and the batch goes on (`fail_fast` stops at the first).
5. `out/summary.json` lists every task: status, outputs, figures, seconds; and the totals; `out/report.html`
   shows them as a sortable page with thumbnails (`page.py`).
6. Under `accelerate launch` or `torchrun` (WORLD_SIZE > 1) the items are split between the processes
   (accelerate's `PartialState.split_between_processes`); the to-do list is read from the manifest before any
   process writes, each process appends to its own manifest file and inverts only its items, and after all
   are done the main process runs the steps over all items (interpolate) and writes the summary and page.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .api import InveditError, invert_image, reconstruct
from .io import ImageError, write_text
from .recipes import (InterpolateStep, InvertStep, Item, Progress, Recipe, ReconstructStep, RecipeError,
                      _digest, file_digest, items_of, output_folder)
from .store import SUFFIX, InversionFileError, save_inversion


@dataclass(frozen=True)
class Task:
    step_index: int
    step: Any
    item: Optional[Item]  # None: a step over all items (interpolate)
    key: str

    @property
    def label(self) -> str:
        return f"{self.item.name if self.item else 'all inputs'} · step {self.step_index + 1} ({self.step.kind})"


@dataclass(frozen=True)
class Shard:
    """This process's part of a run: the only process, or one of several under `accelerate launch`/`torchrun`."""

    index: int = 0
    count: int = 1
    state: Any = None  # accelerate's PartialState when there are several

    @classmethod
    def detect(cls, device) -> "Shard":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        try:
            from accelerate import PartialState
        except ImportError:
            raise InveditError("this run was launched as several processes (WORLD_SIZE > 1), which needs "
                               "accelerate: pip install accelerate") from None
        state = PartialState(cpu=device.type == "cpu")  # without cpu=True every CPU process would do everything
        return cls(state.process_index, state.num_processes, state)

    @property
    def main(self) -> bool:
        return self.index == 0

    def mine(self, items: list[Item]) -> list[Item]:
        if self.count == 1:
            return items
        with self.state.split_between_processes(items) as part:
            return list(part)

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


class Manifest:
    """Finished tasks, one JSON line each, appended (and synced) only when a task's outputs are all in place.

    Process k of a sharded run appends to `manifest-k.jsonl` (the main process to `manifest.jsonl`); every
    process reads them all."""

    def __init__(self, out: Path, shard: int = 0):
        self.path, self.done = out / ("manifest.jsonl" if shard == 0 else f"manifest-{shard}.jsonl"), {}
        for path in sorted(out.glob("manifest*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.done[record["key"]] = record
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill: that task simply runs again

    def finished(self, key: str) -> Optional[dict]:
        record = self.done.get(key)
        if record and all(Path(p).exists() for p in record.get("paths", {}).values()):
            return record
        return None

    def add(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[record["key"]] = record


def plan(recipe: Recipe, items: list[Item], fingerprint: str) -> list[Task]:
    """Every task of the recipe, in order: per item for item steps, once for interpolate."""
    digests = {item.name: file_digest(item.path) for item in items}
    defaults = recipe.defaults.key()
    tasks = []
    for k, step in enumerate(recipe.steps):
        settings = step.model_dump()
        if isinstance(step, InterpolateStep):
            key = _digest(settings, [(i.prompt, digests[i.name]) for i in items], defaults, fingerprint)
            tasks.append(Task(k, step, None, key))
            continue
        for item in items:
            key = _digest(k, settings, item.name, item.prompt, item.targets, digests[item.name], defaults, fingerprint)
            tasks.append(Task(k, step, item, key))
    return tasks


class Runner:
    """Runs the tasks of one recipe against one model."""

    def __init__(self, model, recipe: Recipe, out: Path, items: list[Item], progress: Progress):
        self.model, self.recipe, self.out, self.items, self.progress = model, recipe, out, items, progress
        self.settings = recipe.defaults.inversion()
        self.cache = out / ".cache"

    def _inside(self, folder: Path) -> Path:
        """Refuse an output folder that a link takes outside `out` (an attacker's, or a user's mistake)."""
        for p in (folder, self.cache):
            if p.is_symlink() or (p.exists() and not p.resolve().is_relative_to(self.out.resolve())):
                raise InveditError(f"{p} is a link out of the recipe's out folder {self.out}: remove it")
        return folder

    def cached(self, item: Item) -> Path:
        key = _digest(file_digest(item.path), self.model.fingerprint, item.prompt, self.recipe.defaults.key())
        return self.cache / f"{key}{SUFFIX}"

    def invert_in_batches(self, items: list[Item]) -> None:
        """Fill the cache batch by batch: items of one working size, in recipe order, `batch_size` at a time. The
        batches are fixed by the recipe, so a batch is recomputed whole after a kill and gives the same numbers.
        An unreadable item is left out here; its own tasks report it."""
        from .api import invert_many
        from .io import load_image

        d, groups = self.recipe.defaults, {}
        for item in items:
            try:
                prepared = load_image(item.path, self.model.multiple,
                                      self.model.native_size if d.max_side is None else d.max_side, d.fit)
            except (ImageError, ValueError):
                continue
            groups.setdefault(tuple(prepared.pixels.shape), []).append((item, prepared))
        batches = [group[k:k + d.batch_size] for group in groups.values() for k in range(0, len(group), d.batch_size)]
        for n, batch in enumerate(batches):
            if all(self.cached(item).is_file() for item, _ in batch):
                continue
            try:
                made = invert_many(self.model, [p for _, p in batch], [i.prompt for i, _ in batch], self.settings,
                                   self.progress)
            except (InveditError, ValueError):
                continue  # each item tries again alone, and reports its own error
            for (item, _), (inversion, _) in zip(batch, made):
                save_inversion(self.cached(item), inversion)
            self.progress("invert batches", n + 1, len(batches))

    def inversion(self, item: Item) -> Path:
        """The item's inversion, from the cache or made now and cached (atomically)."""
        d = self.recipe.defaults
        path = self.cached(item)
        if not path.is_file():
            made = invert_image(self.model, item.path, item.prompt, self.settings, None, d.max_side, d.fit,
                                self.progress)
            save_inversion(path, made.inversion)
        return path

    def run(self, task: Task) -> tuple[dict[str, Path], dict[str, Any]]:
        """Run one task; (outputs, figures)."""
        step, item = task.step, task.item
        if isinstance(step, InterpolateStep):
            return self._interpolate(step)
        folder = self._inside(self.out / item.name)
        cached = self.inversion(item)
        if isinstance(step, InvertStep):
            from .store import load_inversion

            target = folder / f"{item.name}{SUFFIX}"
            save_inversion(target, load_inversion(cached))
            return {"inversion": target}, {}
        if isinstance(step, ReconstructStep):
            result = reconstruct(self.model, cached, folder, item.name, self.progress)
            return result.paths, {"metrics": result.report["metrics"], "latent_error": result.report["latent_error"]}
        targets = list(item.targets if item.targets is not None else step.targets)
        if not targets:
            raise InveditError("no edit targets: give targets in the edit step or in this input")
        from .api import edit

        result = edit(self.model, cached, None, targets, step.settings(), self.settings, folder, progress=self.progress,
                      stem=item.name)
        return result.paths, {"edits": [{"target": e["target"], "kept": e["kept"]} for e in result.report["edits"]],
                              "network_calls": result.report["network_calls"]}

    def _interpolate(self, step: InterpolateStep) -> tuple[dict[str, Path], dict[str, Any]]:
        from .morph import InterpolationSettings, interpolate

        items = self.items
        inversions = [self.inversion(item) for item in items]
        interp = InterpolationSettings(frames=step.frames, mode=step.mode, renormalise=step.renormalise,
                                       spacing=step.spacing, fps=step.fps)
        result = interpolate(self.model, inversions, [i.prompt for i in items], self.settings, interp,
                             self._inside(self.out / "interpolation"), progress=self.progress, names=[i.name for i in items])
        return result.paths, {"segments": [{k: s[k] for k in ("from", "to", "consecutive_mean", "spread")}
                                           for s in result.report["segments"]]}


def run_recipe(model, recipe: Recipe, recipe_path: str | os.PathLike, *, dry_run: bool = False,
               progress: Progress = lambda *a: None) -> dict[str, Any]:
    """Run (or, with `dry_run`, plan) a recipe; returns the summary, also written to out/summary.json."""
    where = Path(recipe_path)
    base = where.resolve().parent
    out = output_folder(base, recipe, str(where))
    items = items_of(recipe, base, str(where))  # 1.
    tasks = plan(recipe, items, model.fingerprint)
    shard = Shard.detect(model.device) if not dry_run else Shard()  # 6.
    manifest = Manifest(out, shard.index)
    finished = {t.key: manifest.finished(t.key) for t in tasks}  # the to-do list, before anyone writes
    shard.wait()
    mine = {i.name for i in shard.mine(items)}
    runner = Runner(model, recipe, out, items, progress)
    start, rows, stopped = time.perf_counter(), [], False
    if not dry_run and any(not finished[t.key] for t in tasks if t.item and t.item.name in mine):
        runner.invert_in_batches([i for i in items if i.name in mine])  # 3.

    def run(batch: list[Task]) -> None:
        nonlocal stopped
        pending, ran = sum(not finished[t.key] for t in batch) if not dry_run else 0, 0
        if pending:
            progress("recipe", 0, pending)
        for task in batch:  # 2.
            done = finished[task.key]
            row = {"task": task.label, "item": task.item.name if task.item else None, "step": task.step_index + 1,
                   "kind": task.step.kind, "key": task.key}
            if done or dry_run:
                rows.append({**row, "status": "done earlier" if done else "would run",
                             **({"paths": done["paths"], "figures": done.get("figures", {})} if done else {})})
                continue
            if stopped:
                continue
            t0 = time.perf_counter()
            try:
                paths, figures = runner.run(task)  # 3.
            except (InveditError, ImageError, InversionFileError, ValueError) as exc:  # 4.
                rows.append({**row, "status": "failed", "error": str(exc), "seconds": time.perf_counter() - t0})
                stopped = recipe.fail_fast
                ran += 1
                progress("recipe", ran, pending)
                continue
            record = {**row, "status": "done", "paths": {k: str(v) for k, v in paths.items()}, "figures": figures,
                      "seconds": time.perf_counter() - t0}
            manifest.add(record)
            rows.append(record)
            ran += 1
            progress("recipe", ran, pending)

    run([t for t in tasks if t.item is not None and t.item.name in mine])
    shards = out / ".shards"
    if shard.count > 1 and not shard.main:
        write_text(shards / f"rows-{shard.index}.json", json.dumps(rows, default=str))
    shard.wait()
    if not shard.main:
        return {"shard": {"index": shard.index, "count": shard.count}, "tasks": rows}
    for k in range(1, shard.count):
        rows += json.loads((shards / f"rows-{k}.json").read_text(encoding="utf-8"))
        (shards / f"rows-{k}.json").unlink()
    if shard.count > 1:
        shards.rmdir()
    run([t for t in tasks if t.item is None])
    order = {t.key: n for n, t in enumerate(tasks)}
    rows.sort(key=lambda r: order[r["key"]])
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "done earlier", "failed", "would run")}
    summary = {"invedit": __version__, "recipe": str(where), "out": str(out), "model": model.describe(),
               "defaults": recipe.defaults.model_dump(), "items": [i.name for i in items], "tasks": rows,
               "counts": counts, "seconds": time.perf_counter() - start,
               "shard": {"index": shard.index, "count": shard.count}}
    if not dry_run:  # 5.
        from .page import render
        from .report import jsonable

        summary["page"] = str(out / "report.html")
        write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2, default=str))
        write_text(out / "report.html", render(summary, out / "report.html"))
    return summary


__all__ = ["Task", "Shard", "Manifest", "plan", "run_recipe", "RecipeError"]
