"""The DDIM math against the analytic oracle and against diffusers' schedulers."""
import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from invedit.ddim import ddim_step, sample, stochastic_step, to_epsilon
from invedit.invert import FixedPointOptions, invert
from invedit.schedule import NoiseConfig, Schedule, alphas_cumprod, inference_timesteps
from oracle import GaussianOracle

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
          clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def oracle_case(steps, spacing="leading", seed=0):
    schedule = Schedule.create(NoiseConfig(timestep_spacing=spacing), steps)
    oracle = GaussianOracle(schedule)
    g = torch.Generator().manual_seed(seed)
    z0 = oracle.m + oracle.s * torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    return schedule, oracle, z0


@pytest.mark.parametrize("config", [
    dict(), dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02), dict(beta_schedule="squaredcos_cap_v2"),
    dict(rescale_betas_zero_snr=True),
])
def test_alphas_cumprod_match_diffusers(config):
    ours = alphas_cumprod(NoiseConfig.from_scheduler_config({**SD, **config}))
    ref = DDIMScheduler(**{**SD, **config}).alphas_cumprod.double()
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 33, 50, 999])
def test_timesteps_match_diffusers(spacing, steps):
    ref = DDIMScheduler(**SD, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert inference_timesteps(NoiseConfig(timestep_spacing=spacing), steps) == ref.timesteps.tolist()


def test_bad_schedule_values_are_named():
    with pytest.raises(ValueError, match="timestep_spacing 'sideways'"):
        NoiseConfig(timestep_spacing="sideways")
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        Schedule.create(NoiseConfig(), 0)


def test_schedule_levels_end_clean_and_chain():
    s = Schedule.create(NoiseConfig(), 50)
    assert len(s.alphas) == s.steps + 1
    assert s.alphas[-1] == pytest.approx(float(alphas_cumprod(NoiseConfig())[0]))  # set_alpha_to_one=False
    assert all(a < b for a, b in zip(s.alphas, s.alphas[1:]))
    assert Schedule.create(NoiseConfig(set_alpha_to_one=True), 50).alphas[-1] == 1.0
    assert Schedule.from_dict(s.to_dict()) == s


def test_step_is_its_own_inverse_for_fixed_eps():
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x)
    y = ddim_step(x, eps, 0.3, 0.9)
    torch.testing.assert_close(ddim_step(y, eps, 0.9, 0.3), x, rtol=0, atol=1e-12)


def test_sampling_step_error_falls_with_steps():
    """Sampling with the ideal ε converges to the exact ODE solution as N grows (first order or better)."""
    errors = []
    for steps in (10, 20, 40, 80):
        schedule, oracle, z0 = oracle_case(steps)
        x_T = oracle.flow(z0, schedule.alphas[-1], schedule.alphas[0])
        out = sample(oracle.eps, x_T, schedule)
        errors.append(rel(out, z0))
    assert all(b < a / 1.6 for a, b in zip(errors, errors[1:])), errors  # first order: halves as N doubles


def test_plain_inversion_error_falls_with_steps():
    errors = []
    for steps in (10, 20, 40, 80):
        schedule, oracle, z0 = oracle_case(steps)
        traj = invert(oracle.eps, z0, schedule, "ddim")
        exact = oracle.flow(z0, schedule.alphas[-1], schedule.alphas[0])
        errors.append(rel(traj.x_T, exact))
    assert all(b < a / 1.6 for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("steps", [10, 50])
def test_fixed_point_round_trip_is_exact_on_the_oracle(steps):
    schedule, oracle, z0 = oracle_case(steps)
    plain = sample(oracle.eps, invert(oracle.eps, z0, schedule, "ddim").x_T, schedule)
    traj = invert(oracle.eps, z0, schedule, "fixed-point", FixedPointOptions(tol=1e-13, max_iter=50))
    exact = sample(oracle.eps, traj.x_T, schedule)
    assert rel(exact, z0) < 1e-12  # float64 precision
    assert rel(plain, z0) > 1e-4  # plain inversion shows its first-order drift
    assert traj.max_residual < 1e-13
    # float32, as the pipeline runs: exact to float32 precision
    traj32 = invert(oracle.eps, z0.float(), schedule, "fixed-point", FixedPointOptions(tol=1e-7, max_iter=50))
    assert rel(sample(oracle.eps, traj32.x_T, schedule), z0.float()) < 1e-5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sampling_matches_diffusers_ddim_step_by_step(prediction_type, spacing):
    steps = 20
    ref = DDIMScheduler(**SD, prediction_type=prediction_type, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    noise = NoiseConfig(timestep_spacing=spacing, prediction_type=prediction_type)
    schedule = Schedule.create(noise, steps)
    assert list(schedule.timesteps) == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    net = lambda x, t: torch.tanh(x * 0.7 + 0.001 * t)  # any deterministic "network" output  # noqa: E731
    x_ref = x = torch.randn(1, 4, 8, 8, generator=g)
    for i, t in enumerate(schedule.timesteps):
        x_ref = ref.step(net(x_ref, t), t, x_ref).prev_sample
        a_from, a_to = schedule.step_alphas(i)
        x = ddim_step(x, to_epsilon(net(x, t), x, a_from, prediction_type), a_from, a_to)
        torch.testing.assert_close(x, x_ref, rtol=1e-4, atol=2e-5)


# v-prediction is left out on purpose: diffusers' inverse step converts v to ε with the ᾱ of the level
# x sits at, while the network was told timestep t; we convert with ᾱ(t), the level the network assumed,
# which is what the forward sampler does too.
@pytest.mark.parametrize("prediction_type", ["epsilon"])
def test_plain_inversion_matches_diffusers_inverse_scheduler(prediction_type):
    steps = 25
    inv = DDIMInverseScheduler(**SD, prediction_type=prediction_type)
    inv.set_timesteps(steps)
    schedule = Schedule.create(NoiseConfig(prediction_type=prediction_type), steps)
    assert inv.timesteps.tolist() == list(reversed(schedule.timesteps))
    net = lambda x, t: torch.sin(x + 0.002 * t)  # noqa: E731
    alpha_of = dict(zip(schedule.timesteps, schedule.alphas))
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    x_ref = z0
    for t in inv.timesteps.tolist():
        x_ref = inv.step(net(x_ref, t), t, x_ref).prev_sample
    ours = invert(lambda x, t: to_epsilon(net(x, t), x, alpha_of[t], prediction_type), z0, schedule, "ddim")
    torch.testing.assert_close(ours.x_T, x_ref, rtol=1e-4, atol=1e-4)


def test_stochastic_sampling_needs_a_generator_and_repeats_with_one():
    schedule, oracle, z0 = oracle_case(10)
    x_T = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="Generator"):
        sample(oracle.eps, x_T, schedule, eta=1.0)
    a = sample(oracle.eps, x_T, schedule, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = sample(oracle.eps, x_T, schedule, eta=1.0, generator=torch.Generator().manual_seed(3))
    c = sample(oracle.eps, x_T, schedule, eta=0.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_stochastic_step_matches_diffusers_eta():
    ref = DDIMScheduler(**SD)
    ref.set_timesteps(10)
    schedule = Schedule.create(NoiseConfig(), 10)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    eps = torch.randn_like(x)
    t = schedule.timesteps[3]
    a_from, a_to = schedule.step_alphas(3)
    ours = stochastic_step(x, eps, a_from, a_to, 0.5, torch.Generator().manual_seed(5))
    theirs = ref.step(eps, t, x, eta=0.5, generator=torch.Generator().manual_seed(5)).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert math.isfinite(float(ours.sum()))
