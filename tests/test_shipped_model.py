"""The trained shapes-world model that ships in assets/: it loads through the normal path, follows a
prompt, and lets every inversion method show what it guarantees (issues 3 and 4)."""
import numpy as np
import pytest
import torch

from invedit import api, shapes
from invedit.ddim import sample
from invedit.io import load_image, prepare, to_uint8
from invedit.judge import judge
from invedit.methods import METHODS, Conditioning, MethodOptions, invert_with, replay
from invedit.nulltext import NullTextOptions
from invedit.report import image_metrics, to_unit
from invedit.schedule import Schedule

pytestmark = pytest.mark.skipif(not (api.DEFAULT_MODEL / "model_index.json").is_file(), reason="no shipped model")
PHOTO = api.DEFAULT_MODEL.parent.parent / "photos" / "coffee.jpg"


@pytest.fixture(scope="module")
def model():
    return api.load(device="cpu")  # no --model: the shipped one, through the same loader as any SD model


@pytest.fixture(scope="module")
def generated():
    """A held-out image of the shapes world and its caption."""
    images, scenes = shapes.make_dataset(1, seed=12_345)
    return images[0], scenes[0].caption


def test_loads_as_an_ordinary_stable_diffusion_folder(model):
    info = model.describe()
    assert info["model_kind"] == "folder" and info["prediction_type"] == "epsilon"
    assert info["noise"]["beta_schedule"] == "scaled_linear" and info["noise"]["steps_offset"] == 1
    assert model.native_size == 64 and model.vae_scale_factor == 4


def test_a_seeded_sample_follows_its_caption(model):
    caption = "a black circle on a white background"
    image = api.generate(model, caption, seed=0, steps=50, guidance=5.0).images[0]
    assert judge(np.asarray(image)).caption == caption


def _sample(model, captions, seed, steps=50, guidance=5.0, same_noise=False):
    """One image per caption from seeded noise (one draw for all with same_noise), batched: N (64, 64, 3) uint8."""
    x_T = torch.randn(1 if same_noise else len(captions), 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    x_T = x_T.expand(len(captions), -1, -1, -1)
    with torch.no_grad():
        c = Conditioning(model.eps, model.encode_text(list(captions)), model.encode_text([""]), guidance)
        z = sample(c.eps_fn(), x_T, Schedule.create(model.noise, steps))
        return [to_uint8(p) for p in model.decode(z)]


def test_twenty_seeded_samples_follow_their_captions(model):
    """The issue's bar, 85% of captions judged right in shape, colour and background, on 4 captions per shape
    (the model card measures 100 captions)."""
    rng = np.random.default_rng(2024)
    captions = [shapes.sample_scene(rng, shape=s).caption for s in shapes.SHAPES for _ in range(4)]
    verdicts = [judge(im).caption for im in _sample(model, captions, seed=11)]
    right = [v == c for v, c in zip(verdicts, captions)]
    assert np.mean(right) >= 0.85, [(c, v) for c, v, ok in zip(captions, verdicts, right) if not ok]


def test_the_shape_word_decides_the_shape_from_the_same_noise(model):
    """Same seed, five prompts that differ only in the shape: five different shapes, each the one asked for."""
    captions = [shapes.caption_for(s, "yellow", "blue") for s in shapes.SHAPES]
    images = _sample(model, captions, seed=5, same_noise=True)
    assert [judge(im).shape for im in images] == list(shapes.SHAPES)


def test_background_colour_follows_the_prompt_not_the_noise(model):
    """PITFALLS: without offset noise every background came out one colour. Same seed, two prompts."""
    a = api.generate(model, "a white square on a red background", seed=3, steps=25, guidance=5.0).images[0]
    b = api.generate(model, "a white square on a blue background", seed=3, steps=25, guidance=5.0).images[0]
    assert judge(np.asarray(a)).background == "red" and judge(np.asarray(b)).background == "blue"


def _z0(model, image):
    prepared = prepare(image, model.multiple) if not isinstance(image, str) else load_image(image, model.multiple, 64)
    with torch.no_grad():
        return prepared, model.encode_image(prepared.pixels)


def _round_trip(model, z0, prompt, method, guidance, steps=50, options=MethodOptions()):
    schedule = Schedule.create(model.noise, steps)
    with torch.no_grad():
        cond, uncond = model.encode_text([prompt, ""]).chunk(2)
        c = Conditioning(model.eps, cond, uncond, guidance)
        result = invert_with(method, c, z0, schedule, options)
        z_hat = replay(method, c, result.x_T, result.extras, schedule, options)
        return result, z_hat, model.decode(z_hat), model.decode(z0)


def _psnr_vs_vae(recon, vae):
    return image_metrics(to_unit(recon[0]), to_unit(vae[0]))["psnr"]


def test_fixed_point_is_100x_more_exact_than_plain_ddim_on_a_generated_image(model, generated):
    from PIL import Image

    image, caption = generated
    _, z0 = _z0(model, Image.fromarray(image))
    _, z_plain, _, _ = _round_trip(model, z0, caption, "ddim", 1.0)
    _, z_exact, recon, vae = _round_trip(model, z0, caption, "fixed-point", 1.0)
    err = lambda z: float((z - z0).norm() / z0.norm())  # noqa: E731
    assert err(z_exact) * 100 <= err(z_plain), (err(z_plain), err(z_exact))
    assert _psnr_vs_vae(recon, vae) >= 60


@pytest.mark.parametrize("source", ["photo", "generated"])
def test_guided_methods_at_w_7_5(model, generated, source):
    """Issue 4: null-text beats plain DDIM by ≥ 10 dB against the VAE round trip; EDICT (exact) ≥ 60 dB.

    Null-text runs with a learning rate of 0.1: the paper's 1e-2 (tuned on SD 1.4) leaves this small
    model's per-step MSE at ~1e-2 after 10 Adam steps; 0.1 reaches 1e-3 (measured, see the benchmark)."""
    from PIL import Image

    image, caption = (str(PHOTO), "a cup of coffee") if source == "photo" else (Image.fromarray(generated[0]),
                                                                               generated[1])
    _, z0 = _z0(model, image)
    options = MethodOptions(null_text=NullTextOptions(lr=0.1, tol=1e-6, tol_growth=0.0))
    psnr = {m: _psnr_vs_vae(*_round_trip(model, z0, caption, m, 7.5, options=options)[2:])
            for m in ("ddim", "null-text", "edict")}
    assert psnr["null-text"] >= psnr["ddim"] + 10, psnr
    assert psnr["edict"] >= 60, psnr


@pytest.mark.parametrize("method", ["negative-prompt", "direct"])
def test_methods_that_replay_their_pivot_reconstruct_the_source(model, generated, method):
    """negative-prompt: with ∅ := the source prompt, guided sampling at any w is the w = 1 sampler, so it
    replays its (fixed-point) pivot exactly; direct: the recorded corrections land on the pivot at every step."""
    from PIL import Image

    image, caption = generated
    _, z0 = _z0(model, Image.fromarray(image))
    options = MethodOptions(pivot="fixed-point")
    result, z_hat, recon, vae = _round_trip(model, z0, caption, method, 7.5, options=options)
    if method == "negative-prompt":  # the very trajectory of w = 1
        _, z_w1, _, _ = _round_trip(model, z0, caption, "fixed-point", 1.0)
        torch.testing.assert_close(z_hat, z_w1, rtol=0, atol=1e-5)
    assert float((z_hat - z0).norm() / z0.norm()) < 1e-4  # float32 rounding, amplified by w = 7.5
    assert _psnr_vs_vae(recon, vae) >= 60


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_bit_identical_on_repeat(model, generated, method):
    from PIL import Image

    _, z0 = _z0(model, Image.fromarray(generated[0]))
    a = _round_trip(model, z0, generated[1], method, 3.0, steps=10)[1]
    b = _round_trip(model, z0, generated[1], method, 3.0, steps=10)[1]
    assert torch.equal(a, b)


def test_every_method_replays_from_its_file(model, generated, tmp_path):
    """What a method needs to replay is in the inversion file: reconstruct(file) == reconstruct(object)."""
    from PIL import Image

    prepared = prepare(Image.fromarray(generated[0]), model.multiple)
    for method in METHODS:
        settings = api.InversionSettings(steps=8, method=method, guidance=3.0)
        inversion, _ = api.invert_prepared(model, prepared, generated[1], settings)
        from invedit.store import load_inversion, save_inversion

        path = save_inversion(tmp_path / f"{method}.inversion.safetensors", inversion)
        loaded = load_inversion(path)
        assert set(loaded.extras) == set(inversion.extras)
        a = api.reconstruct(model, inversion).report["latent_error"]
        b = api.reconstruct(model, loaded).report["latent_error"]
        assert a == b, method


def test_plain_ddim_drifts_more_under_guidance(model):
    """The premise of issue 4, measured: plain inversion of a photo loses fidelity as w grows."""
    _, z0 = _z0(model, str(PHOTO))
    psnr = [_psnr_vs_vae(*_round_trip(model, z0, "a cup of coffee", "ddim", w, steps=25)[2:]) for w in (1.0, 7.5)]
    assert psnr[1] < psnr[0] - 3, psnr


def test_null_text_keeps_one_embedding_per_image_of_a_batch(model):
    """A batch of two images: each gets its own per-step embeddings, and each is reconstructed better
    than by plain DDIM inversion at the same guidance."""
    images, scenes = shapes.make_dataset(2, seed=777)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z0 = model.encode_image(x)
        cond, uncond = model.encode_text([s.caption for s in scenes]), model.encode_text(["", ""])
    schedule = Schedule.create(model.noise, 10)
    c = Conditioning(model.eps, cond, uncond, 5.0)
    options = MethodOptions(null_text=NullTextOptions(lr=0.1, tol=1e-6, tol_growth=0.0))
    errors = {}
    for method in ("ddim", "null-text"):
        with torch.no_grad():
            result = invert_with(method, c, z0, schedule, options)
            z_hat = replay(method, c, result.x_T, result.extras, schedule, options)
        errors[method] = ((z_hat - z0).flatten(1).norm(dim=1) / z0.flatten(1).norm(dim=1)).tolist()
        if method == "null-text":
            assert result.extras["uncond"].shape == (10, 2, 77, cond.shape[-1])
            assert not torch.equal(result.extras["uncond"][:, 0], result.extras["uncond"][:, 1])
    assert all(n < d for n, d in zip(errors["null-text"], errors["ddim"])), errors


@pytest.mark.parametrize("guidance", [7.5, 15.0])
def test_direct_inversion_replays_a_photo_closed_loop_under_strong_guidance(model, guidance):
    """Direct inversion's replay is reset onto its pivot every step (PnP Inversion), so float rounding cannot
    grow under guidance: the reconstruction is the pivot's clean end, bit for bit, where the open-loop replay
    (the recorded offsets added, as frames that mix two inversions do) is not."""
    inv = api.invert_image(model, PHOTO, "a photo", api.InversionSettings(steps=50, method="direct",
                                                                          guidance=guidance)).inversion
    c = api.conditioning_for(model, inv.prompt, "", guidance)
    with torch.no_grad():
        closed = replay("direct", c, inv.x_T, inv.extras, inv.schedule)
        open_loop = replay("direct", c, inv.x_T, {"offsets": inv.extras["offsets"]}, inv.schedule)
    assert torch.equal(closed, inv.z0)
    assert not torch.equal(open_loop, inv.z0)
    assert api.reconstruct(model, inv).report["metrics"]["reconstruction_vs_vae"]["psnr"] == float("inf")


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_fixed_point_on_a_batch_equals_one_image_at_a_time(model, guidance):
    """Each image iterates (and is accelerated) on its own and stops at its own tolerance, so batching three
    scenes gives each the inversion it gets alone, to 1e-4 (the UNet's batch-size rounding, grown by ten inverse
    steps: measured 4e-5), also at w = 7.5 where some steps stop at max_iter. Anderson over the whole batch
    (one least-squares problem for all images, as before) was 7e-3 off at w = 1."""
    images, scenes = shapes.make_dataset(3, seed=31_000)
    from PIL import Image

    pixels = torch.cat([prepare(Image.fromarray(im), model.multiple, 64).pixels for im in images])
    z0 = model.encode_image(pixels)
    cond = model.encode_text(["a shape on a background"])
    c = Conditioning(model.eps, cond, model.encode_text([""]), guidance)
    schedule = Schedule.create(model.noise, 10)
    options = MethodOptions()
    with torch.no_grad():
        together = invert_with("fixed-point", c, z0, schedule, options).x_T
        alone = torch.cat([invert_with("fixed-point", c, z0[k:k + 1], schedule, options).x_T for k in range(3)])
    assert torch.allclose(together, alone, atol=1e-4, rtol=0), (together - alone).abs().max()
