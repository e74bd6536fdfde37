"""Single-file checkpoints (issue 12): each tiny model family written in its original (non-diffusers) key layout,
loaded with --model file.safetensors --model-config <diffusers folder>, is the folder's model.

The files are written by invedit.model.original, the hand-written inverse of diffusers' single-file converters,
so a wrong name on either side fails here: the plain file must give the folder's weights (same fingerprint, which
hashes every weight) and round trip; and a file with every weight shifted by 1 must shift every weight of every
component by 1, so each one is read from the file (the config folders here hold the same weights, so the round trip
alone could not tell a file that is read from one that is ignored).
"""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from invedit import api
from invedit.cli import main
from invedit.model.original import original_checkpoint

FOLDERS = {"sd1": "tiny_model_dir", "sd2": "v_dir", "sdxl": "xl_dir"}
# keys diffusers' converters look for (single_file_utils.CHECKPOINT_KEY_NAMES and the converters' own names)
MARKERS = {
    "sd1": ["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"],
    "sd2": ["cond_stage_model.model.token_embedding.weight", "cond_stage_model.model.positional_embedding",
            "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
            "cond_stage_model.model.ln_final.bias"],
    "sdxl": ["conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
             "conditioner.embedders.1.model.positional_embedding", "conditioner.embedders.1.model.text_projection",
             "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
             "model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.label_emb.0.2.bias",
             "first_stage_model.decoder.mid.attn_1.q.weight"],
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write(folder, family, path, shift=0.0):
    checkpoint = original_checkpoint(folder, family)
    save_file({k: v + shift for k, v in checkpoint.items()}, str(path))
    return checkpoint


@pytest.mark.parametrize("family", list(FOLDERS))
def test_a_single_file_in_the_original_layout_round_trips_as_its_folder(family, request, photo, tmp_path):
    folder = request.getfixturevalue(FOLDERS[family])
    checkpoint = write(folder, family, tmp_path / f"tiny-{family}.safetensors")
    assert all(k in checkpoint for k in MARKERS[family]), [k for k in MARKERS[family] if k not in checkpoint]
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
               for k in checkpoint)  # no diffusers names ("unet.", "down_blocks.", …)
    runs = {}
    for name, args in (("folder", ["--model", folder]),
                       ("file", ["--model", tmp_path / f"tiny-{family}.safetensors", "--model-config", folder])):
        r = invoke("roundtrip", photo, *args, "--steps", 5, "--prompt", "a cat", "--out", tmp_path / name, "--json")
        assert r.exit_code == 0, r.output
        runs[name] = json.loads(r.stdout)
    file, folder_run = runs["file"]["model"], runs["folder"]["model"]
    assert file["model_kind"] == "single-file" and folder_run["model_kind"] == "folder"
    assert file["fingerprint"] == folder_run["fingerprint"]  # every weight and config the same
    assert (file["family"], file["prediction_type"], file["text_encoders"]) == \
        (folder_run["family"], folder_run["prediction_type"], folder_run["text_encoders"])
    # identical weights; the results agree to float rounding, not bit for bit: the same linear layer gave 1e-7
    # apart on weights loaded from two files (memory alignment picks the kernel)
    a, b = runs["file"]["metrics"], runs["folder"]["metrics"]
    assert abs(a["reconstruction_vs_input"]["psnr"] - b["reconstruction_vs_input"]["psnr"]) < 0.01
    assert a["reconstruction_vs_vae"]["psnr"] > 60 and b["reconstruction_vs_vae"]["psnr"] > 60
    recon = lambda name: np.asarray(Image.open(next((tmp_path / name).glob("*.recon.png"))), dtype=int)  # noqa: E731
    mse = float(((recon("file") - recon("folder")) ** 2).mean())
    assert mse == 0 or 10 * np.log10(255 ** 2 / mse) > 45  # measured: a level or two on a few pixels


@pytest.mark.parametrize("family", list(FOLDERS))
def test_every_weight_of_every_component_comes_from_the_file(family, request, tmp_path):
    folder = request.getfixturevalue(FOLDERS[family])
    write(folder, family, tmp_path / "shifted.safetensors", shift=1.0)
    shifted = api.load(str(tmp_path / "shifted.safetensors"), device="cpu", model_config=str(folder))
    base = api.load(str(folder), device="cpu")
    assert shifted.fingerprint != base.fingerprint
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    assert (shifted.text_encoder_2 is None) == (family != "sdxl")
    for part in parts:
        ours, theirs = getattr(shifted, part).state_dict(), getattr(base, part).state_dict()
        assert ours.keys() == theirs.keys()
        wrong = [k for k in ours if not torch.allclose(ours[k], theirs[k] + 1, atol=1e-5)]
        assert not wrong, f"{part}: {len(wrong)} of {len(ours)} weights not from the file, e.g. {wrong[:3]}"


def test_a_file_of_another_family_than_its_config_folder_or_without_its_parts_is_refused(tiny_model_dir, xl_dir,
                                                                                         tmp_path):
    write(xl_dir, "sdxl", tmp_path / "xl.safetensors")
    r = invoke("info", "--model", tmp_path / "xl.safetensors", "--model-config", tiny_model_dir)
    assert r.exit_code == 1 and "laid out as SDXL" in r.output and "is Stable Diffusion 1.x/2.x" in r.output
    write(tiny_model_dir, "sd1", tmp_path / "v1.safetensors")
    r = invoke("info", "--model", tmp_path / "v1.safetensors", "--model-config", xl_dir)
    assert r.exit_code == 1 and "laid out as Stable Diffusion 1.x/2.x" in r.output and "is SDXL" in r.output
    renamed = {k.replace("cond_stage_model.transformer.", "cond_stage_model.clip."): v
               for k, v in original_checkpoint(tiny_model_dir, "sd1").items()}  # a text encoder diffusers can't find
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    r = invoke("info", "--model", tmp_path / "renamed.safetensors", "--model-config", tiny_model_dir)
    assert r.exit_code == 1 and "Failed to load CLIPTextModel" in r.output and "unexpected" not in r.output
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(tmp_path / "diffusers-names.safetensors"))
    r = invoke("info", "--model", tmp_path / "diffusers-names.safetensors", "--model-config", tiny_model_dir)
    assert r.exit_code == 1 and "no UNet under 'model.diffusion_model.'" in r.output


def test_without_a_config_folder_the_file_names_its_pipeline(tiny_model_dir, xl_dir, tmp_path):
    """Where a hub is reachable, diffusers then fetches the config of the file's own family."""
    from invedit.model.adapter import _single_file_class

    write(xl_dir, "sdxl", tmp_path / "xl.safetensors")
    write(tiny_model_dir, "sd1", tmp_path / "v1.safetensors")
    assert _single_file_class(str(tmp_path / "xl.safetensors"), None).__name__ == "StableDiffusionXLPipeline"
    assert _single_file_class(str(tmp_path / "v1.safetensors"), None).__name__ == "StableDiffusionPipeline"
