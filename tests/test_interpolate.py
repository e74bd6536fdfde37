"""Interpolation: the mixing math, and frames between real inversions on the shipped model (issue 5)."""
import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from invedit import api, shapes
from invedit.interpolate import adain, consecutive_distances, lerp, mix_noise, respace, slerp, spread
from invedit.judge import judge


def test_slerp_keeps_the_norm_where_lerp_shrinks_it():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    for w in (0.25, 0.5, 0.75):
        assert abs(float(slerp(a, b, w).norm() / a.norm()) - 1) < 0.02
    assert float(lerp(a, b, 0.5).norm() / a.norm()) < 0.75  # two independent Gaussians: about 1/√2


def test_endpoints_are_exact_in_every_mode():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for mode in ("slerp", "lerp"):
        for renormalise in (False, True):
            assert torch.equal(mix_noise(a, b, 0.0, mode, renormalise), a)
            assert torch.equal(mix_noise(a, b, 1.0, mode, renormalise), b)


def test_adain_gives_the_mixed_channel_statistics():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1, 4, 16, 16, generator=g) * 2 + 1
    b = torch.randn(1, 4, 16, 16, generator=g) * 0.5 - 1
    x = adain(slerp(a, b, 0.3), a, b, 0.3)
    torch.testing.assert_close(x.mean(dim=(2, 3)), 0.7 * a.mean(dim=(2, 3)) + 0.3 * b.mean(dim=(2, 3)))
    torch.testing.assert_close(x.std(dim=(2, 3)), 0.7 * a.std(dim=(2, 3)) + 0.3 * b.std(dim=(2, 3)))


def test_respacing_evens_out_a_known_distance_curve():
    """Frames of f(w) = w³: evenly spaced weights give uneven steps; respaced weights give even ones."""
    render = lambda ws: [np.full((2, 2, 3), w**3) for w in ws]  # noqa: E731
    even = list(np.linspace(0, 1, 9))
    d_even = consecutive_distances(render(even))
    respaced = respace(even, d_even, 9)
    assert respaced[0] == 0 and respaced[-1] == 1 and respaced == sorted(respaced)
    assert spread(consecutive_distances(render(respaced))) < spread(d_even) / 3


@pytest.fixture(scope="module")
def model():
    return api.load(device="cpu")


@pytest.fixture(scope="module")
def circles(tmp_path_factory):
    """Two photos of circles of different colours, and their captions."""
    folder = tmp_path_factory.mktemp("circles")
    rng = np.random.default_rng(5)
    paths, captions = [], []
    for colour, background in (("red", "blue"), ("yellow", "green")):
        scene = shapes.sample_scene(rng, shape="circle", colour=colour, background=background)
        paths.append(folder / f"{colour}.png")
        Image.fromarray(shapes.render(scene)).save(paths[-1])
        captions.append(scene.caption)
    return paths, captions


@pytest.fixture(scope="module")
def morph(model, circles, tmp_path_factory):
    from invedit.morph import InterpolationSettings, interpolate

    # Guidance 3 (which the exact fixed-point inversion makes free): at w = 1 this small model's in-between
    # frames are blobs that the judge reads as triangles; guided by "circle" they stay circles.
    out = tmp_path_factory.mktemp("morph")
    settings = api.InversionSettings(steps=20, method="fixed-point", guidance=3.0)
    interp = InterpolationSettings(frames=7, batch_size=3, renormalise=True)
    return interpolate(model, circles[0], circles[1], settings, interp, out), out


def test_frames_files_and_report(morph):
    result, out = morph
    assert len(result.frames) == 7 and [w for _, w in result.weights] == pytest.approx(np.linspace(0, 1, 7))
    assert len(list((out / "frames").glob("frame_*.png"))) == 7
    assert Image.open(out / "morph.gif").n_frames == 12  # forwards, then back (bounce)
    video = cv2.VideoCapture(str(out / "morph.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    assert Image.open(out / "sheet.png").size[0] >= 7 * 64
    seg = result.report["segments"][0]
    assert len(seg["consecutive"]) == 6 and seg["spread"] == pytest.approx(np.std(seg["consecutive"]) /
                                                                             np.mean(seg["consecutive"]))
    assert seg["distance_to_start"][0] == 0 and seg["distance_to_end"][-1] == 0
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no temporary files left


def test_endpoints_reproduce_each_images_own_reconstruction(morph):
    for end in morph[0].report["endpoints"]:
        assert abs(end["frame_psnr_vs_input"] - end["reconstruction_psnr_vs_input"]) < 0.1, end


def test_the_middle_frame_still_shows_a_circle(morph):
    assert [judge(np.asarray(f)).shape for f in morph[0].frames] == ["circle"] * 7


def test_reusing_inversion_files_gives_the_same_frames_and_batches_do_not_matter(model, morph, tmp_path):
    from invedit.morph import InterpolationSettings, interpolate

    result, out = morph
    files = sorted(out.glob("*.inversion.safetensors"))
    again = interpolate(model, files, interp=InterpolationSettings(frames=7, batch_size=1, renormalise=True))
    for a, b in zip(result.frames, again.frames):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_uniform_spacing_is_smoother_than_even_weights(model, morph):
    from invedit.morph import InterpolationSettings, interpolate

    files = sorted(morph[1].glob("*.inversion.safetensors"))
    even = interpolate(model, files, interp=InterpolationSettings(frames=7, batch_size=7))
    uniform = interpolate(model, files, interp=InterpolationSettings(frames=7, batch_size=7, spacing="uniform"))
    assert uniform.report["segments"][0]["spread"] < even.report["segments"][0]["spread"]


def test_a_chain_of_three(model, morph):
    from invedit.morph import InterpolationSettings, interpolate

    files = sorted(morph[1].glob("*.inversion.safetensors"))
    result = interpolate(model, [files[0], files[1], files[0]], interp=InterpolationSettings(frames=4, batch_size=4))
    assert len(result.frames) == 7 and len(result.report["segments"]) == 2
    assert np.array_equal(np.asarray(result.frames[0]), np.asarray(result.frames[-1]))


def test_inversions_that_do_not_match_are_refused(model, morph, circles, tmp_path):
    from invedit.morph import interpolate

    files = sorted(morph[1].glob("*.inversion.safetensors"))
    other = api.invert_image(model, circles[0][0], "", api.InversionSettings(steps=10, method="ddim"), out=tmp_path)
    with pytest.raises(api.InveditError, match="steps: 10"):
        interpolate(model, [files[0], other.path])
    with pytest.raises(api.InveditError, match="at least two"):
        interpolate(model, [files[0]])


def test_cli_interpolate(morph, tmp_path):
    from invedit.cli import main

    files = [str(p) for p in sorted(morph[1].glob("*.inversion.safetensors"))]
    result = CliRunner().invoke(main, ["interpolate", *files, "--frames", "3", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "spread" in result.output and (tmp_path / "o" / "morph.mp4").is_file()
