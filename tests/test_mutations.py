"""Tests written against the mutations issue 13 found the suite missed: each asserts a behaviour that one of
those one-line changes breaks (named in each test), with values known without the code under test."""
import math

import numpy as np
import torch
from PIL import Image

from invedit.interpolate import mix_noise, slerp
from invedit.invert import FixedPointOptions, invert_step
from invedit.io import prepare
from invedit.report import image_metrics, reconstruction_metrics
from invedit.schedule import NoiseConfig, Schedule

from oracle import GaussianOracle


def test_psnr_of_a_known_error_is_twenty_db():
    """Mutation: PSNR's peak constant changed. An error of 0.1 everywhere in [0, 1] images is 20 dB exactly."""
    a = np.zeros((16, 16, 3))
    m = image_metrics(a + 0.1, a)
    assert math.isclose(m["mse"], 0.01, rel_tol=1e-12) and math.isclose(m["psnr"], 20.0, rel_tol=1e-12)


def test_reconstruction_vs_vae_compares_with_the_vae_round_trip_not_the_input():
    """Mutation: reconstruction_vs_vae computed against the input."""
    original = torch.zeros(3, 16, 16)
    vae = torch.full((3, 16, 16), 0.2)  # 0.1 off in [0, 1] units
    m = reconstruction_metrics(original, vae, vae.clone())
    assert m["reconstruction_vs_vae"]["psnr"] == math.inf
    assert math.isclose(m["reconstruction_vs_input"]["psnr"], 20.0, rel_tol=1e-6)  # 0.2 in float32


def test_slerp_keeps_the_norm_of_orthogonal_unit_vectors():
    """Mutation: slerp mixing like lerp. Halfway between orthogonal unit vectors slerp is (a + b)/√2."""
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([[1.0, 1.0]]) / math.sqrt(2), atol=1e-7)
    assert torch.allclose(slerp(a, b, 1 / 3), torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]]),
                          atol=1e-7)
    assert torch.allclose(mix_noise(a, b, 0.5, "slerp"), mid) and torch.allclose(mix_noise(a, b, 0.5, "lerp"),
                                                                                   torch.tensor([[0.5, 0.5]]))


def test_crop_restore_rounds_to_the_nearest_pixel():
    """Mutation: crop restore rounding with int instead of round. 1001×751 at max side 64 is cropped to 64×48;
    scaled back by 1001/64 its height is 750.75 → 751."""
    prepared = prepare(Image.new("RGB", (1001, 751), (50, 100, 150)), 16, 64, "crop")
    assert prepared.pixels.shape[-2:] == (48, 64)
    assert prepared.restore(prepared.pixels).size == (1001, 751)


def _oracle_step(steps=10, i=0):
    schedule = Schedule.create(NoiseConfig(), steps)
    oracle = GaussianOracle(schedule)
    alpha_from, alpha_to = schedule.step_alphas(i)
    x_to = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return oracle, schedule.timesteps[i], alpha_from, alpha_to, x_to


def test_fixed_point_returns_the_iterate_beyond_its_last_residual():
    """Mutation: fixed-point returning the iterate whose residual it measured instead of the next one. On the
    oracle (a linear ε) the next iterate is closer, so its true residual is below the recorded one."""
    from invedit.ddim import step_coefficients

    oracle, t, alpha_from, alpha_to, x_to = _oracle_step()
    options = FixedPointOptions(tol=1e-5, max_iter=50, anderson=0)
    x, recorded, _ = invert_step(oracle.eps, x_to, t, alpha_from, alpha_to, "fixed-point", options)
    a, b = step_coefficients(alpha_from, alpha_to)
    true = float((a * x + b * oracle.eps(x, t) - x_to).norm() / x_to.norm())
    assert recorded <= 1e-5 and true < 0.5 * recorded, (true, recorded)


def test_anderson_acceleration_saves_network_calls():
    """Mutation: Anderson acceleration switched off. On a linear problem Anderson (m = 2) converges in a few
    iterations where plain Picard iteration needs many more, at the same tolerance."""
    oracle, t, alpha_from, alpha_to, x_to = _oracle_step(steps=4, i=0)
    tight = dict(tol=1e-12, max_iter=200)
    _, r_picard, picard = invert_step(oracle.eps, x_to, t, alpha_from, alpha_to, "fixed-point",
                                      FixedPointOptions(anderson=0, **tight))
    _, r_anderson, anderson = invert_step(oracle.eps, x_to, t, alpha_from, alpha_to, "fixed-point",
                                          FixedPointOptions(anderson=2, **tight))
    assert r_anderson <= 1e-12 and r_picard <= 1e-12
    assert anderson <= 5 and anderson < picard / 2, (anderson, picard)


# --- survivors of `mutmut run` (session 4), each named by the mutant it kills ------------------------------
def test_ddim_sigma_is_zero_without_eta_and_matches_ddim_eq_16():
    """Mutants: ddim_sigma returning 1.0 for η = 0; wrong factors. DDIM eq. 16 by hand for ᾱ 0.3 → 0.9, η = 1."""
    from invedit.ddim import ddim_sigma

    assert ddim_sigma(0.3, 0.9, 0.0) == 0.0
    expected = math.sqrt((1 - 0.9) / (1 - 0.3)) * math.sqrt(1 - 0.3 / 0.9)
    assert math.isclose(ddim_sigma(0.3, 0.9, 1.0), expected, rel_tol=1e-12)
    assert math.isclose(ddim_sigma(0.3, 0.9, 0.5), expected / 2, rel_tol=1e-12)


def test_stochastic_step_draws_its_noise_in_the_latents_dtype():
    """Mutants: torch.randn without dtype= (float32 noise for float64 latents, other numbers from the seed)."""
    from invedit.ddim import ddim_sigma, predict_x0, stochastic_step

    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = torch.zeros_like(x)
    out = stochastic_step(x, eps, 0.3, 0.9, 1.0, torch.Generator().manual_seed(7))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sigma = ddim_sigma(0.3, 0.9, 1.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, math.sqrt(0.9) * predict_x0(x, eps, 0.3) + sigma * z, rtol=0, atol=1e-12)


def test_respace_with_no_distance_travelled_spaces_evenly():
    """Mutants: the zero-length guard of respace (arc[-1] <= 0 changed, its linspace changed)."""
    from invedit.interpolate import respace

    assert respace([0.0, 0.5, 1.0], [0.0, 0.0], 4) == list(np.linspace(0, 1, 4))
    assert respace([0.0, 0.5, 1.0], [0.0, 0.0], 3) == [0.0, 0.5, 1.0]
    # one step of distance 1 then 3: equal steps of arc length put the middle frame at arc 2 → weight 0.5 + 1/6
    assert np.allclose(respace([0.0, 0.5, 1.0], [1.0, 3.0], 3), [0.0, 0.5 + 0.5 / 3, 1.0])


def test_uniform_weights_probes_evenly_then_renders_once_per_round():
    """Mutants: uniform_weights' default rounds, its first probe (linspace over [0, 1], `probe or frames`)."""
    from invedit.interpolate import uniform_weights

    calls = []

    def render(weights):
        calls.append(list(weights))
        return [np.full((2, 2, 3), w ** 2) for w in weights]  # distance grows with w: respacing moves frames

    weights, images = uniform_weights(render, 5)
    assert len(calls) == 2 and calls[0] == list(np.linspace(0, 1, 5))
    assert weights == calls[1] and weights[0] == 0.0 and weights[-1] == 1.0 and weights[2] > 0.5
    calls.clear()
    uniform_weights(render, 5, probe=9)
    assert calls[0] == list(np.linspace(0, 1, 9)) and len(calls[1]) == 5


def test_compose_hooks_runs_every_hook_in_order_and_skips_none():
    """Mutants: compose_hooks dropping a hook, reversing the chain, or not passing the step index."""
    from invedit.ddim import compose_hooks

    assert compose_hooks(None, None) is None
    add = lambda i, x: x + i  # noqa: E731
    double = lambda i, x: x * 2  # noqa: E731
    assert compose_hooks(None, add) is add
    x = torch.tensor([1.0])
    assert compose_hooks(add, None, double)(3, x).item() == 8.0  # (1 + 3) · 2, not 1 · 2 + 3
    assert compose_hooks(double, add)(3, x).item() == 5.0


def test_edict_round_trip_on_the_oracle_is_exact_and_its_mixing_weight_is_checked():
    """Mutants of edict_sample / edict_invert (a term, a sign, the order of the four lines) and of its p check."""
    import pytest

    from invedit.edict import edict_invert, edict_sample

    schedule = Schedule.create(NoiseConfig(), 20)
    oracle = GaussianOracle(schedule)
    z0 = oracle.m + oracle.s * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x, y = edict_invert(oracle.eps, z0, schedule, 0.93)
    assert not torch.allclose(x, y)  # two sequences, not one
    out_x, out_y = edict_sample(oracle.eps, x, y, schedule, 0.93)
    torch.testing.assert_close(out_x, z0, rtol=0, atol=1e-10)
    torch.testing.assert_close(out_y, z0, rtol=0, atol=1e-10)
    exact = oracle.flow(z0, schedule.alphas[-1], schedule.alphas[0])
    assert float((x - exact).norm()) * 10 < float((z0 - exact).norm())  # and x_T is near the true noise of z_0
    for p in (0.49, 1.0):
        with pytest.raises(ValueError, match="mixing weight"):
            edict_sample(oracle.eps, x, y, schedule, p)
        with pytest.raises(ValueError, match="mixing weight"):
            edict_invert(oracle.eps, z0, schedule, p)
    assert edict_sample(oracle.eps, x, y, schedule, 0.5)[0].shape == z0.shape  # 0.5 is allowed


def test_mix_extras_slerps_the_noises_and_lerps_the_rest():
    """Mutants of mix_extras: noise and non-noise tensors mixed the other way, the weight flipped, the key check."""
    import pytest

    from invedit.interpolate import mix_extras

    a = {"y_T": torch.tensor([[1.0, 0.0]]), "uncond": torch.tensor([[2.0, 0.0]])}
    b = {"y_T": torch.tensor([[0.0, 1.0]]), "uncond": torch.tensor([[0.0, 4.0]])}
    mixed = mix_extras(a, b, 0.5, "slerp", False, noises=("y_T",))
    assert torch.allclose(mixed["y_T"], torch.tensor([[1.0, 1.0]]) / math.sqrt(2))  # slerp: the norm is kept
    assert torch.allclose(mixed["uncond"], torch.tensor([[1.0, 2.0]]))  # lerp
    quarter = mix_extras(a, b, 0.25, "lerp", False, noises=("y_T",))
    assert torch.allclose(quarter["y_T"], torch.tensor([[0.75, 0.25]]))  # mode lerp reaches the noises too
    assert torch.allclose(quarter["uncond"], torch.tensor([[1.5, 1.0]]))
    with pytest.raises(ValueError, match="different tensors"):
        mix_extras(a, {"y_T": b["y_T"]}, 0.5, "slerp", False)
    g = torch.Generator().manual_seed(0)
    na, nb = {"y_T": torch.randn(1, 4, 8, 8, generator=g)}, {"y_T": 3 + 2 * torch.randn(1, 4, 8, 8, generator=g)}
    plain, renormalised = (mix_extras(na, nb, 0.5, "slerp", r, noises=("y_T",))["y_T"] for r in (False, True))
    assert not torch.allclose(plain, renormalised)  # the renormalise flag reaches the noises (AdaIN)


def test_stack_extras_batches_per_step_tensors_on_their_second_axis():
    """Mutants of stack_extras: the axis of per-step tensors (N, B, …) and of the others (B, …)."""
    from invedit.interpolate import stack_extras

    frames = [{"offsets": torch.full((5, 1, 3), float(k)), "y_T": torch.full((1, 3), float(k))} for k in range(3)]
    stacked = stack_extras(frames, per_step=("offsets",))
    assert stacked["offsets"].shape == (5, 3, 3) and stacked["y_T"].shape == (3, 3)
    assert stacked["offsets"][:, 2].eq(2).all() and stacked["y_T"][1].eq(1).all()


def test_spread_is_the_coefficient_of_variation_and_nan_without_motion():
    """Mutants of spread: std/mean replaced, the empty and the motionless guard."""
    from invedit.interpolate import spread

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the guards, not a 0/0 that happens to give nan with a RuntimeWarning
        assert spread([1.0, 1.0, 1.0]) == 0.0
        assert math.isclose(spread([1.0, 3.0]), 0.5, rel_tol=1e-12)  # std 1, mean 2
        assert math.isnan(spread([])) and math.isnan(spread([0.0, 0.0]))
    d32 = np.array([0.1, 0.3, 0.7], dtype=np.float32)  # float32 distances are summed in float64
    d64 = d32.astype(np.float64)
    assert spread(d32) == float(d64.std() / d64.mean())


def test_slerp_of_parallel_noises_falls_back_to_lerp_and_mix_noise_defaults_to_slerp():
    """Mutants: slerp's near-parallel threshold (θ → 0 divides 0 by 0), mix_noise's default mode and message."""
    import pytest

    from invedit.interpolate import lerp, mix_noise

    a = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mid = slerp(a, a.clone(), 0.5)
    assert torch.isfinite(mid).all() and torch.allclose(mid, a)
    b = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(mix_noise(a, b, 0.3), slerp(a, b, 0.3))
    assert not torch.allclose(mix_noise(a, b, 0.3), lerp(a, b, 0.3))
    with pytest.raises(ValueError, match="interpolation mode 'cubic' is not one of"):
        mix_noise(a, b, 0.3, "cubic")


def test_respace_uses_the_whole_path_not_its_first_step():
    """Mutants: respace's guard reading arc[1] or arc[-2] (a first step of zero length) instead of the total."""
    from invedit.interpolate import respace

    # no motion on the first step, 2 on the second: the middle frame goes halfway along the second step
    assert np.allclose(respace([0.0, 0.5, 1.0], [0.0, 2.0], 3), [0.0, 0.75, 1.0])


def test_edict_sample_defaults_keeps_float32_for_half_inputs_and_hooks_both_sequences():
    """Mutants of edict_sample: its default p, the dtype of its latents, the hook's arguments."""
    from invedit.edict import edict_sample

    schedule = Schedule.create(NoiseConfig(), 3)
    oracle = GaussianOracle(schedule)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    y = x + 0.01
    default, explicit = edict_sample(oracle.eps, x, y, schedule), edict_sample(oracle.eps, x, y, schedule, 0.93)
    assert torch.equal(default[0], explicit[0])  # the default p is 0.93
    half = edict_sample(oracle.eps, x.bfloat16(), y.bfloat16(), schedule)
    assert half[0].dtype == torch.float32 and half[1].dtype == torch.float32  # latent arithmetic in float32
    seen = []

    def hook(i, z):
        seen.append((i, z.clone()))
        return z * 0.5

    hooked = edict_sample(oracle.eps, x, y, schedule, hook=hook)
    assert [i for i, _ in seen] == [0, 0, 1, 1, 2, 2]  # each step, both sequences, with the step index
    assert not torch.equal(seen[0][1], seen[1][1])  # x, then y
    assert torch.equal(hooked[0], seen[-2][1] * 0.5) and torch.equal(hooked[1], seen[-1][1] * 0.5)


def test_edict_keeps_its_latents_dtype_whatever_eps_returns_and_reports_progress():
    """Mutants of edict_invert / edict_sample: the default p, `.to(dtype)` of ε and of z_0, the callback's counts."""
    from invedit.edict import edict_invert, edict_sample

    schedule = Schedule.create(NoiseConfig(), 3)
    oracle = GaussianOracle(schedule)
    eps64 = lambda x, t: oracle.eps(x.double(), t)  # noqa: E731  (a network answering in float64)
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    inv_steps, sample_steps = [], []
    x, y = edict_invert(eps64, z0, schedule, callback=lambda d, n: inv_steps.append((d, n)))
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert torch.equal(x, edict_invert(eps64, z0, schedule, 0.93)[0])  # the default p is 0.93
    xb, _ = edict_invert(eps64, z0.bfloat16(), schedule)
    assert xb.dtype == torch.float32  # bf16 latents are lifted to float32 first
    out = edict_sample(eps64, x, y, schedule, callback=lambda d, n: sample_steps.append((d, n)))
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
    assert inv_steps == sample_steps == [(1, 3), (2, 3), (3, 3)]


def test_slerp_of_a_batch_of_unequal_norms_at_sixty_degrees():
    """Mutants of slerp's cosine (summed over the batch, norms divided, norm of the whole batch, clamp at 1) and of
    its sin(θ) division: values known by hand for each row of a batch, endpoints returned exactly."""
    c, s = math.cos(math.pi / 3), math.sin(math.pi / 3)
    a = torch.tensor([[0.5, 0.0], [0.0, 3.0]], dtype=torch.float64)  # row norms 0.5 and 3
    b = torch.tensor([[0.5 * c, 0.5 * s], [0.0, -3.0]], dtype=torch.float64)  # 60° and 180° from a
    half = slerp(a, b, 0.5)
    assert torch.allclose(half[0], torch.tensor([0.5 * math.cos(math.pi / 6), 0.5 * math.sin(math.pi / 6)],
                                                dtype=torch.float64), atol=1e-12)
    assert torch.allclose(half[1], torch.zeros(2, dtype=torch.float64), atol=1e-12)  # antiparallel: lerp, midpoint 0
    third = slerp(a[:1], b[:1], 1 / 3)  # 20° along the arc, norm kept
    assert torch.allclose(third, 0.5 * torch.tensor([[math.cos(math.pi / 9), math.sin(math.pi / 9)]],
                                                    dtype=torch.float64), atol=1e-12)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    y = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert torch.equal(slerp(x, y, 0.0), x) and torch.equal(slerp(x, y, 1.0), y)
