"""`invedit edit`: Prompt-to-Prompt edits from the command line (a thin skin over `api.edit`)."""
from __future__ import annotations

import json

import click

from .cli import Bars, _load, _refuse_for_saved, _settings, announce, friendly, image_options, inversion_options, \
    main, model_options, output_options


def _reweights(values) -> tuple[tuple[str, float], ...]:
    pairs = []
    for item in values:
        word, sep, scale = item.partition("=")
        try:
            pairs.append((word.strip(), float(scale)))
        except ValueError:
            sep = ""
        if not sep or not word.strip():
            raise click.BadParameter(f"{item!r} is not WORD=SCALE (e.g. red=2 or background=0.5)",
                                     param_hint="--reweight")
    return tuple(pairs)


@main.command()
@click.argument("source_file", metavar="IMAGE|INVERSION", type=click.Path(exists=True, dir_okay=False))
@click.option("--source", "-s", default=None,
              help="Prompt that describes the image as it is (an inversion file carries its own).")
@click.option("--target", "-t", "targets", multiple=True, required=True,
              help="Prompt of the edited image; repeat for several edits in one batch.")
@model_options
@inversion_options(prompt=False, method="direct", guidance=7.5)
@click.option("--cross-replace", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Fraction of steps whose cross-attention maps come from the source branch (P2P).")
@click.option("--self-replace", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of steps whose self-attention maps come from the source branch.")
@click.option("--blend", multiple=True, metavar="WORD",
              help="Local blend: only the region these words attend to may change (repeatable).")
@click.option("--keep", multiple=True, metavar="WORD",
              help="Keep the region these words attend to as it is; alone, everything else may change.")
@click.option("--blend-threshold", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True,
              help="Blend mask: word attention above this fraction of its peak.")
@click.option("--blend-dilate", type=click.IntRange(0), default=1, show_default=True,
              help="Blend mask: grow by this many attention cells.")
@click.option("--blend-start", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of steps before blending starts.")
@click.option("--composite", type=click.FloatRange(0, 1, max_open=True), default=0.3, show_default=True,
              help="Pixel composite after decoding: where an edit changed a pixel by less than this fraction of its "
                   "largest change, the output is the reconstruction (soft mask; no pixel moves more than half of "
                   "it). 0: off, the edit as the diffusion made it.")
@click.option("--reweight", multiple=True, metavar="WORD=SCALE",
              help="Scale the edit's attention to a word of the target (e.g. red=2); repeatable.")
@click.option("--strength", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Edit only this last fraction of the steps (SDEdit-like); before that the edit follows the source.")
@click.option("--mode", type=click.Choice(["auto", "replace", "refine"]), default="auto", show_default=True,
              help="replace: word swap (equal token counts); refine: words added or removed; auto: from the prompts.")
@image_options
@output_options
@friendly
def edit(source_file, source, targets, model, model_config, device, dtype, steps, method, guidance, tol,
         max_iter, pivot, null_text_lr, null_text_steps, negative_prompt, edict_mix, bdia_gamma, cross_replace,
         self_replace, blend, keep, blend_threshold, blend_dilate, blend_start, composite, reweight, strength, mode,
         max_side, fit, out, as_json):
    """Edit a photo from a source prompt to one or more target prompts (Prompt-to-Prompt).

    The image is inverted under --source with --method at --guidance; then the source branch (which
    replays the inversion) and one branch per --target regenerate in one batch, the targets taking the
    source's attention maps. Unless --composite 0, each decoded edit is then composited over the
    reconstruction where it changed the pixels only a little. Writes OUT/<name>.edit.png (or
    .edit-<k>.png for several targets), .edit-compare.png (input | reconstruction | edits | blend masks |
    composite masks), .attention.png (the source's attention per word), .edit.json, and the inversion,
    to reuse with other targets.

    \b
    Examples:
      invedit edit photo.png -s "a red circle on a blue background" -t "a green circle on a blue background"
      invedit edit photo.png -s "a red circle on a blue background" -t "a red square on a blue background" \\
          -t "a red circle on a yellow background" --blend circle --out runs/edit
      invedit edit runs/edit/photo.inversion.safetensors -t "a red star on a blue background" --out runs/edit
    """
    from . import api

    if source_file.endswith(".safetensors"):
        _refuse_for_saved([source_file])
    else:
        api.check_image(source_file)
    try:
        edit_settings = api.EditSettings(cross_replace=cross_replace, self_replace=self_replace, blend=tuple(blend),
                                         keep=tuple(keep), blend_threshold=blend_threshold, blend_dilate=blend_dilate,
                                         blend_start=blend_start, composite=composite, reweight=_reweights(reweight),
                                         strength=strength, mode=mode)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = _settings(steps, method, guidance, tol, max_iter, pivot, null_text_lr, null_text_steps,
                         negative_prompt, edict_mix, bdia_gamma)
    if not source_file.endswith(".safetensors"):
        announce(settings, rows=1 + len(targets))
    m = _load(model, model_config, device, dtype)
    result = api.edit(m, source_file, source, list(targets), edit_settings, settings, out, max_side, fit, Bars())
    _show_edit(result, as_json)


def _show_edit(result, as_json: bool) -> None:
    from .report import jsonable

    for w in result.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    report = result.report
    if as_json:
        click.echo(json.dumps(jsonable({**report, "files": {k: str(v) for k, v in result.paths.items()}}), indent=2))
        return
    inv, calls = report["inversion"], report["network_calls"]
    click.echo(f"{inv['method']} inversion, {inv['steps']} steps, guidance {inv['guidance']:g}, {report['mode']} "
               f"mode; network calls: {calls['invert']} to invert + {calls['edit']} for the batch of "
               f"{calls['batch_rows']} rows")
    recon = report["reconstruction_vs_input"]["psnr"]
    click.echo(f"source branch (reconstruction) vs input: {recon:.2f} dB")
    for k, e in enumerate(report["edits"]):
        kept = e["kept"]
        click.echo(f"edit {k + 1} {e['target']!r}: kept {kept['region']} ({kept['fraction']:.0%} of the image) "
                   f"{kept['vs_input']['psnr']:.2f} dB vs input (VAE ceiling {kept['vae_vs_input']['psnr']:.2f} dB), "
                   f"{kept['vs_reconstruction']['psnr']:.2f} dB vs reconstruction")
        if e["composite"]["applied"]:
            c = e["composite"]
            click.echo(f"  composite {c['threshold']:g}: the edit kept over {c['edit_fraction']:.0%} of the image, the "
                       f"reconstruction elsewhere (no pixel moved more than {c['max_change_of_edit']:.3f})")
    for kind, path in result.paths.items():
        click.echo(f"{kind:>15s}: {path}")
