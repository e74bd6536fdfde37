"""`invedit run` and `invedit recipe`: recipes from the command line (thin skins over `recipes` and `runner`)."""
from __future__ import annotations

import json
import sys

import click

from .cli import Bars, _load, friendly, main


@main.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value (TOML syntax; a [defaults] key may be given bare), e.g. guidance=5.")
@click.option("--dry-run", is_flag=True, help="Say what would run and what is done already; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly
def run_recipe_command(recipe, sets, dry_run, as_json):
    """Run a RECIPE (a TOML file): invert, reconstruct, edit and interpolate its inputs.

    A rerun skips every task that finished with the same settings (out/manifest.jsonl) and reuses cached
    inversions; a failing input is recorded in out/summary.json and the others go on. The exit code is 1
    when any task failed. Launched as several processes (accelerate launch, torchrun), the inputs are split
    between them and the main process writes the summary and the page.

    \b
    Examples:
      invedit run recipes/recolour-shapes.toml
      invedit run recipes/folder-roundtrip.toml --set steps=20 --set out=runs/quick --dry-run
      accelerate launch --cpu --num_processes 2 -m invedit run recipes/folder-roundtrip.toml
    """
    from .recipes import load_recipe
    from .runner import run_recipe

    parsed = load_recipe(recipe, list(sets))
    m = _load(parsed.model or None, None, parsed.device, parsed.dtype)
    summary = run_recipe(m, parsed, recipe, dry_run=dry_run, progress=Bars())
    if summary["shard"]["index"] > 0:  # another process of a sharded run: the main process reports
        failed = sum(r["status"] == "failed" for r in summary["tasks"])
        sys.exit(1 if failed else 0)
    if as_json:
        from .report import jsonable

        click.echo(json.dumps(jsonable(summary), indent=2, default=str))
    else:
        for row in summary["tasks"]:
            extra = f": {row['error']}" if row["status"] == "failed" else ""
            click.echo(f"{row['status']:>12s}  {row['task']}{extra}")
        c = summary["counts"]
        click.echo(f"{c['done']} done, {c['done earlier']} done earlier (skipped), {c['failed']} failed"
                   + (f", {c['would run']} would run" if dry_run else "") +
                   ("" if dry_run else f"; summary: {summary['out']}/summary.json, page: {summary['page']}"))
    if summary["counts"]["failed"]:
        sys.exit(1)


@main.group()
def recipe() -> None:
    """Check a recipe or print its JSON schema (for editors).

    \b
    Example:
      invedit recipe check recipes/recolour-shapes.toml
    """


@recipe.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe value, as `run` does.")
@friendly
def recipe_check(path, sets):
    """Validate a recipe and list its inputs, without loading a model.

    \b
    Example:
      invedit recipe check recipes/recolour-shapes.toml
    """
    from pathlib import Path

    from .recipes import items_of, load_recipe, output_folder

    parsed = load_recipe(path, list(sets))
    base = Path(path).resolve().parent
    items = items_of(parsed, base, path)
    out = output_folder(base, parsed, path)
    click.echo(f"{path}: valid; {len(items)} inputs × {len(parsed.steps)} steps "
               f"({', '.join(s.kind for s in parsed.steps)}); outputs in {out}")


@recipe.command("schema")
def recipe_schema():
    """Print the JSON schema of a recipe.

    \b
    Example:
      invedit recipe schema > recipe.schema.json
    """
    from .recipes import schema

    click.echo(json.dumps(schema(), indent=2))
