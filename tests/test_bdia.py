"""BDIA (issue 11): exact inversion at one network call per step, on the Gaussian oracle and the shipped model."""
import math

import pytest
import torch

from invedit import api
from invedit.bdia import bdia_invert, bdia_sample
from PIL import Image

from invedit.ddim import ddim_step, sample
from invedit.invert import invert
from invedit.io import prepare
from invedit.methods import Conditioning, MethodOptions, invert_with, replay
from invedit.report import image_metrics, to_unit
from invedit.schedule import NoiseConfig, Schedule
from oracle import GaussianOracle


def rel(a, b):
    return float((a - b).norm() / b.norm())


def oracle_case(steps, seed=0):
    schedule = Schedule.create(NoiseConfig(), steps)
    oracle = GaussianOracle(schedule)
    g = torch.Generator().manual_seed(seed)
    return schedule, oracle, oracle.m + oracle.s * torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)


def counted(eps_fn):
    calls = [0]

    def eps(*args):
        calls[0] += 1
        return eps_fn(*args)

    return eps, calls


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_round_trip_is_exact_to_rounding_at_one_call_per_step(steps):
    schedule, oracle, z0 = oracle_case(steps)
    eps, calls = counted(oracle.eps)
    x_T, x_1 = bdia_invert(eps, z0, schedule)
    assert calls[0] == steps
    z_hat = bdia_sample(eps, x_T, x_1, schedule)
    assert calls[0] == 2 * steps - 1  # the replay starts from the stored pair: N − 1 calls
    assert rel(z_hat, z0) < 1e-13  # float64
    x_T32, x_132 = bdia_invert(oracle.eps, z0.float(), schedule)
    assert rel(bdia_sample(oracle.eps, x_T32, x_132, schedule), z0.float()) < 5e-6  # float32


def test_a_step_is_the_bidirectional_update_written_with_ddim_moves():
    """x_{k+1} = x_k + Δ_fwd + γ·(x_{k−1} − x_k − Δ_back), with Δ the DDIM moves from level k (the paper's form)."""
    schedule, oracle, z0 = oracle_case(6, seed=1)
    x_T = torch.randn_like(z0)
    x_1 = x_T + 0.01 * torch.randn_like(z0)
    for gamma in (1.0, 0.7):
        prev, x = x_T, x_1
        for k in range(1, schedule.steps):
            eps = oracle.eps(x, schedule.timesteps[k])
            fwd = ddim_step(x, eps, schedule.alphas[k], schedule.alphas[k + 1]) - x
            back = ddim_step(x, eps, schedule.alphas[k], schedule.alphas[k - 1]) - x
            prev, x = x, x + fwd + gamma * (prev - x - back)
        torch.testing.assert_close(bdia_sample(oracle.eps, x_T, x_1, schedule, gamma), x, rtol=0, atol=1e-12)


def test_gamma_near_zero_is_plain_ddim():
    schedule, oracle, z0 = oracle_case(10, seed=2)
    x_T = torch.randn_like(z0)
    x_1 = sample(oracle.eps, x_T, Schedule(schedule.timesteps[:1], schedule.alphas[:2], schedule.noise))
    torch.testing.assert_close(bdia_sample(oracle.eps, x_T, x_1, schedule, 1e-12), sample(oracle.eps, x_T, schedule),
                               rtol=0, atol=1e-9)


def test_its_noise_is_closer_to_the_exact_ode_noise_than_plain_ddim_inversion():
    """γ = 1 is a second-order symmetric update: x_T lands nearer the exact flow of z_0 than DDIM's x_T."""
    schedule, oracle, z0 = oracle_case(50)
    exact = oracle.flow(z0, schedule.alphas[-1], schedule.alphas[0])
    x_T, _ = bdia_invert(oracle.eps, z0, schedule)
    plain = invert(oracle.eps, z0, schedule, "ddim").x_T
    assert rel(x_T, exact) * 3 < rel(plain, exact), (rel(x_T, exact), rel(plain, exact))
    assert abs(float(x_T.std()) - float(exact.std())) < 0.02


def test_gamma_below_one_amplifies_the_inversion_as_documented():
    schedule, oracle, z0 = oracle_case(50)
    x_T, _ = bdia_invert(oracle.eps, z0, schedule, 0.5)
    assert float(x_T.std()) > 1e6  # (1/γ)^N growth of the second root: why the default is 1


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.5, math.nan])
def test_gamma_outside_its_range_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma must be in"):
        MethodOptions(bdia_gamma=gamma)
    with pytest.raises(api.InveditError):
        api.InversionSettings(method="bdia", bdia_gamma=gamma)


# --- the shipped model ----------------------------------------------------------------------------------
needs_model = pytest.mark.skipif(not (api.DEFAULT_MODEL / "model_index.json").is_file(), reason="no shipped model")


@needs_model
@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_shipped_model_round_trip_over_100_db_at_the_calls_of_ddim(guidance):
    from invedit import shapes

    model = api.load(device="cpu")
    scene = shapes.Scene("star", "yellow", "blue", (0.45, 0.5), 0.6, 0.3)
    with torch.no_grad():
        z0 = model.encode_image(prepare(Image.fromarray(shapes.render(scene, 64)), model.multiple, 64).pixels)
    schedule = Schedule.create(model.noise, 50)
    eps, calls = counted(model.eps)
    with torch.no_grad():
        cond, uncond = model.encode_text(["a yellow star on a blue background", ""]).chunk(2)
        c = Conditioning(eps, cond, uncond, guidance)
        result = invert_with("bdia", c, z0, schedule)
        z_hat = replay("bdia", c, result.x_T, result.extras, schedule)
        plain = replay("ddim", c, invert_with("ddim", c, z0, schedule).x_T, {}, schedule)
        recon, vae, drift = model.decode(z_hat), model.decode(z0), model.decode(plain)
    psnr = lambda a: image_metrics(to_unit(a[0]), to_unit(vae[0]))["psnr"]  # noqa: E731
    assert psnr(recon) >= 100, psnr(recon)
    assert psnr(drift) < 60  # what plain DDIM reaches on the same image: the test can tell them apart
    assert result.network_calls == 50 and calls[0] == 50 + 49 + 100  # bdia: 99 calls; ddim: 100


def test_rows_after_the_source_move_like_ddim_around_the_source_trajectory():
    """With a linear ε (the oracle), a target row's deviation from the source row evolves exactly as under DDIM:
    the closed loop adds the source's BDIA correction to a DDIM step. Running BDIA on the target row itself
    (sources=None) does not, and the source row is BDIA's exact replay either way."""
    schedule, oracle, z0 = oracle_case(50)
    oracle.s = 0.05  # a strongly contracting flow, as sampling under guidance is
    z0 = z0[:1]
    x_T, x_1 = bdia_invert(oracle.eps, z0, schedule)
    d = 1e-3 * torch.randn_like(z0)
    first = Schedule(schedule.timesteps[:1], schedule.alphas[:2], schedule.noise)
    d_1 = sample(oracle.eps, x_T + d, first) - sample(oracle.eps, x_T, first)  # DDIM's first step, for the target
    rows_T, rows_1 = torch.cat([x_T, x_T + d]), torch.cat([x_1, x_1 + d_1])
    closed = bdia_sample(oracle.eps, rows_T, rows_1, schedule, sources=1)
    pure = bdia_sample(oracle.eps, rows_T, rows_1, schedule)
    ddim = sample(oracle.eps, rows_T, schedule)
    torch.testing.assert_close(closed[1] - closed[0], ddim[1] - ddim[0], rtol=0, atol=1e-12)
    assert rel(pure[1] - pure[0], ddim[1] - ddim[0]) > 0.2
    assert rel(closed[:1], z0) < 1e-13


def test_mixed_rows_follow_the_corrections_of_the_two_inversions_replayed_beside_them():
    """Interpolation frames: rows [1, 0] and [0, 1] of `mix` replay the two inversions exactly; a frame row with
    weights (1 − w, w) takes a DDIM step plus that mix of their corrections, so on a linear ε its deviation from
    the w-mix of the two trajectories evolves exactly as under DDIM."""
    schedule, oracle, z0 = oracle_case(20)
    a, b = z0[:1], z0[1:2]
    (xa, ya), (xb, yb) = bdia_invert(oracle.eps, a, schedule), bdia_invert(oracle.eps, b, schedule)
    w = 0.3
    x_T = torch.cat([xa, xb, (1 - w) * xa + w * xb])
    x_1 = torch.cat([ya, yb, (1 - w) * ya + w * yb])
    mix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1 - w, w]], dtype=torch.float64)
    out = bdia_sample(oracle.eps, x_T, x_1, schedule, mix=mix)
    torch.testing.assert_close(out[0], a[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], b[0], rtol=0, atol=1e-12)
    # the oracle's ε is affine in x, so the w-mix of two exact trajectories is itself followed exactly
    torch.testing.assert_close(out[2], (1 - w) * a[0] + w * b[0], rtol=0, atol=1e-12)


@needs_model
def test_bdia_interpolation_ends_on_the_images_own_reconstructions(tmp_path):
    from invedit.morph import InterpolationSettings, interpolate

    model = api.load(device="cpu")
    scenes = [api.ASSETS / "scenes" / n for n in ("red-circle.png", "cyan-square.png")]
    result = interpolate(model, scenes, ["a red circle on a green background", "a cyan square on a magenta background"],
                         api.InversionSettings(steps=20, method="bdia", guidance=3.0), InterpolationSettings(frames=4))
    ends = result.report["endpoints"]
    assert all(e["frame_psnr_vs_reconstruction"] >= 60 for e in ends), ends  # DDIM-regenerated ends: 23-30 dB


def test_replay_runs_edit_rows_in_closed_loop_around_the_source():
    """Through `methods.replay` (the path edits take): with an affine ε whose target prompt shifts ε by a
    constant, a target row's deviation from the source is the one DDIM gives from level 1, where both rows start
    from the stored x_1. Running BDIA on the target row itself (the sources not passed on) does not give it."""
    from invedit.ddim import sample

    schedule, oracle, z0 = oracle_case(30)
    oracle.s = 0.05
    model_eps = lambda x, t, cond: oracle.eps(x, t) + cond[:, :1, :1, None]  # noqa: E731
    cond = torch.tensor([[[0.0]], [[0.02]]], dtype=torch.float64)  # source row, target row
    c = Conditioning(model_eps, cond, cond[:1], 1.0)
    x_T, x_1 = bdia_invert(lambda x, t: model_eps(x, t, cond[:1]), z0[:1], schedule)
    out = replay("bdia", c, x_T.repeat(2, 1, 1, 1), {"x_1": x_1}, schedule)
    torch.testing.assert_close(out[:1], z0[:1], rtol=0, atol=1e-12)
    ddim = sample(c.eps_fn(), x_1.repeat(2, 1, 1, 1), schedule, start=1)
    torch.testing.assert_close(out[1] - out[0], ddim[1] - ddim[0], rtol=0, atol=1e-12)
