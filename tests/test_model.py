"""The model adapter and the inversion pipeline end to end on a tiny random SD-shaped model."""
import math

import numpy as np

import pytest
import torch

from invedit import api
from invedit.ddim import sample
from invedit.guidance import guided
from invedit.invert import FixedPointOptions, invert
from invedit.io import load_image
from invedit.model import ModelLoadError, load_model, resolve_source
from invedit.model.build import save_tiny_pipeline
from invedit.schedule import Schedule
from invedit.store import load_inversion
from invedit.methods import METHODS


def test_loads_through_the_adapter(tiny_model):
    info = tiny_model.describe()
    assert info["model_kind"] == "folder" and info["prediction_type"] == "epsilon"
    assert tiny_model.vae_scale_factor == 2 and tiny_model.multiple == 4 and tiny_model.native_size == 32
    assert info["noise"]["beta_schedule"] == "scaled_linear" and len(info["fingerprint"]) == 16
    cond = tiny_model.encode_text(["a red circle", ""])
    assert cond.shape == (2, 77, 32)
    assert not torch.allclose(cond[0], cond[1])


@pytest.mark.parametrize("spec, message", [
    ("./no/such/folder", "does not exist"), ("/abs/missing", "does not exist"), ("weights.safetensors", "does not exist"),
    ("a/b/c", "does not exist"),
])
def test_missing_paths_are_not_taken_for_hub_ids(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_source(spec)


def test_hub_ids_and_folders_resolve(tmp_path, tiny_model_dir):
    assert resolve_source("owner/name").kind == "hub"
    assert resolve_source(str(tiny_model_dir)).kind == "folder"
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_source(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="not a .safetensors"):
        resolve_source(str(tmp_path / "notes.txt"))


def test_hub_id_offline_fails_with_a_clear_message():
    with pytest.raises(ModelLoadError, match="could not load model 'someone/not-cached'"):
        load_model("someone/not-cached", device="cpu")


def test_bad_device_and_dtype_are_named():
    with pytest.raises(ModelLoadError, match="dtype 'fp8'"):
        load_model("x", dtype="fp8")
    with pytest.raises(ModelLoadError, match="device 'tpu'"):
        load_model("x", device="tpu")


def test_v_prediction_is_converted_to_epsilon(tmp_path):
    model = api.load(str(save_tiny_pipeline(tmp_path / "v", prediction_type="v_prediction")), device="cpu")
    assert model.prediction_type == "v_prediction"
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = model.encode_text(["a cat"])
    t = 501
    with torch.no_grad():
        v = model.unet(x, torch.tensor([t]), encoder_hidden_states=cond).sample
        eps = model.eps(x, t, cond)
    a = float(model.alphas_cumprod[t])
    torch.testing.assert_close(eps, math.sqrt(a) * v + math.sqrt(1 - a) * x)  # Salimans & Ho 2022, §4


def test_encode_decode_shapes(tiny_model, photo):
    prepared = load_image(photo, tiny_model.multiple, max_side=0)
    assert prepared.pixels.shape == (1, 3, 28, 40)
    z0 = tiny_model.encode_image(prepared.pixels)
    assert z0.shape == (1, 4, 14, 20) and z0.dtype == torch.float32
    assert tiny_model.decode(z0).shape == (1, 3, 28, 40)


def _latent_round_trip(model, z0, method, guidance=1.0, steps=50):
    cond, uncond = model.encode_text(["a photo of a cat"]), model.encode_text([""])
    eps_fn = guided(model.eps, cond, uncond, guidance)
    schedule = Schedule.create(model.noise, steps)
    with torch.no_grad():
        traj = invert(eps_fn, z0, schedule, method, FixedPointOptions(tol=1e-6, max_iter=20))
        z_hat = sample(eps_fn, traj.x_T, schedule)
    return float((z_hat - z0).norm() / z0.norm()), traj


def test_fixed_point_beats_plain_ddim_20x_on_the_tiny_random_model(tiny_model, photo):
    z0 = tiny_model.encode_image(load_image(photo, tiny_model.multiple).pixels)
    plain, _ = _latent_round_trip(tiny_model, z0, "ddim")
    exact, traj = _latent_round_trip(tiny_model, z0, "fixed-point")
    assert exact * 20 <= plain, (plain, exact)
    assert len(traj.residuals) == 50 and traj.network_calls > 50


def test_fixed_point_is_better_under_guidance_too(tiny_model, photo):
    z0 = tiny_model.encode_image(load_image(photo, tiny_model.multiple).pixels)
    plain, _ = _latent_round_trip(tiny_model, z0, "ddim", guidance=3.0, steps=20)
    exact, _ = _latent_round_trip(tiny_model, z0, "fixed-point", guidance=3.0, steps=20)
    assert exact * 5 <= plain, (plain, exact)


def test_inversion_file_round_trips_and_replays_exactly(tiny_model, photo, tmp_path):
    settings = api.InversionSettings(steps=10, method="fixed-point")
    result = api.invert_image(tiny_model, photo, "a cat", settings, out=tmp_path)
    assert result.path.name == "astro.inversion.safetensors"
    loaded = load_inversion(result.path)
    assert torch.equal(loaded.x_T, result.inversion.x_T) and loaded.schedule == result.inversion.schedule
    assert loaded.prompt == "a cat" and loaded.method == "fixed-point" and loaded.image["original_size"] == [40, 28]
    from_file = api.reconstruct(tiny_model, result.path)
    from_memory = api.reconstruct(tiny_model, result.inversion)
    assert np.array_equal(from_file.content, from_memory.content)  # the same pixels, bit for bit
    psnr = lambda r: r.report["metrics"]["reconstruction_vs_input"]["psnr"]  # noqa: E731
    assert psnr(from_file) == pytest.approx(psnr(from_memory), rel=1e-12)  # summation order may differ in the last bit
    assert from_file.image.size == (40, 28)


def test_every_method_is_bit_identical_on_repeat(tiny_model, photo):
    for method in ("ddim", "fixed-point"):
        settings = api.InversionSettings(steps=8, method=method, guidance=2.0)
        a = api.invert_image(tiny_model, photo, "a cat", settings).inversion.x_T
        b = api.invert_image(tiny_model, photo, "a cat", settings).inversion.x_T
        assert torch.equal(a, b)


def test_the_fingerprint_does_not_depend_on_where_the_model_lies(tiny_model, tiny_model_dir, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "copy")
    assert api.load(str(copy), device="cpu").fingerprint == tiny_model.fingerprint
    other = save_tiny_pipeline(tmp_path / "other", seed=1)
    assert api.load(str(other), device="cpu").fingerprint != tiny_model.fingerprint


@pytest.mark.parametrize("module, pick", [("unet", "attn"), ("vae", "decoder.conv_out"), ("text_encoder", "layers.1.mlp")])
def test_the_fingerprint_covers_every_weight(tiny_model_dir, tmp_path, module, pick):
    """Issue 13: a copy with some weights deep inside one module scaled (not the first parameter) is another model."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None,
                                                   requires_safety_checker=False)
    with torch.no_grad():
        names = [n for n, p in getattr(pipe, module).named_parameters() if pick in n]
        assert names, pick
        for n, p in getattr(pipe, module).named_parameters():
            if pick in n:
                p.mul_(1.5)
    pipe.save_pretrained(tmp_path / "scaled", safe_serialization=True)
    original = api.load(str(tiny_model_dir), device="cpu").fingerprint
    assert api.load(str(tmp_path / "scaled"), device="cpu").fingerprint != original


def test_a_different_model_is_refused_with_what_differs(tiny_model, photo, tmp_path):
    inv = api.invert_image(tiny_model, photo, "", api.InversionSettings(steps=5, method="ddim")).inversion
    other = api.load(str(save_tiny_pipeline(tmp_path / "other", seed=1, prediction_type="v_prediction")), device="cpu")
    with pytest.raises(api.InveditError, match="fingerprint") as err:
        api.reconstruct(other, inv)
    assert "prediction_type" in str(err.value)


def test_report_has_the_three_comparisons_and_the_settings(tiny_model, photo, tmp_path):
    result = api.roundtrip(tiny_model, photo, "a cat", api.InversionSettings(steps=6, method="ddim"), out=tmp_path)
    r = result.report
    for key in ("reconstruction_vs_input", "vae_vs_input", "reconstruction_vs_vae"):
        assert set(r["metrics"][key]) == {"psnr", "ssim", "mse"}
    assert r["inversion"]["method"] == "ddim" and r["inversion"]["network_calls"] == 6
    assert r["model"]["versions"]["torch"] == torch.__version__
    assert {"invert.invert", "sample", "decode"} <= set(r["seconds"])
    assert {p.name for p in tmp_path.iterdir()} == {"astro.inversion.safetensors", "astro.recon.png",
                                                    "astro.compare.png", "astro.report.json"}
    assert r["latent_error"] > 0


def test_plain_inversion_with_fixed_eps_model_is_exact(tiny_model):
    """A network whose ε does not depend on x makes plain DDIM inversion exact: a check of the wiring."""
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    schedule = Schedule.create(tiny_model.noise, 25)
    const = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps_fn = lambda x, t: const * (t / 1000)  # noqa: E731
    traj = invert(eps_fn, z0, schedule, "ddim")
    torch.testing.assert_close(sample(eps_fn, traj.x_T, schedule), z0, rtol=1e-5, atol=1e-5)


def test_generate_is_seeded(tiny_model):
    a = api.generate(tiny_model, "a cat", seed=3, steps=5, guidance=3.0)
    b = api.generate(tiny_model, "a cat", seed=3, steps=5, guidance=3.0)
    c = api.generate(tiny_model, "a cat", seed=4, steps=5, guidance=3.0)
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)
    assert a.images[0].size == (32, 32)


def test_null_text_at_guidance_1_costs_only_its_pivot(tiny_model, photo):
    from invedit.methods import Conditioning, MethodOptions, invert_with

    z0 = tiny_model.encode_image(load_image(photo, tiny_model.multiple).pixels)
    cond, uncond = tiny_model.encode_text(["a cat", ""]).chunk(2)
    schedule = Schedule.create(tiny_model.noise, 6)
    with torch.no_grad():
        result = invert_with("null-text", Conditioning(tiny_model.eps, cond, uncond, 1.0), z0, schedule, MethodOptions())
    assert result.network_calls == 6 and result.extras["uncond"].shape == (6, 1, 77, 32)


def test_info_names_the_family_and_an_inversion_of_another_family_is_refused(tiny_model, photo):
    import dataclasses

    info = tiny_model.describe()
    assert info["family"] == "sd-like (text width 32)" and info["text_encoders"] == ["CLIPTextModel"]
    assert info["vae_parameters"] > 0 and info["text_encoder_parameters"] > 0
    inv = api.invert_image(tiny_model, photo, "", api.InversionSettings(steps=3, method="ddim")).inversion
    other = dataclasses.replace(inv, model={**inv.model, "family": "sd2"})
    with pytest.raises(api.InveditError, match="family: made with a sd2 model, now a sd-like"):
        api.reconstruct(tiny_model, other)


def test_bf16_loads_the_network_in_bf16_and_the_vae_from_its_fp32_weights(tiny_model_dir):
    """Weights load straight into the requested dtype (no fp32 copy of the UNet), except the VAE, which
    must keep its fp32 weights exactly (a bf16 round trip would round them)."""
    fp32 = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    bf16 = load_model(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert bf16.unet.dtype == torch.bfloat16 and bf16.text_encoder.dtype == torch.bfloat16
    assert bf16.vae.dtype == torch.float32
    for (name, a), (_, b) in zip(sorted(fp32.vae.state_dict().items()), sorted(bf16.vae.state_dict().items())):
        assert torch.equal(a, b), name
    w32 = next(iter(fp32.unet.parameters()))
    assert torch.equal(next(iter(bf16.unet.parameters())), w32.to(torch.bfloat16))


@pytest.mark.parametrize("name", list(METHODS))
def test_planned_calls_bound_the_inversion_and_equal_the_replay(tiny_model, name):
    """What the CLI announces before a run: the inversion makes at most, and the replay exactly, the planned calls."""
    from invedit.methods import Conditioning, MethodOptions, counted, invert_with, replay

    options = MethodOptions(fixed_point=FixedPointOptions(tol=0.0, max_iter=3))  # tol 0: every iteration runs
    schedule = Schedule.create(tiny_model.noise, 6)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    counter = [0]
    with torch.no_grad():
        cond, uncond = tiny_model.encode_text(["a cat", ""]).chunk(2)
        c = Conditioning(counted(tiny_model.eps, counter), cond, uncond, 3.0)
        result = invert_with(name, c, z0, schedule, options)
        inverted, counter[0] = counter[0], 0
        replay(name, c, result.x_T, result.extras, schedule, options)
    planned = METHODS[name].calls(6, options)
    assert inverted <= planned[0] and counter[0] == planned[1], (inverted, counter[0], planned)
    assert result.network_calls == inverted
    if name in ("ddim", "fixed-point", "edict", "bdia"):  # no early stop: the bound is met
        assert inverted == planned[0]


def test_a_large_image_goes_through_the_vae_in_tiles_and_the_report_says_so(tiny_model, photo, monkeypatch,
                                                                             tmp_path):
    """Above TILE_ABOVE pixels encode and decode run diffusers' tiled VAE, with tiles of TILE_LATENT latents (both
    lowered here so that a 256×192 image is cut into 64-pixel tiles); the VAE is left untiled afterwards, even
    when the decode fails, and the report says which was used."""
    import invedit.model.adapter as adapter
    from PIL import Image

    image = tmp_path / "wide.png"
    Image.open(photo).convert("RGB").resize((256, 192), Image.Resampling.BICUBIC).save(image)
    pixels = load_image(image, tiny_model.multiple, max_side=0).pixels
    whole_z = tiny_model.encode_image(pixels)
    whole_x = tiny_model.decode(whole_z)
    calls = []
    for name in ("_tiled_encode", "tiled_decode"):
        original = getattr(tiny_model.vae, name)
        monkeypatch.setattr(tiny_model.vae, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    monkeypatch.setattr(adapter, "TILE_ABOVE", 256 * 192 - 1)
    monkeypatch.setattr(adapter, "TILE_LATENT", 32)  # 64 pixels at the tiny VAE's factor 2
    assert tiny_model.vae_tiled(192, 256) and not tiny_model.vae_tiled(192, 255)
    tiled_z = tiny_model.encode_image(pixels)
    tiled_x = tiny_model.decode(tiled_z)
    assert calls == ["_tiled_encode", "tiled_decode"]
    assert not tiny_model.vae.use_tiling and tiny_model.vae.tile_sample_min_size == tiny_model.vae.config.sample_size
    assert tiled_z.shape == whole_z.shape and tiled_x.shape == whole_x.shape == (1, 3, 192, 256)
    assert not torch.equal(tiled_z, whole_z) and not torch.equal(tiled_x, whole_x)  # each tile saw its own pixels
    with pytest.raises(RuntimeError):
        tiny_model.decode(torch.zeros(1, 3, 96, 128))  # 3 latent channels: the VAE refuses it inside the tiles
    assert not tiny_model.vae.use_tiling
    settings = api.InversionSettings(steps=2, method="ddim")
    assert api.roundtrip(tiny_model, image, "a cat", settings, max_side=0).report["image"]["vae_tiled"] is True
    monkeypatch.setattr(adapter, "TILE_ABOVE", 256 * 192)
    assert api.roundtrip(tiny_model, image, "a cat", settings, max_side=0).report["image"]["vae_tiled"] is False


def test_half_precision_reads_a_folders_fp16_weights_and_the_vae_from_fp32(tiny_model_dir, tmp_path):
    """A folder with `*.fp16.safetensors` beside its fp32 weights (as hub repositories ship them): bf16 and fp16
    loads read the fp16 files of the UNet and text encoder (told apart here by writing them 1 higher), the VAE
    still its fp32 file; fp32 loads ignore them."""
    import shutil

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for cls, sub in ((UNet2DConditionModel, "unet"), (CLIPTextModel, "text_encoder")):
        part = cls.from_pretrained(folder / sub)
        with torch.no_grad():
            for p in part.parameters():
                p.add_(1)
        part.to(torch.float16).save_pretrained(folder / sub, variant="fp16")
    fp32 = load_model(str(folder), device="cpu", dtype="fp32")
    bf16 = load_model(str(folder), device="cpu", dtype="bf16")
    for module in ("unet", "text_encoder"):
        a, b = next(iter(getattr(fp32, module).parameters())), next(iter(getattr(bf16, module).parameters()))
        assert b.dtype == torch.bfloat16 and torch.allclose(b.float(), a + 1, atol=1e-2), module  # bf16's rounding
    for (name, a), (_, b) in zip(sorted(fp32.vae.state_dict().items()), sorted(bf16.vae.state_dict().items())):
        assert torch.equal(a, b), name
    assert torch.equal(next(iter(fp32.unet.parameters())),
                       next(iter(load_model(str(tiny_model_dir), device="cpu").unet.parameters())))


def test_edit_reports_say_whether_the_vae_worked_in_tiles(tiny_model, photo, monkeypatch):
    import invedit.model.adapter as adapter

    settings = api.InversionSettings(steps=2, method="ddim", guidance=7.5)
    for above, tiled in ((0, True), (10**9, False)):  # every image counts as large, then none does
        monkeypatch.setattr(adapter, "TILE_ABOVE", above)
        report = api.edit(tiny_model, photo, "a cat", ["a dog"], inversion=settings).report
        assert report["image"]["vae_tiled"] is tiled
