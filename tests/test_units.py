"""Fast unit tests of the math modules' contracts that the end-to-end tests reach only through a model:
guidance batching, the sampler's start/hook/callback/dtype, inversion bookkeeping, BDIA's starting step,
and every validation message. Written against mutmut's survivors (session 4); values known by hand."""
import math

import numpy as np
import pytest
import torch

from invedit.bdia import bdia_invert, bdia_sample
from invedit.ddim import sample, step_coefficients
from invedit.guidance import conditional, guided, tile
from invedit.invert import FixedPointOptions, invert
from invedit.schedule import NoiseConfig, Schedule
from oracle import GaussianOracle


def oracle_case(steps=5, seed=0, dtype=torch.float64):
    schedule = Schedule.create(NoiseConfig(), steps)
    oracle = GaussianOracle(schedule)
    g = torch.Generator().manual_seed(seed)
    return schedule, oracle, (oracle.m + oracle.s * torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)).to(dtype)


def recording(eps_fn):
    calls = []

    def eps(*args):
        calls.append(args)
        return eps_fn(*args)

    return eps, calls


# --- guidance --------------------------------------------------------------------------------------------
def test_tile_repeats_the_whole_block_prompt_major_and_names_a_mismatch():
    t = torch.tensor([[1.0], [2.0]])
    assert tile(t, 2) is t
    assert tile(t, 6)[:, 0].tolist() == [1, 2, 1, 2, 1, 2]
    assert tile(torch.tensor([[7.0]]), 3)[:, 0].tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="a batch of 2 cannot fill a batch of 3 rows"):
        tile(t, 3)
    with pytest.raises(ValueError, match="a batch of 0 cannot fill"):
        tile(t[:0], 2)


def test_guided_makes_one_call_on_uncond_then_cond_rows_and_combines_by_eq_6():
    def model(x, t, cond):  # ε = x·c + t/1000, so each row shows which conditioning it got
        return x * cond[:, :1, :1, None] + t / 1000

    recorded, calls = recording(model)
    cond, uncond = torch.tensor([[[2.0]], [[3.0]]]), torch.tensor([[[0.5]]])
    x = torch.ones(2, 1, 1, 1)
    out = guided(recorded, cond, uncond, 4.0)(x, 100)
    assert len(calls) == 1 and calls[0][0].shape[0] == 4 and calls[0][1] == 100
    assert calls[0][2][:, 0, 0].tolist() == [0.5, 0.5, 2.0, 3.0]  # [uncond rows, cond rows]
    eu, ec = 0.5 + 0.1, torch.tensor([2.0, 3.0]) + 0.1
    assert torch.allclose(out.flatten(), eu + 4.0 * (ec - eu))
    per_step = guided(model, cond, lambda t: torch.tensor([[[t / 100]]]), 2.0)(x, 100)  # ∅ chosen per timestep
    assert torch.allclose(per_step.flatten(), 1.1 + 2.0 * (torch.tensor([2.0, 3.0]) + 0.1 - 1.1))
    recorded, calls = recording(model)
    plain = guided(recorded, cond, uncond, 1.0)(x, 100)  # w = 1: the conditional branch alone
    assert len(calls) == 1 and calls[0][0].shape[0] == 2
    assert torch.equal(plain, conditional(model, cond)(x, 100))
    assert torch.allclose(conditional(model, torch.tensor([[[2.0]]]))(x, 0).flatten(), torch.tensor([2.0, 2.0]))


# --- the sampler -----------------------------------------------------------------------------------------
def test_sample_from_a_later_start_runs_only_the_remaining_steps():
    schedule, oracle, z0 = oracle_case(6)
    x = torch.randn_like(z0)
    eps, calls = recording(oracle.eps)
    done = []
    out = sample(eps, x, schedule, start=2, callback=lambda d, n: done.append((d, n)))
    assert [c[1] for c in calls] == list(schedule.timesteps[2:])
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    tail = Schedule(schedule.timesteps[2:], schedule.alphas[2:], schedule.noise)
    torch.testing.assert_close(out, sample(oracle.eps, x, tail), rtol=0, atol=0)


def test_sample_applies_its_hook_after_each_step_and_lifts_half_latents():
    schedule, oracle, z0 = oracle_case(3)
    seen = []

    def hook(i, x):
        seen.append(i)
        return x * 0 + i  # the next step starts from the hook's value

    out = sample(oracle.eps, torch.randn_like(z0), schedule, hook=hook)
    assert seen == [0, 1, 2] and torch.equal(out, torch.full_like(out, 2.0))
    half = sample(lambda x, t: oracle.eps(x, t).half(), z0.bfloat16(), schedule)
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="stochastic sampling .eta > 0. needs an explicit torch.Generator"):
        sample(oracle.eps, z0, schedule, eta=0.5)


# --- inversion bookkeeping -------------------------------------------------------------------------------
def test_plain_inversion_records_levels_residuals_and_calls():
    schedule, oracle, z0 = oracle_case(4)
    done = []
    traj = invert(oracle.eps, z0, schedule, callback=lambda d, n: done.append((d, n)))  # default: ddim
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)] and traj.network_calls == 4
    assert len(traj.latents) == 5 and traj.latents[0] is traj.x_T and torch.equal(traj.latents[-1], z0)
    assert all(math.isnan(r) for r in traj.residuals) and traj.iterations == (1, 1, 1, 1)
    measured = invert(oracle.eps, z0, schedule, measure_residuals=True)
    assert measured.network_calls == 8 and measured.iterations == (2, 2, 2, 2)
    # the residual of level i is how far its sampling step lands from level i + 1, by hand:
    for i in range(4):
        a, b = step_coefficients(*schedule.step_alphas(i))
        x, nxt = measured.latents[i], measured.latents[i + 1]
        hand = float(((a * x + b * oracle.eps(x, schedule.timesteps[i]) - nxt).flatten(1).norm(dim=1)
                      / nxt.flatten(1).norm(dim=1)).max())
        assert math.isclose(measured.residuals[i], hand, rel_tol=1e-9)
    assert min(measured.residuals) > 0  # plain DDIM inversion is not exact
    fp = invert(oracle.eps, z0, schedule, "fixed-point", FixedPointOptions(tol=1e-12, max_iter=30))
    assert max(fp.residuals) < 1e-12 and fp.network_calls == sum(fp.iterations) > 8
    with pytest.raises(ValueError, match="unknown inversion method 'plain'"):
        invert(oracle.eps, z0, schedule, "plain")


@pytest.mark.parametrize("kwargs, message", [
    (dict(tol=-1.0), "fixed-point needs tol >= 0"), (dict(max_iter=0), "max_iter >= 1"),
    (dict(anderson=-1), "anderson >= 0"),
])
def test_fixed_point_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FixedPointOptions(**kwargs)
    FixedPointOptions(tol=0.0, max_iter=1, anderson=0)  # the edges are allowed


def test_bdia_starts_with_one_plain_ddim_inversion_step_and_reports_progress():
    """Any starting pair round-trips exactly, so only this can pin BDIA's first step: with one step the
    inversion is plain DDIM inversion, and with more, level N − 1 is DDIM's from z_0."""
    schedule, oracle, z0 = oracle_case(1)
    x_T, x_1 = bdia_invert(oracle.eps, z0, schedule)
    torch.testing.assert_close(x_T, invert(oracle.eps, z0, schedule, "ddim").x_T, rtol=0, atol=1e-15)
    assert torch.equal(x_1, z0)
    schedule, oracle, z0 = oracle_case(4)
    eps, calls = recording(oracle.eps)
    done = []
    x_T, x_1 = bdia_invert(eps, z0.float(), schedule, callback=lambda d, n: done.append((d, n)))
    assert x_T.dtype == torch.float32 and done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [c[1] for c in calls] == [schedule.timesteps[3], schedule.timesteps[3], schedule.timesteps[2],
                                     schedule.timesteps[1]]  # ε(z_0, t_{N−1}) first, then ε(x_k, t_k)
    a, b = step_coefficients(*schedule.step_alphas(3))
    first = (z0.float() - b * oracle.eps(z0.float(), schedule.timesteps[3])) / a
    torch.testing.assert_close(calls[1][0], first, rtol=0, atol=0)  # level N − 1 is DDIM's inversion of z_0
    done = []
    bdia_sample(lambda x, t: oracle.eps(x.double(), t), x_T, x_1, schedule,
                callback=lambda d, n: done.append((d, n)))
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert bdia_sample(lambda x, t: oracle.eps(x.double(), t), x_T, x_1, schedule).dtype == torch.float32


# --- validation messages ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(num_train_timesteps=0), "num_train_timesteps 0 is not an integer between 1 and"),
    (dict(num_train_timesteps=100001), "num_train_timesteps 100001 is not an integer between 1 and 100000"),
    (dict(num_train_timesteps=True), "num_train_timesteps True is not an integer"),
    (dict(num_train_timesteps=10.0), "num_train_timesteps 10.0 is not an integer"),
    (dict(beta_start=-0.1), "beta_start -0.1 is not a number in \\[0, 1\\)"),
    (dict(beta_end=1.0), "beta_end 1.0 is not a number in \\[0, 1\\)"),
    (dict(beta_end="0.01"), "beta_end '0.01' is not a number"),
    (dict(beta_start=False), "beta_start False is not a number"),
    (dict(steps_offset=-1), "steps_offset -1 is not an integer in \\[0, 1000\\)"),
    (dict(steps_offset=1000), "steps_offset 1000 is not an integer in \\[0, 1000\\)"),
    (dict(steps_offset=1.5), "steps_offset 1.5 is not an integer"),
    (dict(steps_offset=True), "steps_offset True is not an integer"),
    (dict(prediction_type="x0"), "prediction_type 'x0' is not epsilon, v_prediction or sample"),
    (dict(beta_schedule="cubic"), "beta_schedule 'cubic' is not one of"),
    (dict(timestep_spacing="random"), "timestep_spacing 'random' is not one of"),
])
def test_noise_config_names_each_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseConfig(**kwargs)


def test_noise_config_edges_are_allowed_and_unknown_keys_ignored():
    NoiseConfig(num_train_timesteps=1, steps_offset=0, beta_start=0.0, beta_end=0.999)
    NoiseConfig(num_train_timesteps=100000, steps_offset=99999)
    read = NoiseConfig.from_scheduler_config({"beta_end": 0.02, "clip_sample": False, "steps_offset": None,
                                              "_class_name": "DDIMScheduler"})
    assert read == NoiseConfig(beta_end=0.02)  # a None value keeps the default
    with pytest.raises(ValueError, match="trained_betas are not supported"):
        NoiseConfig.from_scheduler_config({"trained_betas": [0.1, 0.2]})


def test_schedule_checks_its_levels():
    with pytest.raises(ValueError, match="a schedule of 2 steps needs 3 levels"):
        Schedule((999, 499), (0.1, 0.5))
    with pytest.raises(ValueError, match="every ᾱ must lie in \\(0, 1\\]"):
        Schedule((999,), (0.0, 0.5))
    with pytest.raises(ValueError, match="every ᾱ must lie in"):
        Schedule((999,), (0.5, 1.5))
    assert Schedule((999,), (0.1, 1.0)).steps == 1  # ᾱ = 1 is allowed (set_alpha_to_one)
    s = Schedule.create(NoiseConfig(), 3)
    assert Schedule.from_dict(s.to_dict()) == s and s.step_alphas(2) == (s.alphas[2], s.alphas[3])


def test_bdia_sample_hooks_every_level_and_takes_its_sources_from_the_batch():
    """The hook reaches every level (the stored x_1 included); without `sources`, every row of a batch is its own
    source, whatever the batch size (5 rows, 4 channels: the count comes from the batch axis)."""
    schedule, oracle, _ = oracle_case(4)
    z0 = oracle.m + oracle.s * torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_T, x_1 = bdia_invert(oracle.eps, z0, schedule)
    torch.testing.assert_close(bdia_sample(oracle.eps, x_T, x_1, schedule), z0, rtol=0, atol=1e-12)
    seen = []

    def hook(i, x):
        seen.append((i, x.clone()))
        return x

    bdia_sample(oracle.eps, x_T, x_1, schedule, hook=hook)
    assert [i for i, _ in seen] == [0, 1, 2, 3] and torch.equal(seen[0][1], x_1)
    halved = bdia_sample(oracle.eps, x_T, x_1, schedule, hook=lambda i, x: x * 0.5 if i == 3 else x)
    torch.testing.assert_close(halved, z0 * 0.5, rtol=0, atol=1e-12)


def test_fixed_point_iterates_each_image_of_a_batch_as_if_alone():
    """Anderson's least squares are per image (one problem per row of the batch): a batch of two gives what
    each image alone gives, step by step, and the same number of iterations."""
    schedule, oracle, z0 = oracle_case(5)
    options = FixedPointOptions(tol=1e-10, max_iter=30, anderson=2)
    batch = invert(oracle.eps, z0, schedule, "fixed-point", options)
    alone = [invert(oracle.eps, z0[k:k + 1], schedule, "fixed-point", options) for k in range(2)]
    for k in range(2):
        torch.testing.assert_close(batch.x_T[k:k + 1], alone[k].x_T, rtol=0, atol=1e-12)
    # a batch step runs until its slowest image has converged: the larger of the two counts, step by step
    assert batch.iterations == tuple(max(i, j) for i, j in zip(alone[0].iterations, alone[1].iterations))
    assert max(batch.residuals) <= 1e-10


def test_small_contracts_that_mutmut_found_loose():
    """tile keeps the trailing shape; guided splits [uncond, cond] for any batch; rms_distance by hand; 1000
    steps of 1000 timesteps are allowed and every timestep is used; a schedule keeps its own noise config."""
    from invedit.interpolate import rms_distance
    from invedit.schedule import inference_timesteps

    assert tile(torch.ones(2, 3, 5), 6).shape == (6, 3, 5)
    cond, x = torch.tensor([[[1.0]], [[2.0]], [[3.0]]]), torch.ones(3, 1, 1, 1)
    out = guided(lambda x, t, c: x * c[:, :1, :1, None], cond, torch.zeros(1, 1, 1), 2.0)(x, 0)
    assert out.flatten().tolist() == [2.0, 4.0, 6.0]  # ε_u = 0, so 2·ε_c, row by row
    a, b = np.zeros((2, 2)), np.full((2, 2), 0.25)
    assert rms_distance(a, b) == 0.25 and rms_distance(b, b) == 0.0
    for spacing in ("leading", "trailing", "linspace"):
        ts = inference_timesteps(NoiseConfig(timestep_spacing=spacing, steps_offset=0), 1000)
        assert sorted(ts) == list(range(1000)), spacing
    noise = NoiseConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing="trailing")
    s = Schedule.create(noise, 4)
    assert Schedule.from_dict(s.to_dict()).noise == noise
