"""The `invedit` command line: thin commands over `invedit.api`. The only place that prints or exits.

torch and diffusers are imported inside the commands, so `invedit --help` answers at once.
"""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from . import __version__

METHOD_CHOICES = ("ddim", "fixed-point", "negative-prompt", "null-text", "direct", "edict", "bdia")  # = methods.METHODS


class Bars:
    """Draws one click progress bar (with its ETA) per stage from the library's progress callback, on stderr.

    Outer stages (a recipe's tasks) span many inner ones, so they print a line per step of theirs instead of a
    bar that the inner bars would overwrite: done/total, elapsed, ETA."""

    OUTER = ("recipe",)

    def __init__(self, enabled: bool = True):
        self.enabled, self.stage, self.bar, self.done = enabled, None, None, 0
        self.started: dict[str, float] = {}

    def _line(self, stage: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if done == 0:
            self.started[stage] = now
        elapsed = now - self.started.setdefault(stage, now)
        eta = elapsed / max(done, 1) * (total - done) if done else float("nan")
        self.close()
        click.echo(f"{stage}: {done}/{total} done · {_duration(elapsed)} elapsed"
                   + (f" · ETA {_duration(eta)}" if done < total and eta == eta else ""), err=True)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage in self.OUTER:
            self._line(stage, done, total)
            return
        if stage != self.stage or done < self.done:
            self.close()
            self.stage, self.done = stage, 0
            self.bar = click.progressbar(length=total, label=f"{stage:12s}", file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar, self.stage = None, None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def friendly(command: Callable) -> Callable:
    """The one place where errors become messages: the library's input errors and failed writes (a read-only
    folder, a full disk) become one line with exit code 1; anything unexpected becomes one line that says to
    rerun with --debug for the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .api import InveditError
        from .io import ImageError
        from .store import InversionFileError

        try:
            return command(*args, **kwargs)
        except (InveditError, ImageError, InversionFileError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"could not read or write{where}: {exc.strerror or exc}") from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise click.ClickException(f"unexpected error: {type(exc).__name__}: {exc} (rerun with "
                                       "`invedit --debug ...` for the traceback, and please report it)") from None

    return wrapper


def model_options(f: Callable) -> Callable:
    f = click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
                     help="Network precision (the VAE and the latent arithmetic stay fp32).")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")(f)
    f = click.option("--model-config", default=None,
                     help="Diffusers folder or hub id with the configs of a single-file checkpoint.")(f)
    f = click.option("--model", "-m", default=None,
                     help="Diffusers folder, .safetensors file or hub id [default: the shipped shapes-64].")(f)
    return f


def inversion_options(many: bool = False, prompt: bool = True, method: str = "bdia",
                      guidance: float = 1.0) -> Callable[[Callable], Callable]:
    """The options of an inversion; with `many`, --prompt may be repeated (one per input); without `prompt`,
    the command names its prompt otherwise (edit's --source)."""

    def decorate(f: Callable) -> Callable:
        f = click.option("--negative-prompt", default="", help="Unconditional prompt of guidance.")(f)
        f = click.option("--bdia-gamma", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                         help="bdia: γ of its update (1 is time-symmetric; below 1 the inversion grows unstable).")(f)
        f = click.option("--edict-mix", type=click.FloatRange(0.5, 1, max_open=True), default=0.93, show_default=True,
                         help="edict: mixing weight p of the coupled sequences.")(f)
        f = click.option("--null-text-steps", type=click.IntRange(0), default=10, show_default=True,
                         help="null-text: optimisation steps per DDIM step at most.")(f)
        f = click.option("--null-text-lr", type=click.FloatRange(0, min_open=True), default=1e-2, show_default=True,
                         help="null-text: Adam learning rate (0.1 suits the shipped shapes model).")(f)
        f = click.option("--pivot", type=click.Choice(["ddim", "fixed-point"]), default="ddim", show_default=True,
                         help="negative-prompt, null-text, direct: how the guidance-1 pivot trajectory is inverted.")(f)
        f = click.option("--max-iter", type=click.IntRange(1), default=20, show_default=True,
                         help="fixed-point: iterations per step at most.")(f)
        f = click.option("--tol", type=click.FloatRange(0), default=1e-6, show_default=True,
                         help="fixed-point: relative residual of a step to stop at.")(f)
        f = click.option("--guidance", "-g", type=float, default=guidance, show_default=True,
                         help="Classifier-free guidance scale the inversion is made for and regenerates with.")(f)
        f = click.option("--method", type=click.Choice(METHOD_CHOICES), default=method, show_default=True,
                         help="bdia: exact at one network call a step; ddim: plain DDIM inversion; fixed-point: "
                              "each step solved by iteration; negative-prompt, null-text, direct, edict: faithful "
                              "under guidance (see README).")(f)
        f = click.option("--steps", "-n", type=click.IntRange(1, 1000), default=50, show_default=True,
                         help="DDIM steps (the same schedule inverts and regenerates).")(f)
        if prompt:
            f = click.option("--prompt", "-p", multiple=many, default=() if many else "",
                             help="Text the image is inverted under" + (" (once, or once per input)." if many else "."))(f)
        return f

    return decorate


def image_options(f: Callable) -> Callable:
    f = click.option("--fit", type=click.Choice(["pad", "crop"]), default="pad", show_default=True,
                     help="Reach the model's size multiple by reflection padding or a centre crop.")(f)
    f = click.option("--max-side", type=click.IntRange(0), default=None,
                     help="Downscale so the longer side is at most this [default: the model's native size; 0: none].")(f)
    return f


def _writable(ctx, param, value: str) -> str:
    """--out is checked before any work: its nearest existing ancestor must be a folder we may write into."""
    import os
    from pathlib import Path

    path = Path(value).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise click.BadParameter(f"{probe} is a file, so {value} cannot be a folder", param=param)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{probe} is not writable (pick another --out)", param=param)
    return value


def output_options(f: Callable) -> Callable:
    f = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (progress stays on stderr).")(f)
    f = click.option("--out", "-o", type=click.Path(file_okay=False), default="runs", show_default=True,
                     callback=_writable, help="Folder for the outputs.")(f)
    return f


def _settings(steps, method, guidance, tol, max_iter, pivot, null_text_lr, null_text_steps, negative_prompt,
              edict_mix, bdia_gamma):
    from .api import InversionSettings

    return InversionSettings(steps=steps, method=method, guidance=guidance, tol=tol, max_iter=max_iter,
                             negative_prompt=negative_prompt, pivot=pivot, null_text_steps=null_text_steps,
                             null_text_lr=null_text_lr, edict_mix=edict_mix, bdia_gamma=bdia_gamma)


def announce(settings, images: int = 1, rows: int = 1) -> None:
    """Say up front how many network calls a run will make (on a large model each can take seconds): the
    inversion's (an upper bound) and the regeneration's, with the batch each call carries."""
    from .methods import METHODS

    invert, regenerate = METHODS[settings.method].calls(settings.steps, settings.options())
    g = 1 if settings.guidance == 1.0 else 2  # classifier-free guidance: [uncond, cond] rows in one call
    plural = lambda n, word: f"{n} {word}{'s' if n != 1 else ''}"  # noqa: E731
    click.echo(f"{settings.method}, {settings.steps} steps: up to {plural(invert * images, 'network call')} to "
               f"invert {plural(images, 'image')} (on up to {plural(g, 'row')} each), {regenerate} to regenerate "
               f"(on {plural(rows * g, 'row')} each)", err=True)


INVERSION_OPTIONS = ("prompt", "steps", "method", "guidance", "tol", "max_iter", "pivot", "null_text_lr",
                     "null_text_steps", "negative_prompt", "edict_mix", "bdia_gamma", "max_side", "fit")


def _refuse_for_saved(files) -> None:
    """Options that make an inversion cannot change one already saved: refuse them when given with saved files."""
    if not files:
        return
    ctx = click.get_current_context()
    given = [p for p in ctx.command.params if p.name in INVERSION_OPTIONS
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        names = ", ".join(p.opts[0] for p in given)
        raise click.UsageError(f"{names} cannot apply to a saved inversion ({files[0]}): it carries its own prompt, "
                               "method, steps, guidance and image; invert the image again to change them")


def _load(model, model_config, device, dtype):
    from . import api

    if model is not None and not model.strip():
        raise click.BadParameter("is empty: give a diffusers folder, a .safetensors file or a hub id, or leave "
                                 "--model out for the shipped model", param_hint="--model")
    return api.load(model, device=device, dtype=dtype, model_config=model_config)


def _show(report: dict, paths: dict, warnings, as_json: bool) -> None:
    from .report import format_table, jsonable

    for w in warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if as_json:
        click.echo(json.dumps(jsonable({**report, "files": {k: str(v) for k, v in paths.items()}}), indent=2))
        return
    click.echo(format_table(report))
    for kind, path in paths.items():
        click.echo(f"{kind:>15s}: {path}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="invedit")
@click.option("--debug", is_flag=True, help="Show the full traceback of an unexpected error.")
def main(debug: bool) -> None:
    """invedit: invert real photos into a diffusion model's noise, regenerate and edit them faithfully.

    \b
    Try it on the model that ships in the repository (no download):
      invedit roundtrip assets/photos/astronaut.png --prompt "a photo" --out runs/astro
      invedit edit assets/scenes/yellow-star.png -s "a yellow star on a blue background" \\
          -t "a red star on a blue background" --out runs/edit
      invedit run recipes/recolour-shapes.toml
    """


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@model_options
@inversion_options()
@image_options
@output_options
@friendly
def invert(image, model, model_config, device, dtype, prompt, steps, method, guidance, tol, max_iter, pivot,
           null_text_lr, null_text_steps, negative_prompt, edict_mix, bdia_gamma, max_side, fit, out, as_json):
    """Invert IMAGE to the noise x_T that regenerates it; writes OUT/<name>.inversion.safetensors.

    \b
    Example:
      invedit invert assets/photos/coffee.png --prompt "a cup of coffee" --steps 50 --out runs/coffee
    """
    from . import api

    api.check_image(image)  # a bad file fails before the model loads
    m = _load(model, model_config, device, dtype)
    bars = Bars()
    settings = _settings(steps, method, guidance, tol, max_iter, pivot, null_text_lr, null_text_steps,
                         negative_prompt, edict_mix, bdia_gamma)
    announce(settings)
    result = api.invert_image(m, image, prompt, settings, out, max_side, fit, bars)
    stats = result.inversion.stats
    for w in result.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    summary = {"inversion": str(result.path), "method": method, "steps": steps, "guidance": guidance,
               "network_calls": stats["network_calls"], "max_residual": stats["max_residual"],
               "seconds": stats["seconds"], "image": api.describe_image(m, result.prepared)}
    if as_json:
        from .report import jsonable

        click.echo(json.dumps(jsonable(summary), indent=2))
    else:
        residual = stats["max_residual"]
        residual = "not measured" if residual != residual else f"{residual:.2e}"
        click.echo(f"inverted {image} with {method} in {stats['network_calls']} network calls "
                   f"({sum(stats['seconds'].values()):.1f}s); largest step residual {residual}")
        click.echo(f"      inversion: {result.path}")


@main.command()
@click.argument("inversion", type=click.Path(exists=True, dir_okay=False))
@model_options
@output_options
@friendly
def reconstruct(inversion, model, model_config, device, dtype, out, as_json):
    """Regenerate the image of an INVERSION file and report how faithful it is.

    The model must be the one the inversion was made with (checked by a weight fingerprint).

    \b
    Example:
      invedit reconstruct runs/coffee/coffee.inversion.safetensors --out runs/coffee
    """
    from . import api

    m = _load(model, model_config, device, dtype)
    result = api.reconstruct(m, inversion, out, progress=Bars())
    _show(result.report, result.paths, result.warnings, as_json)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@model_options
@inversion_options()
@image_options
@output_options
@friendly
def roundtrip(image, model, model_config, device, dtype, prompt, steps, method, guidance, tol, max_iter, pivot,
              null_text_lr, null_text_steps, negative_prompt, edict_mix, bdia_gamma, max_side, fit, out, as_json):
    """Invert IMAGE and regenerate it: inversion file, reconstruction, side-by-side picture and report.

    \b
    Example (plain DDIM against the exact fixed-point inverse):
      invedit roundtrip assets/photos/astronaut.png --method ddim --out runs/plain
      invedit roundtrip assets/photos/astronaut.png --method fixed-point --out runs/exact
    """
    from . import api

    api.check_image(image)
    m = _load(model, model_config, device, dtype)
    settings = _settings(steps, method, guidance, tol, max_iter, pivot, null_text_lr, null_text_steps,
                         negative_prompt, edict_mix, bdia_gamma)
    announce(settings)
    result = api.roundtrip(m, image, prompt, settings, out, max_side, fit, Bars())
    _show(result.report, result.paths, result.warnings, as_json)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@model_options
@inversion_options(many=True, method="fixed-point")  # smoother frames than bdia's: see README
@click.option("--frames", "-f", type=click.IntRange(2, 1000), default=16, show_default=True,
              help="Frames per pair of inputs, both ends included.")
@click.option("--mode", type=click.Choice(["slerp", "lerp"]), default="slerp", show_default=True,
              help="How the noises are mixed (slerp keeps their norm).")
@click.option("--renormalise/--no-renormalise", default=False, show_default=True,
              help="Give mixed noise the mixed per-channel mean and std of the ends (DiffMorpher's AdaIN).")
@click.option("--spacing", type=click.Choice(["even", "uniform"]), default="even", show_default=True,
              help="Even weights, or weights that make consecutive frames equally far apart (one more pass).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Frames per UNet batch.")
@click.option("--fps", type=click.FloatRange(0.1, 100), default=8.0, show_default=True,
              help="GIF and MP4 frame rate.")
@image_options
@output_options
@friendly
def interpolate(inputs, model, model_config, device, dtype, prompt, steps, method, guidance, tol, max_iter, pivot,
                null_text_lr, null_text_steps, negative_prompt, edict_mix, bdia_gamma, frames, mode, renormalise, spacing,
                batch_size, fps, max_side, fit, out, as_json):
    """Interpolate between two or more photos (or saved .inversion.safetensors files).

    Photos are inverted first (and their inversions saved to OUT, to reuse). Writes OUT/frames/*.png,
    OUT/sheet.png, OUT/morph.gif, OUT/morph.mp4 and OUT/interpolation.json. --prompt may be given once
    for all inputs or once per input.

    \b
    Example:
      invedit interpolate a.png b.png --prompt "a red circle on a blue background" \\
          --prompt "a yellow circle on a green background" --frames 16 --renormalise --spacing uniform --out runs/morph
      invedit interpolate runs/a.inversion.safetensors runs/b.inversion.safetensors --frames 16 --out runs/morph
    """
    from . import api
    from .morph import InterpolationSettings
    from .morph import interpolate as run_interpolation
    from .report import jsonable

    if len(inputs) < 2:
        raise click.UsageError("give at least two inputs")
    _refuse_for_saved([i for i in inputs if i.endswith(".safetensors")])
    for item in inputs:
        if not item.endswith(".safetensors"):
            api.check_image(item)
    interp = InterpolationSettings(frames=frames, mode=mode, renormalise=renormalise, spacing=spacing,
                                   batch_size=batch_size, fps=fps)
    m = _load(model, model_config, device, dtype)
    settings = _settings(steps, method, guidance, tol, max_iter, pivot, null_text_lr, null_text_steps,
                         negative_prompt, edict_mix, bdia_gamma)
    if not any(i.endswith(".safetensors") for i in inputs):
        announce(settings, images=len(inputs))
    prompts = list(prompt) or [""]
    result = run_interpolation(m, inputs, prompts, settings, interp, out, max_side, fit, Bars())
    for w in result.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if as_json:
        click.echo(json.dumps(jsonable({**result.report, "files": {k: str(v) for k, v in result.paths.items()}}),
                              indent=2))
        return
    for seg in result.report["segments"]:
        click.echo(f"{seg['from']} → {seg['to']}: {len(seg['weights'])} frames, consecutive distance "
                   f"{seg['consecutive_mean']:.4f} ± spread {seg['spread']:.3f} (std/mean, lower is smoother)")
    for e in result.report["endpoints"]:
        click.echo(f"{e['input']}: end frame {e['frame_psnr_vs_input']:.2f} dB vs input, its own reconstruction "
                   f"{e['reconstruction_psnr_vs_input']:.2f} dB")
    for kind, path in result.paths.items():
        click.echo(f"{kind:>8s}: {path}")


@main.command()
@model_options
@click.option("--prompt", "-p", required=True, help="What to draw.")
@click.option("--negative-prompt", default="", help="Unconditional prompt of guidance.")
@click.option("--count", type=click.IntRange(1, 64), default=1, show_default=True, help="Images to draw.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the starting noise.")
@click.option("--steps", "-n", type=click.IntRange(1, 1000), default=50, show_default=True, help="DDIM steps.")
@click.option("--guidance", "-g", type=float, default=5.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--eta", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="DDIM η: 0 is deterministic; 1 is DDPM-like (seeded).")
@click.option("--size", type=click.IntRange(8), default=None, help="Image side [default: the model's native size].")
@output_options
@friendly
def sample(model, model_config, device, dtype, prompt, negative_prompt, count, seed, steps, guidance, eta, size,
           out, as_json):
    """Generate images from seeded noise with plain DDIM (no input photo).

    \b
    Example:
      invedit sample --prompt "a red circle on a blue background" --count 4 --seed 0 --out runs/samples
    """
    from . import api
    from .report import jsonable

    m = _load(model, model_config, device, dtype)
    result = api.generate(m, prompt, n=count, seed=seed, steps=steps, guidance=guidance,
                          negative_prompt=negative_prompt, eta=eta, size=size, out=out, progress=Bars())
    if as_json:
        click.echo(json.dumps(jsonable({**result.settings, "files": [str(p) for p in result.paths]}), indent=2))
    else:
        for p in result.paths:
            click.echo(str(p))


@main.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@friendly
def info(model, model_config, device, dtype, as_json):
    """Describe a model: kind, device, dtype, prediction type, schedule, sizes and library versions.

    \b
    Example:
      invedit info --model assets/models/shapes-64
    """
    m = _load(model, model_config, device, dtype)
    described = m.describe()
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for key, value in described.items():
        click.echo(f"{key:>17s}: {value}")


# Commands defined in their own modules register themselves on `main` when imported.
from . import cli_edit, cli_recipes  # noqa: E402,F401
