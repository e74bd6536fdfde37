"""Tests written against mutmut's survivors in the operations modules (methods, store, io, report; issue 13):
each checks behaviour a user relies on, with expected values known by hand, from the analytic oracle, or
from a lower layer called on its own. No model: everything here runs in a few seconds."""
import math
import os
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage.metrics import structural_similarity

from invedit import io as iio
from invedit import report, store
from invedit.bdia import bdia_invert, bdia_sample
from invedit.ddim import sample
from invedit.edict import edict_invert, edict_sample
from invedit.io import ImageError
from invedit.invert import FixedPointOptions, invert
from invedit.methods import METHODS, Conditioning, MethodOptions, counted, invert_with, method, replay
from invedit.nulltext import NullTextOptions
from invedit.schedule import NoiseConfig, Schedule
from oracle import ConditionalOracle
from test_inversion_files import _DELETE, _parts, _set, _write
from test_io import _noise, _png_header_only, _refused

# --- methods: the registry on the conditional oracle ------------------------------------------------------
# cond's mean 0.5 and ∅'s 0: guided at w the oracle is Gaussian data of mean 0 + w·(0.5 − 0) (its ε is linear
# in the mean), so a method that inverts at w must match plain inversion of the oracle at mean 0.5·w.
N, W = 6, 3.0


def _setup(scale=W, batch=2, steps=N):
    schedule = Schedule.create(NoiseConfig(), steps)
    oracle = ConditionalOracle(schedule)
    cond, uncond = torch.full((1, 2, 3), 0.5, dtype=torch.float64), torch.zeros(1, 2, 3, dtype=torch.float64)
    z0 = 0.5 + 0.3 * torch.randn(batch, 4, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return schedule, oracle, Conditioning(oracle.eps, cond, uncond, scale), z0


def _close(a, b, atol=1e-10):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_the_registry_names_its_methods_and_refuses_others():
    assert list(METHODS) == ["ddim", "fixed-point", "negative-prompt", "null-text", "direct", "edict", "bdia"]
    assert all(method(name).name == name for name in METHODS)
    with pytest.raises(ValueError, match="^unknown inversion method 'plain'; choose one of ddim, fixed-point, "
                                         "negative-prompt, null-text, direct, edict, bdia$"):
        method("plain")
    with pytest.raises(ValueError, match=r"pivot 'plain' is not one of \('ddim', 'fixed-point'\)"):
        MethodOptions(pivot="plain")
    with pytest.raises(ValueError, match=r"BDIA's gamma must be in \(0, 1\], got 0"):
        MethodOptions(bdia_gamma=0)


def test_what_each_method_stores_and_needs():
    """The records store.validate and morph rely on: per-step tensors, noises, anchors, required extras."""
    table = {name: (m.per_step, m.noises, m.anchors, m.requires, m.frames_with_ends) for name, m in METHODS.items()}
    assert table == {
        "ddim": ((), (), (), (), False), "fixed-point": ((), (), (), (), False),
        "negative-prompt": ((), (), (), (), False), "null-text": (("uncond",), (), (), ("uncond",), False),
        "direct": (("offsets", "pivot"), (), ("pivot",), ("offsets",), False),
        "edict": ((), ("y_T",), (), ("y_T",), False), "bdia": ((), ("x_1",), ("x_1",), ("x_1",), True)}


def test_each_method_inverts_at_the_guidance_of_its_paper():
    """ddim, fixed-point, EDICT and BDIA invert the guided model; negative-prompt, null-text and direct invert
    at w = 1 (their pivot), with the pivot method and the options they are given."""
    schedule, oracle, c, z0 = _setup()
    guided_at, pivot_at = oracle.at(0.5 * W).eps, oracle.at(0.5).eps
    fp = FixedPointOptions(tol=1e-9, max_iter=7)
    options = MethodOptions(fixed_point=fp, edict_mix=0.8, bdia_gamma=0.9)
    _close(invert_with("ddim", c, z0, schedule).x_T, invert(guided_at, z0, schedule).x_T)
    _close(invert_with("fixed-point", c, z0, schedule, options).x_T,
           invert(guided_at, z0, schedule, "fixed-point", fp).x_T)
    for name in ("negative-prompt", "null-text", "direct"):
        _close(invert_with(name, c, z0, schedule, MethodOptions(null_text=NullTextOptions(inner_steps=1))).x_T,
               invert(pivot_at, z0, schedule).x_T)
    _close(invert_with("direct", c, z0, schedule, MethodOptions(pivot="fixed-point", fixed_point=fp)).x_T,
           invert(pivot_at, z0, schedule, "fixed-point", fp).x_T)
    x, y = edict_invert(guided_at, z0, schedule, 0.8)
    r = invert_with("edict", c, z0, schedule, options)
    _close(r.x_T, x), _close(r.extras["y_T"], y)
    x_T, x_1 = bdia_invert(guided_at, z0, schedule, 0.9)
    r = invert_with("bdia", c, z0, schedule, options)
    _close(r.x_T, x_T), _close(r.extras["x_1"], x_1)
    x, y = edict_invert(guided_at, z0, schedule)  # the defaults: EDICT's p = 0.93, BDIA's γ = 1
    _close(invert_with("edict", c, z0, schedule).extras["y_T"], y)
    _close(invert_with("bdia", c, z0, schedule).extras["x_1"], bdia_invert(guided_at, z0, schedule, 1.0)[1])


def test_network_calls_are_counted_and_match_the_registry():
    schedule, oracle, c, z0 = _setup()
    options = MethodOptions(fixed_point=FixedPointOptions(tol=1e-9, max_iter=4),
                            null_text=NullTextOptions(inner_steps=3, tol=0.0))
    # (inversion at most, replay) for 6 steps, by hand: max_iter + 1 = 5 a step for fixed-point, inner + 2 = 5
    # a step for null-text's optimisation, one extra call a step for direct, two for EDICT, N − 1 BDIA replays.
    expected = {"ddim": (6, 6), "fixed-point": (30, 6), "negative-prompt": (6, 6), "null-text": (36, 6),
                "direct": (12, 6), "edict": (12, 12), "bdia": (6, 5)}
    assert {name: m.calls(N, options) for name, m in METHODS.items()} == expected
    fp_pivot = MethodOptions(pivot="fixed-point", fixed_point=FixedPointOptions(max_iter=4),
                             null_text=NullTextOptions(inner_steps=3))
    assert [METHODS[n].calls(N, fp_pivot)[0] for n in ("negative-prompt", "null-text", "direct")] == [30, 60, 36]
    for name, (most, replays) in expected.items():
        counter = [0]
        c_counted = Conditioning(counted(oracle.eps, counter), c.cond, c.uncond, c.scale)
        result = invert_with(name, c_counted, z0, schedule, options)
        assert result.network_calls == counter[0], name
        exact = name not in ("fixed-point", "null-text")  # those stop early when converged
        assert counter[0] == most if exact else N < counter[0] <= most, (name, counter[0])
        counter[0] = 0
        replay(name, c_counted, result.x_T, result.extras, schedule, options)
        assert counter[0] == replays, name


def test_exact_methods_replay_their_inversion_and_ddim_drifts():
    schedule, oracle, c, z0 = _setup()
    options = MethodOptions(fixed_point=FixedPointOptions(tol=1e-13, max_iter=60))
    errors = {}
    for name in ("ddim", "fixed-point", "direct", "edict", "bdia", "negative-prompt"):
        r = invert_with(name, c, z0, schedule, options)
        out = replay(name, c, r.x_T, r.extras, schedule, options)
        errors[name] = _rel(out, z0)
        if name == "negative-prompt":  # ∅ := the source prompt: every guidance scale replays as w = 1
            _close(out, sample(oracle.at(0.5).eps, r.x_T, schedule))
    assert errors["ddim"] > 1e-3  # first-order drift at 6 steps
    assert errors["fixed-point"] < 1e-9 and errors["edict"] < 1e-9 and errors["bdia"] < 1e-9
    assert errors["direct"] == 0.0  # closed loop: the last reset is z_0 itself


def test_null_text_replays_the_trajectory_it_optimised():
    """The per-step ∅ go to their own timesteps: the replay's error is the loss its last step reached, and the
    optimisation beats plain DDIM at the same guidance."""
    schedule, oracle, c, z0 = _setup()
    options = MethodOptions(null_text=NullTextOptions(inner_steps=20, lr=0.05, tol=0.0, tol_growth=0.0))
    events = []
    r = invert_with("null-text", c, z0, schedule, options, lambda *e: events.append(e))
    assert events == [("invert", i, N) for i in range(1, N + 1)] + [("null-text", i, N) for i in range(1, N + 1)]
    assert r.extras["uncond"].shape == (N, 2, 2, 3) and len(r.residuals) == N
    out = replay("null-text", c, r.x_T, r.extras, schedule, options)
    assert math.isclose(float(torch.nn.functional.mse_loss(out, z0)), r.residuals[-1], rel_tol=1e-6)
    ddim = invert_with("ddim", c, z0, schedule)
    assert _rel(out, z0) < 0.5 * _rel(replay("ddim", c, ddim.x_T, {}, schedule), z0)
    plain = invert_with("null-text", Conditioning(oracle.eps, c.cond, c.uncond, 1.0), z0, schedule)
    assert plain.extras["uncond"].shape == (N, 2, 2, 3) and bool((plain.extras["uncond"] == 0).all())
    assert plain.network_calls == N and all(math.isnan(v) for v in plain.residuals)  # w = 1: nothing to optimise


def test_progress_names_each_stage():
    schedule, oracle, c, z0 = _setup()
    stages = {}
    for name in METHODS:
        events = []
        invert_with(name, c, z0, schedule, MethodOptions(null_text=NullTextOptions(inner_steps=1)),
                    lambda *e: events.append(e))
        stages[name] = events
    steps = [(i, N) for i in range(1, N + 1)]
    for name in ("ddim", "fixed-point", "negative-prompt", "edict", "bdia"):
        assert stages[name] == [("invert", *s) for s in steps], name
    assert stages["direct"] == [("invert", *s) for s in steps] + [("correct", *s) for s in steps]
    for name in ("edict", "bdia"):
        r = invert_with(name, c, z0, schedule)
        assert len(r.residuals) == N and all(math.isnan(v) for v in r.residuals)


def test_negative_prompt_takes_the_source_prompt_as_every_rows_negative():
    """Rows [target 0.2, target 0.9] with the inverted prompt 0.5 as `source`: ∅ := 0.5, so row r samples the
    oracle of mean 0.5 + w·(m_r − 0.5)."""
    schedule, oracle, c, z0 = _setup(batch=1)
    cond = torch.tensor([0.2, 0.9], dtype=torch.float64).view(2, 1, 1).expand(2, 2, 3)
    two = Conditioning(oracle.eps, cond, c.uncond, W, source=c.cond)
    assert torch.equal(two.source_cond, c.cond) and torch.equal(c.source_cond, c.cond[:1])
    x_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = replay("negative-prompt", two, x_T, {}, schedule)
    _close(out[:1], sample(oracle.at(0.5 + W * (0.2 - 0.5)).eps, x_T[:1], schedule))
    _close(out[1:], sample(oracle.at(0.5 + W * (0.9 - 0.5)).eps, x_T[1:], schedule))
    _close(two.eps_fn(1.0)(x_T, schedule.timesteps[0]), oracle.eps(x_T, schedule.timesteps[0], cond))  # w = 1
    t = schedule.timesteps[0]
    _close(two.eps_fn()(x_T, t), torch.cat([oracle.at(W * 0.2).eps(x_T[:1], t), oracle.at(W * 0.9).eps(x_T[1:], t)]))


def test_direct_resets_the_source_rows_and_carries_the_others():
    """Closed loop with the pivot: row 0 := pivot_{i+1}, row 1 keeps its own distance from row 0; open loop
    (frames mixed from two inversions, no pivot): the recorded offsets are added to every row. Stored tensors
    (float64 here) take the latents' dtype."""
    hook = METHODS["direct"].hook
    pivot = torch.tensor([10.0, 20.0], dtype=torch.float64).view(2, 1, 1, 1, 1).expand(2, 1, 4, 1, 1)  # (N, P, 4, 1, 1)
    offsets = pivot / 10
    x = torch.tensor([3.0, 5.0]).view(2, 1, 1, 1).expand(2, 4, 1, 1)  # (R = 2 rows, 4, 1, 1) float32
    closed, opened = hook({"offsets": offsets, "pivot": pivot})(1, x), hook({"offsets": offsets})(1, x)
    assert closed.dtype == opened.dtype == torch.float32 and closed.shape == opened.shape == (2, 4, 1, 1)
    assert closed[:, 0].flatten().tolist() == [20.0, 22.0] and opened[:, 0].flatten().tolist() == [5.0, 7.0]
    assert METHODS["ddim"].hook({"offsets": offsets}) is None


def test_direct_offsets_alone_replay_the_pivot_open_loop():
    """The offsets are each guided step's gap to the next pivot latent: added open loop they land on z_0."""
    schedule, oracle, c, z0 = _setup()
    r = invert_with("direct", c, z0, schedule)
    _close(replay("direct", c, r.x_T, {"offsets": r.extras["offsets"]}, schedule), z0)
    assert _rel(replay("ddim", c, r.x_T, {}, schedule), z0) > 1e-2  # without them, guided DDIM goes elsewhere


def test_every_replay_runs_the_callers_hook_and_callback_at_each_step():
    schedule, oracle, c, z0 = _setup(batch=1)
    for name in METHODS:
        r = invert_with(name, c, z0, schedule, MethodOptions(null_text=NullTextOptions(inner_steps=1)))
        assert len(r.residuals) == N and isinstance(r.extras, dict), name
        cases = [r.extras] + ([{}, {"x_1": r.extras["x_1"], "mix": torch.ones(1, 1, dtype=torch.float64)}]
                              if name == "bdia" else [])
        for extras in cases:
            seen, done = [], []

            def hook(i, x):
                seen.append((i, x.clone()))
                return x

            replay(name, c, r.x_T, extras, schedule, hook=hook, callback=lambda d, n: done.append((d, n)))
            per_step = 2 if name == "edict" else 1  # EDICT hooks both of its sequences
            assert [i for i, _ in seen] == [i for i in range(N) for _ in range(per_step)], name
            assert done == [(i, N) for i in range(1, N + 1)], name
            if name == "direct":  # after the method's own correction: the hook sees the reset rows
                assert all(torch.equal(x, p) for (_, x), p in zip(seen, r.extras["pivot"]))
    for name in ("ddim", "fixed-point", "negative-prompt"):
        assert invert_with(name, c, z0, schedule).extras == {}
    plain = Conditioning(oracle.eps, c.cond, c.uncond, 1.0)
    _close(invert_with("null-text", plain, z0, schedule).x_T, invert(oracle.at(0.5).eps, z0, schedule).x_T)


def test_edict_and_bdia_replay_batches_of_rows():
    """Two rows per inverted image (prompt-major): EDICT tiles y_T; BDIA replays its source rows and steps the
    others with their corrections; without x_1, BDIA's replay is plain DDIM; with `mix`, frames mix corrections."""
    schedule, oracle, c, z0 = _setup(batch=1)
    rows = torch.tensor([0.5, 0.9], dtype=torch.float64).view(2, 1, 1).expand(2, 2, 3)
    two = Conditioning(oracle.eps, rows, c.uncond, W, source=c.cond)
    eps = two.eps_fn()
    e = invert_with("edict", c, z0, schedule)
    x_T = e.x_T.expand(2, -1, -1, -1)
    _close(replay("edict", two, x_T, e.extras, schedule), edict_sample(eps, x_T, x_T * 0 + e.extras["y_T"],
                                                                        schedule)[0])
    b = invert_with("bdia", c, z0, schedule)
    x_T = b.x_T.expand(2, -1, -1, -1)
    out = replay("bdia", two, x_T, b.extras, schedule)
    _close(out, bdia_sample(eps, x_T, b.extras["x_1"].expand(2, -1, -1, -1), schedule, sources=1))
    _close(out[:1], z0, atol=1e-9)
    _close(replay("bdia", two, x_T, {}, schedule), sample(eps, x_T, schedule))
    mix = torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64)
    pair = torch.cat([b.extras["x_1"], b.extras["x_1"] + 0.01])
    x_T2 = torch.cat([b.x_T, b.x_T + 0.01])
    _close(replay("bdia", two, x_T2, {"x_1": pair, "mix": mix}, schedule),
           bdia_sample(eps, x_T2, pair, schedule, mix=mix))


# --- store: inversion files -------------------------------------------------------------------------------
def _inversion(method="direct", pixels=True, **changes):
    """A valid 4-step inversion of a 1×4×8×8 latent (a 64×64 input, 60×50 of content), made by hand; `pixels`
    True (that input), False (none) or a tensor."""
    schedule = Schedule.create(NoiseConfig(), 4)
    g = torch.Generator().manual_seed(0)
    x_T, z0 = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    extras = {"direct": {"offsets": torch.randn(4, 1, 4, 8, 8, generator=g), "pivot": torch.randn(4, 1, 4, 8, 8)},
              "null-text": {"uncond": torch.randn(4, 1, 2, 3, generator=g).half()},
              "edict": {"y_T": torch.randn(1, 4, 8, 8, generator=g)},
              "bdia": {"x_1": torch.randn(1, 4, 8, 8, generator=g)}}.get(method, {})
    fields = dict(x_T=x_T, z0=z0, schedule=schedule, method=method, prompt="a cat", guidance=3.0,
                  model={"model": "tiny", "fingerprint": "abc", "family": "sd1"},
                  image={"original_size": [60, 50], "resized_size": [60, 50], "content_box": [0, 0, 60, 50]},
                  stats={"network_calls": 8, "seconds": 0.5}, extras=extras, negative_prompt="blurry",
                  pixels=torch.randint(0, 256, (1, 3, 64, 64), generator=g, dtype=torch.uint8) if pixels is True
                  else (pixels if torch.is_tensor(pixels) else None))
    fields.update(changes)
    return store.Inversion(**fields)


def _refusal(path) -> str:
    with pytest.raises(store.InversionFileError) as err:
        store.load_inversion(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(f"{path}: "):]


def test_a_saved_inversion_reloads_bit_exactly(tmp_path):
    for method in ("direct", "null-text", "edict", "bdia", "ddim"):
        inv = _inversion(method, pixels=method != "ddim", x_T=_inversion().x_T.double())  # x_T is kept in float32
        path = store.save_inversion(tmp_path / f"{method}.inversion.safetensors", inv)
        back = store.load_inversion(path)
        assert back.x_T.dtype == torch.float32 and torch.equal(back.x_T, inv.x_T.float()) and torch.equal(back.z0,
                                                                                                          inv.z0)
        assert back.extras.keys() == inv.extras.keys()
        for k, v in inv.extras.items():
            assert back.extras[k].dtype == v.dtype and torch.equal(back.extras[k], v), k
        assert (back.pixels is None) == (inv.pixels is None) and (inv.pixels is None or torch.equal(back.pixels,
                                                                                                   inv.pixels))
        assert (back.schedule, back.method, back.prompt, back.negative_prompt, back.guidance) == \
               (inv.schedule, method, "a cat", "blurry", 3.0)
        assert (dict(back.model), dict(back.image), dict(back.stats)) == (inv.model, inv.image, inv.stats)
    meta, tensors = _parts(path)
    assert meta == {"format": "invedit.inversion/1", "method": "ddim", "prompt": "a cat", "negative_prompt": "blurry",
                    "guidance": 3.0, "schedule": inv.schedule.to_dict(), "model": inv.model, "image": inv.image,
                    "stats": inv.stats}  # the format name stays: files written by earlier versions keep loading
    assert set(tensors) == {"x_T", "z0"}


def test_older_files_kept_the_input_among_the_extras_and_lack_optional_fields(tmp_path):
    inv = _inversion("ddim")
    meta, tensors = _parts(store.save_inversion(tmp_path / "new.inversion.safetensors", inv))
    tensors["extra.input"] = tensors.pop("input")
    for key in ("image", "stats", "negative_prompt"):
        del meta[key]
    back = store.load_inversion(_write(tmp_path / "old.inversion.safetensors", meta, tensors))
    assert torch.equal(back.pixels, inv.pixels) and back.extras == {}
    assert (back.image, back.stats, back.negative_prompt) == ({}, {}, "")


def test_unreadable_files_are_refused_with_what_is_wrong(tmp_path):
    assert _refusal(tmp_path / "missing.inversion.safetensors") == "no such inversion file"
    (tmp_path / "folder").mkdir()
    assert _refusal(tmp_path / "folder") == "no such inversion file"
    garbage = tmp_path / "garbage.inversion.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    assert _refusal(garbage).startswith("not a readable safetensors file (")
    plain = tmp_path / "plain.safetensors"
    save_file({"x_T": torch.zeros(1)}, str(plain))
    no_x = tmp_path / "no_x.safetensors"
    save_file({"z0": torch.zeros(1)}, str(no_x), metadata={"invedit": "{}"})
    for path in (plain, no_x):
        assert _refusal(path) == "a safetensors file, but not an invedit inversion (no metadata block)"
    tensors = {"x_T": torch.zeros(1)}
    assert _refusal(_write(tmp_path / "a", None, tensors, raw_meta="{oops")).startswith(
        "its metadata block is not valid JSON (Expecting property name")
    assert _refusal(_write(tmp_path / "b", None, tensors, raw_meta="[1]")) == \
        "format 'list' is not 'invedit.inversion/1'"
    assert _refusal(_write(tmp_path / "c", {"format": "other/1"}, tensors)) == \
        "format 'other/1' is not 'invedit.inversion/1'"
    assert _refusal(_write(tmp_path / "d", {}, tensors)) == "format None is not 'invedit.inversion/1'"


def _edited(tmp_path, inv, key, value):
    meta, tensors = _parts(store.save_inversion(tmp_path / "valid.inversion.safetensors", inv))
    return _write(tmp_path / "edited.inversion.safetensors", _set(meta, key, value), tensors)


@pytest.mark.parametrize("key, value, message", [
    ("guidance", _DELETE, "lacks 'guidance'"), ("method", _DELETE, "lacks 'method'"),
    ("prompt", 7, "metadata 'prompt' is a int, not a str"),
    ("negative_prompt", None, "metadata 'negative_prompt' is a NoneType, not a str"),
    ("method", ["ddim"], "metadata 'method' is a list, not a str"),
    ("schedule", "ddim", "metadata 'schedule' is a str, not a dict"),
    ("model", [], "metadata 'model' is a list, not a dict"),
    ("image", 1.5, "metadata 'image' is a float, not a dict"),
    ("stats", "fast", "metadata 'stats' is a str, not a dict"),
    ("guidance", True, "guidance True is not a finite number"),
    ("guidance", "3", "guidance '3' is not a finite number"),
    ("guidance", float("inf"), "guidance inf is not a finite number"),
    ("guidance", float("nan"), "guidance nan is not a finite number"),
    ("method", "plain", "method 'plain' is not one of ddim, fixed-point, negative-prompt, null-text, direct, edict, "
                        "bdia"),
    ("schedule.timesteps", [999, 749, 499, 250], "its schedule is not the 4-step schedule of its noise config"),
    ("method", "null-text", "method null-text needs the tensor extra.uncond, which the file lacks"),
    ("method", "ddim", "tensor extra.offsets is not one method ddim uses"),
    ("image.original_size", [0, 50], "image original_size [0, 50] is not two positive integers"),
    ("image.original_size", [60.0, 50], "image original_size [60.0, 50] is not two positive integers"),
    ("image.resized_size", [60, 50, 1], "image resized_size [60, 50, 1] is not two positive integers"),
    ("image.resized_size", "60x50", "image resized_size '60x50' is not two positive integers"),
    ("image.original_size", [8000, 8001], "image original_size 8000×8001 is above the 64 MP input limit"),
    ("image.resized_size", [8001, 8000], "image resized_size 8001×8000 is above the 64 MP input limit"),
    *[("image.content_box", box, f"image content_box {box!r} does not lie inside the 64×64 input") for box in (
        [0, 0, 65, 50], [0, 0, 60, 65], [-1, 0, 60, 50], [0, -1, 60, 50], [60, 0, 60, 50], [0, 50, 60, 50], [0, 0, 60],
        [0, 0, 60.0, 50], "all")],
])
def test_edited_metadata_is_refused_by_name(tmp_path, key, value, message):
    assert _refusal(_edited(tmp_path, _inversion(), key, value)) == "not a usable inversion: " + message


@pytest.mark.parametrize("key, value", [
    ("guidance", 3), ("image.original_size", [8000, 8000]), ("image.resized_size", [1, 1]),
    ("image.content_box", [0, 0, 64, 64]), ("image.content_box", [63, 63, 64, 64]), ("image", {}),
])
def test_the_edges_of_what_is_accepted(tmp_path, key, value):
    back = store.load_inversion(_edited(tmp_path, _inversion(), key, value))
    assert back.guidance == 3.0 and isinstance(back.guidance, float)


def _with_tensor(tmp_path, inv, name, value):
    meta, tensors = _parts(store.save_inversion(tmp_path / "valid.inversion.safetensors", inv))
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    return _write(tmp_path / "edited.inversion.safetensors", meta, tensors)


@pytest.mark.parametrize("method, name, value, message", [
    ("ddim", "x_T", torch.zeros(4, 8, 8), "tensor x_T has shape (4, 8, 8), expected (batch, channels, height, width)"),
    ("ddim", "x_T", torch.zeros(1, 4, 8, 8, dtype=torch.int32), "tensor x_T is not all finite floating-point numbers"),
    ("ddim", "x_T", torch.full((1, 4, 8, 8), float("nan")), "tensor x_T is not all finite floating-point numbers"),
    ("ddim", "z0", torch.zeros(1, 4, 8, 4), "tensor z0 has shape (1, 4, 8, 4), expected (1, 4, 8, 8)"),
    ("ddim", "z0", torch.full((1, 4, 8, 8), float("-inf")), "tensor z0 is not all finite floating-point numbers"),
    ("direct", "extra.offsets", None, "method direct needs the tensor extra.offsets, which the file lacks"),
    ("direct", "extra.offsets", torch.zeros(3, 1, 4, 8, 8),
     "tensor extra.offsets has shape (3, 1, 4, 8, 8), expected (4, 1, …)"),
    ("direct", "extra.offsets", torch.zeros(4, 2, 4, 8, 8),
     "tensor extra.offsets has shape (4, 2, 4, 8, 8), expected (4, 1, …)"),
    ("direct", "extra.offsets", torch.zeros(4), "tensor extra.offsets has shape (4,), expected (4, 1, …)"),
    ("direct", "extra.pivot", torch.zeros(4, 1, 4, 8, 7),
     "tensor extra.pivot has shape (4, 1, 4, 8, 7), expected (4, 1, 4, 8, 8)"),
    ("direct", "extra.offsets", torch.zeros(4, 1, 4, 8, 8, dtype=torch.int64),
     "tensor extra.offsets is not all finite floating-point numbers"),
    ("null-text", "extra.uncond", torch.full((4, 1, 2, 3), float("inf")),
     "tensor extra.uncond is not all finite floating-point numbers"),
    ("edict", "extra.y_T", torch.zeros(1, 4, 8), "tensor extra.y_T has shape (1, 4, 8), expected (1, 4, 8, 8)"),
    ("bdia", "extra.x_1", torch.full((1, 4, 8, 8), float("nan")),
     "tensor extra.x_1 is not all finite floating-point numbers"),
    ("bdia", "extra.y_T", torch.zeros(1, 4, 8, 8), "tensor extra.y_T is not one method bdia uses"),
    ("ddim", "input", torch.zeros(1, 3, 64, 64), "tensor input has shape (1, 3, 64, 64) and dtype torch.float32, "
                                                 "expected (B, 3, H, W) uint8"),
    ("ddim", "input", torch.zeros(3, 64, 64, dtype=torch.uint8),
     "tensor input has shape (3, 64, 64) and dtype torch.uint8, expected (B, 3, H, W) uint8"),
    ("ddim", "input", torch.zeros(2, 3, 64, 64, dtype=torch.uint8),
     "tensor input has shape (2, 3, 64, 64) and dtype torch.uint8, expected (B, 3, H, W) uint8"),
    ("ddim", "input", torch.zeros(1, 4, 64, 64, dtype=torch.uint8),
     "tensor input has shape (1, 4, 64, 64) and dtype torch.uint8, expected (B, 3, H, W) uint8"),
    ("ddim", "input", torch.zeros(1, 3, 60, 64, dtype=torch.uint8),
     "input 64×60 is not a multiple of the latent 8×8"),
    ("ddim", "input", torch.zeros(1, 3, 64, 60, dtype=torch.uint8),
     "input 60×64 is not a multiple of the latent 8×8"),
    ("ddim", "input", torch.zeros(1, 3, 68, 64, dtype=torch.uint8),  # 68 = 8·8 + 4: not a multiple, same quotient
     "input 64×68 is not a multiple of the latent 8×8"),
    ("ddim", "input", torch.zeros(1, 3, 64, 68, dtype=torch.uint8),
     "input 68×64 is not a multiple of the latent 8×8"),
    ("direct", "extra.offsets", torch.zeros(4, 1, 4, 8, 7),
     "tensor extra.offsets has shape (4, 1, 4, 8, 7), expected (4, 1, 4, 8, 8)"),
    ("ddim", "input", torch.zeros(1, 3, 64, 128, dtype=torch.uint8),
     "input 128×64 is not a multiple of the latent 8×8"),
])
def test_edited_tensors_are_refused_by_name(tmp_path, method, name, value, message):
    assert _refusal(_with_tensor(tmp_path, _inversion(method), name, value)) == "not a usable inversion: " + message


def test_a_wide_latent_is_checked_along_the_right_axes(tmp_path):
    """A 8×6 latent (h × w) of a 24×18 input (H × W, ×3): H goes with h and W with w."""
    g = torch.Generator().manual_seed(1)
    wide = dict(x_T=torch.randn(1, 4, 8, 6, generator=g), z0=torch.randn(1, 4, 8, 6, generator=g),
                image={"original_size": [18, 24], "content_box": [0, 0, 18, 24]})
    inv = _inversion("ddim", pixels=torch.zeros(1, 3, 24, 18, dtype=torch.uint8), **wide)
    assert store.load_inversion(store.save_inversion(tmp_path / "w.inversion.safetensors", inv)).pixels.shape == (
        1, 3, 24, 18)
    square = _inversion("ddim", pixels=torch.zeros(1, 3, 24, 24, dtype=torch.uint8), **wide)
    assert _refusal(store.save_inversion(tmp_path / "s.inversion.safetensors", square)) == (
        "not a usable inversion: input 24×24 is not a multiple of the latent 6×8")


def test_metadata_that_json_cannot_hold_is_saved_as_text(tmp_path):
    inv = _inversion("ddim", model={"model": "tiny", "fingerprint": "abc", "dtype": torch.float16})
    back = store.load_inversion(store.save_inversion(tmp_path / "x.inversion.safetensors", inv))
    assert back.model["dtype"] == "torch.float16"


def test_a_file_without_its_input_skips_the_geometry_checks(tmp_path):
    inv = _inversion("ddim", pixels=False, image={"original_size": "unknown"})
    assert store.load_inversion(store.save_inversion(tmp_path / "x.inversion.safetensors", inv)).pixels is None


def test_mismatches_say_what_differs():
    inv = _inversion()
    same = {"family": "sd1", "fingerprint": "abc", "model": "tiny", "noise": inv.schedule.noise.to_dict()}
    assert store.mismatches(inv, same, inv.schedule) == []
    other = {"family": "sd2", "fingerprint": "def", "model": "big", "noise": {"beta_schedule": "linear",
                                                                             "num_train_timesteps": 1000}}
    assert store.mismatches(inv, other, Schedule.create(NoiseConfig(), 5)) == [
        "family: made with a sd1 model, now a sd2 one",
        "model: made with 'tiny' (fingerprint abc), now 'big' (fingerprint def)",
        "scheduler beta_schedule: inversion has 'scaled_linear', model has 'linear'",
        "steps: inversion has 4, asked for 5"]
    no_family = _inversion(model={"model": "tiny", "fingerprint": "abc"})
    assert store.mismatches(no_family, {"fingerprint": "abc"}) == []  # older files name no family
    assert store.mismatches(no_family, other) == [
        "model: made with 'tiny' (fingerprint abc), now 'big' (fingerprint def)",
        "scheduler beta_schedule: inversion has 'scaled_linear', model has 'linear'"]


# --- report: metrics, table, pictures ---------------------------------------------------------------------
WANG_2004 = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


def _pair(h, w, seed=0):
    g = np.random.default_rng(seed)
    a = g.random((h, w, 3))
    return a, np.clip(a + 0.1 * g.standard_normal((h, w, 3)), 0, 1)


def test_to_unit_maps_minus_one_to_one_onto_zero_to_one_channels_last():
    u = report.to_unit(torch.tensor([[[-1.0, 1.0]], [[0.0, -3.0]], [[0.5, 2.0]]]))  # (3, 1, 2)
    assert u.dtype == np.float64 and u.shape == (1, 2, 3)
    assert u.tolist() == [[[0.0, 0.5, 0.75], [1.0, 0.0, 1.0]]]


def test_metrics_of_constant_images_by_hand():
    """0.2 against 0.4 everywhere: MSE 0.04, PSNR 10·log10(1/0.04), and SSIM = (2·μa·μb + C1)/(μa² + μb² + C1)
    with C1 = (0.01 · data range 1)² (the variances are zero)."""
    a, b = np.full((16, 16, 3), 0.2), np.full((16, 16, 3), 0.4)
    m = report.image_metrics(a, b)
    assert math.isclose(m["mse"], 0.04, rel_tol=1e-12) and math.isclose(m["psnr"], 13.979400086720377, rel_tol=1e-12)
    assert math.isclose(m["ssim"], 0.1601 / 0.2001, rel_tol=1e-9)
    assert report.image_metrics(a, a) == {"psnr": math.inf, "ssim": 1.0, "mse": 0.0}


@pytest.mark.parametrize("h, w, win", [(16, 16, None), (11, 40, None), (10, 12, 7), (8, 8, 7), (7, 9, 7), (6, 6, 5),
                                       (5, 20, 5), (4, 4, 3), (3, 3, 3)])
def test_ssim_is_wang_2004_with_the_largest_odd_window_that_fits(h, w, win):
    a, b = _pair(h, w)
    expected = structural_similarity(a, b, channel_axis=-1, win_size=win, **WANG_2004)
    assert math.isclose(report.image_metrics(a, b)["ssim"], expected, rel_tol=1e-12)
    assert report.SSIM_SETTINGS == WANG_2004


def test_ssim_of_images_too_small_to_compare_is_nan():
    a, b = _pair(2, 30)
    m = report.image_metrics(a, b)
    assert math.isnan(m["ssim"]) and math.isclose(m["mse"], float(np.mean((a - b) ** 2)))
    r = report.region_metrics(a, b, np.ones((2, 30)))
    assert math.isnan(r["ssim"]) and r["pixels"] == 60 and math.isclose(r["psnr"], m["psnr"])


@pytest.mark.parametrize("side, win", [(3, 3), (4, 3), (5, 5), (10, 7)])
def test_region_ssim_of_small_images_uses_the_largest_odd_window(side, win):
    a, b = _pair(side, side + 2)
    _, full = structural_similarity(a, b, channel_axis=-1, full=True, win_size=win, **WANG_2004)
    region = np.ones((side, side + 2), bool)
    assert math.isclose(report.region_metrics(a, b, region)["ssim"], float(full.mean()), rel_tol=1e-12)


def test_region_metrics_count_only_the_region():
    a = np.full((12, 12, 3), 0.5)
    b = a.copy()
    region = np.zeros((12, 12), int)
    region[2:4, 3] = 1  # two pixels, each 0.1 off
    b[2:4, 3] += 0.1
    b[8:, 8:] = 0.0  # far off, outside the region
    m = report.region_metrics(a, b, region)
    assert m["pixels"] == 2 and math.isclose(m["mse"], 0.01, rel_tol=1e-9) and math.isclose(m["psnr"], 20.0,
                                                                                              rel_tol=1e-9)
    _, full = structural_similarity(a, b, channel_axis=-1, full=True, **WANG_2004)
    assert math.isclose(m["ssim"], float(full.mean(axis=2)[2:4, 3].mean()), rel_tol=1e-12)
    a, b = _pair(8, 9)
    _, full = structural_similarity(a, b, channel_axis=-1, full=True, win_size=7, **WANG_2004)
    assert math.isclose(report.region_metrics(a, b, np.ones((8, 9), bool))["ssim"], float(full.mean()),
                        rel_tol=1e-12)
    same = report.region_metrics(a, a, np.ones((8, 9), bool))
    assert same["psnr"] == math.inf and same["mse"] == 0.0
    empty = report.region_metrics(a, b, np.zeros((8, 9), bool))
    assert empty["pixels"] == 0 and all(math.isnan(empty[k]) for k in ("psnr", "ssim", "mse"))


def test_the_three_comparisons_pair_the_right_images():
    o, v, r = torch.full((3, 16, 16), -1.0), torch.full((3, 16, 16), -0.8), torch.full((3, 16, 16), -0.4)
    m = report.reconstruction_metrics(o, v, r)  # in [0, 1]: 0, 0.1 and 0.3
    assert math.isclose(m["reconstruction_vs_input"]["mse"], 0.09, rel_tol=1e-6)
    assert math.isclose(m["vae_vs_input"]["mse"], 0.01, rel_tol=1e-6)
    assert math.isclose(m["reconstruction_vs_vae"]["mse"], 0.04, rel_tol=1e-6)
    assert m["ssim_settings"] == WANG_2004


def test_latent_error_is_relative_to_the_latent():
    assert math.isclose(report.latent_error(torch.tensor([3.0, 5.0]), torch.tensor([3.0, 4.0])), 0.2, rel_tol=1e-12)
    assert math.isclose(report.latent_error(torch.tensor([1.0]), torch.tensor([0.0])), 1e30)  # no division by 0


def test_error_heatmap_is_inferno_at_a_fixed_scale():
    a = np.ones((1, 4, 3))
    b = a - np.array([[[0.0] * 3, [0.05] * 3, [0.2] * 3, [0.6, 0.0, 0.0]]])  # mean |error| 0, 0.05, 0.2 and 0.2
    heat = report.error_heatmap(a, b)
    assert heat.dtype == np.uint8 and heat.shape == (1, 4, 3)
    assert heat[0, 0].tolist() == [0, 0, 4] and heat[0, 2].tolist() == [252, 255, 164]  # inferno's ends, RGB
    half = cv2.applyColorMap(np.array([[127]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1]  # 0.5 · 255 → 127
    assert heat[0, 3].tolist() == heat[0, 2].tolist() and heat[0, 1].tolist() == half.tolist()
    assert report.error_heatmap(a, a + 1.0).tolist() == heat[:, 2:3].repeat(4, 1).tolist()  # clipped at full


def _panel(h, w, value):
    return np.full((h, w, 3), value, np.uint8)


def test_side_by_side_enlarges_small_panels_and_labels_each():
    img = np.arange(32 * 20 * 3, dtype=np.uint32).reshape(32, 20, 3).astype(np.uint8)
    out = report.side_by_side([("a", img), ("b", _panel(32, 10, 7))])
    assert out.shape == (22 + 256, (160 + 4) + (80 + 4), 3)  # 256 / 32: ×8
    np.testing.assert_array_equal(out[22::8, 2:162:8], img)
    assert (out[22:, 166:-2] == 7).all() and (out[22:, :2] == 255).all() and (out[22:, 162:166] == 255).all()
    assert out[:22, :164].min() == 0 and out[:22, 164:].min() == 0  # a black label over each panel
    labelled = report.side_by_side([("gy|", img)])
    np.testing.assert_array_equal(labelled[22:, 2:-2], np.repeat(np.repeat(img, 8, 0), 8, 1))  # drawn above it
    ink = labelled[:22].min(axis=2)
    assert (labelled[:22].min(axis=(0, 1)) == 0).all() and ((ink > 0) & (ink < 255)).any()  # black, anti-aliased
    assert report.side_by_side([("a", img)], min_height=100).shape == (22 + 128, 80 + 4, 3)  # ceil(100/32) = 4
    assert report.side_by_side([("a", _panel(300, 5, 0))]).shape == (322, 9, 3)  # never shrunk


def test_comparison_image_shows_input_vae_reconstruction_and_error():
    o = torch.full((3, 16, 16), -1.0)
    out = report.comparison_image(o, torch.zeros(3, 16, 16), torch.ones(3, 16, 16))
    assert out.shape == (22 + 256, 4 * 260, 3)
    centre = [out[150, 2 + 260 * k + 128].tolist() for k in range(4)]
    assert centre == [[0, 0, 0], [128, 128, 128], [255, 255, 255], [252, 255, 164]]
    blank = np.zeros((16, 16, 3), np.uint8)
    for k, label in enumerate(("input", "VAE round trip", "reconstruction", "|error|, full scale 0.1")):
        np.testing.assert_array_equal(out[:22, 260 * k:260 * (k + 1)], report.side_by_side([(label, blank)])[:22])


def test_the_table_for_people():
    rep = {"metrics": {"reconstruction_vs_input": {"psnr": 31.234, "ssim": 0.98765, "mse": 7.5e-4},
                       "vae_vs_input": {"psnr": math.inf, "ssim": 1.0, "mse": 0.0},
                       "reconstruction_vs_vae": {"psnr": 40.0, "ssim": float("nan"), "mse": 1e-4}},
           "latent_error": 0.0123, "seconds": {"invert": 1.234, "decode": 0.5},
           "inversion": {"method": "ddim", "steps": 10, "guidance": 7.5, "network_calls": 20,
                         "max_residual": float("nan")}}
    assert report.format_table(rep).split("\n") == [
        " " * 37 + " PSNR dB    SSIM        MSE",
        "reconstruction vs input                 31.23  0.9877  7.500e-04",
        "VAE round trip vs input (ceiling)         inf  1.0000  0.000e+00",
        "reconstruction vs VAE round trip        40.00     n/a  1.000e-04",
        "latent round-trip error ‖ẑ0−z0‖/‖z0‖: 1.230e-02",
        "method ddim, 10 steps, guidance 7.5, 20 network calls, largest step residual not measured",
        "time: invert 1.23s, decode 0.50s"]
    rep["inversion"]["max_residual"] = 0.00123
    assert report.format_table(rep).split("\n")[5].endswith("largest step residual 1.23e-03")


def test_jsonable_writes_non_finite_floats_as_strings():
    value = {"a": math.inf, "b": [-math.inf, float("nan"), 1.5, (2, float("nan"))], "c": "x", "d": 3}
    assert report.jsonable(value) == {"a": "inf", "b": ["-inf", "nan", 1.5, [2, "nan"]], "c": "x", "d": 3}


# --- io: decoding every mode, limits, sizing, writers -----------------------------------------------------
def _gray(im: Image.Image, notes=None) -> list[int]:
    """_to_rgb's output for a one-row image, as grey levels (checking the three channels agree)."""
    notes = [] if notes is None else notes
    a = np.asarray(iio._to_rgb(im, notes))
    assert (a[..., 0] == a[..., 2]).all()
    return a[0, :, 0].tolist()


def _row(mode: str, values, dtype) -> Image.Image:
    if mode.startswith("I;16"):
        order = ">" if mode == "I;16B" else "<"
        return Image.frombytes(mode, (len(values), 1), np.array(values, dtype=order + "u2").tobytes())
    return Image.fromarray(np.array([values], dtype=dtype), mode)


@pytest.mark.parametrize("mode, values, expected, top", [
    # 16-bit: always of 65535; 65407/65535·255 = 254.502 rounds up (not with a top of 65536)
    ("I;16B", [0, 32768, 65407], [0, 128, 255], 65535), ("I;16L", [0, 32768, 65407], [0, 128, 255], 65535),
    ("I;16", [65407, 200], [255, 1], 65535),
    ("I", [0, 100, 200, 255], [0, 100, 200, 255], 255), ("I", [0, 1], [0, 1], 255),  # up to 255: 8 bits, wider
    ("I", [0, 256, 65407], [0, 1, 255], 65535), ("I", [0, 256], [0, 1], 65535),  # above 255: 16 bits
    ("F", [0.0, 0.25, 1.0], [0, 64, 255], 1), ("F", [-0.5, 0.5], [0, 128], 1),  # a unit float image
    ("F", [0.0, 2.0], [0, 2], 255),  # floats above 1 are on the 8-bit scale
])
def test_wide_modes_are_scaled_from_their_range(mode, values, expected, top):
    notes = []
    dtype = np.int32 if mode == "I" else np.float32
    assert _gray(_row(mode, values, dtype), notes) == expected
    assert notes == [f"{mode} image scaled from [0, {top}] to 8 bits", "L converted to RGB"]


@pytest.mark.parametrize("mode, value, palette", [("PA", (0, 128), [200, 100, 50]), ("RGBa", (50, 100, 20, 128), None)])
def test_other_alpha_modes_are_composited_on_white(mode, value, palette):
    im = Image.new(mode, (1, 1), value)
    if palette:
        im.putpalette(palette * 256)
    notes = []
    got = np.asarray(iio._to_rgb(im, notes))[0, 0].astype(int)
    straight = np.array(im.convert("RGBA").getpixel((0, 0))[:3])  # (200, 100, 50) and RGBa unpremultiplied
    assert np.abs(got - (straight * 128 + 255 * 127) / 255).max() <= 1  # half-transparent over white
    assert notes == ["transparency composited on white"]


def test_colour_key_and_opaque_alpha():
    keyed = Image.fromarray(np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8), "RGB")
    keyed.info["transparency"] = (10, 20, 30)
    notes = []
    assert np.asarray(iio._to_rgb(keyed, notes)).tolist() == [[[255, 255, 255], [40, 50, 60]]]
    assert notes == ["transparency composited on white"]
    notes = []
    iio._to_rgb(Image.new("RGBA", (2, 2), (1, 2, 3, 255)), notes)
    assert notes == []  # opaque RGBA: no note at all


def test_read_image_edges(tmp_path, monkeypatch):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 5), (9, 9, 9)).save(thin)
    assert read_image_size(thin) == (1, 5)  # one pixel wide is an image
    gif = tmp_path / "two.gif"
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert iio.read_image(gif)[1] == ["animated GIF: first of 2 frames used", "P converted to RGB"]
    mpo = tmp_path / "phone.jpg"
    frames[0].save(mpo, format="MPO", save_all=True, append_images=frames[1:])
    assert iio.read_image(mpo)[1] == []  # a phone JPEG with its preview is not an animation
    flipped = tmp_path / "o3.jpg"
    a = np.zeros((8, 16, 3), np.uint8)
    a[:, :8] = 255  # stored: white left half
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 3  # rotate 180°: same size
    im.save(flipped, exif=exif, quality=95)
    got, notes = iio.read_image(flipped)
    assert notes == ["EXIF orientation 3 applied"] and np.asarray(got)[4, 12, 0] > 200 > np.asarray(got)[4, 3, 0]
    monkeypatch.setattr(iio.Image, "open", lambda *a, **k: Image.new("RGB", (0, 7)))
    assert _refused(thin) == f"{thin}: the image is empty (0×7 pixels)"


def read_image_size(path):
    return iio.read_image(path)[0].size


def test_read_image_messages(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(_png_header_only(1245, 1000))
    assert _refused(big, max_pixels=1_235_000) == (
        f"{big}: 1245×1000 = 1.25 megapixels is above the limit of 1.24 MP: downscale it first (in Python, "
        "load_image's max_pixels argument raises the limit)")
    with pytest.raises(ImageError, match="above the limit of 1e-05 MP"):
        iio.load_image(big, 8, max_pixels=10)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert _refused(text) == f"{text}: not an image in a supported format (JPEG, PNG, WEBP, TIFF, BMP, GIF)"
    bomb = tmp_path / "bomb.png"  # 90 MP: above Pillow's warning threshold (89.5 MP), below its error
    bomb.write_bytes(_png_header_only(9500, 9500))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own limit applies, Pillow's warning is silenced
        assert "truncated" in _refused(bomb, max_pixels=10**8)


def test_working_budget_names_the_max_side_that_fits():
    with pytest.raises(ImageError) as err:
        iio.prepare(Image.new("RGB", (1245, 1000)), 8, max_work_pixels=1_235_000)
    assert str(err.value) == ("<image>: a working size of 1245×1000 = 1.25 MP is above the working budget of 1.24 MP "
                              "(memory grows with it): pass --max-side 1232 or less")  # √(1235000·1245/1000)
    assert iio.prepare(Image.new("RGB", (100, 100)), 4, max_work_pixels=10_000).pixels.shape == (1, 3, 100, 100)
    with pytest.raises(ImageError, match="working size of 50×25 = 0.00125 MP"):  # the max side applies first
        iio.prepare(Image.new("RGB", (100, 50)), 5, max_side=50, max_work_pixels=1249)
    assert iio.prepare(Image.new("RGB", (100, 50)), 5, max_side=50, max_work_pixels=1250).resized_size == (50, 25)
    thin = iio.prepare(Image.new("RGB", (1000, 10)), 4, max_side=100, max_work_pixels=100)
    tall = iio.prepare(Image.new("RGB", (10, 1000)), 4, max_side=100, max_work_pixels=100)
    assert (thin.resized_size, tall.resized_size) == ((100, 1), (1, 100))  # one pixel, not zero


def test_prepare_resizes_with_lanczos_only_above_the_max_side():
    img = Image.fromarray(_noise(96, 40))
    p = iio.prepare(img, 8, max_side=48)
    lanczos = np.asarray(img.resize((48, 20), Image.Resampling.LANCZOS), np.float32) / 127.5 - 1
    np.testing.assert_array_equal(p.content(p.pixels)[0].permute(1, 2, 0).numpy(), lanczos)
    assert iio.prepare(Image.fromarray(_noise(64, 48)), 16, max_side=64).notes == ()


@pytest.mark.parametrize("size, shape", [((40, 16), (16, 32)), ((16, 40), (32, 16))])
def test_crop_at_exactly_one_multiple(size, shape):
    p = iio.prepare(Image.fromarray(_noise(*size)), 16, fit="crop")
    assert p.fit == "crop" and tuple(p.pixels.shape[-2:]) == shape and p.box == (0, 0, shape[1], shape[0])


@pytest.mark.parametrize("w, h", [(20, 8), (8, 20)])
def test_padding_as_large_as_the_image_repeats_the_edge(w, h):
    a = np.broadcast_to((np.arange(h)[:, None] * 10 + np.arange(w)[None, :])[..., None], (h, w, 3)).astype(np.uint8)
    p = iio.prepare(Image.fromarray(a), 16)
    got = iio.to_uint8(p.pixels[0])
    H, W = got.shape[:2]
    np.testing.assert_array_equal(got[h:, :w], np.broadcast_to(a[-1:], (H - h, w, 3)))  # last row repeated
    np.testing.assert_array_equal(got[:h, w:], np.broadcast_to(a[:, -1:], (h, W - w, 3)))  # last column repeated
    assert p.notes == (f"padded by repeating the edge from {w}×{h} to {W}×{H} (multiple of 16)",)


def test_restore_scales_a_crop_back_with_lanczos():
    p = iio.prepare(Image.fromarray(_noise(100, 60)), 16, max_side=50, fit="crop")
    assert p.resized_size == (50, 30) and p.box == (0, 0, 48, 16)
    content = Image.fromarray(iio.to_uint8(p.content(p.pixels)[0]))
    expected = np.asarray(content.resize((96, 32), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(np.asarray(p.restore(p.pixels)), expected)


def test_atomic_write_names_its_temporary_file_hidden_beside_the_target(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        open(tmp, "w").close()

    iio.atomic_write(tmp_path / "out.txt", write)
    iio.atomic_write(tmp_path / "video.mp4", write, suffix=".tmp.mp4")
    names = [os.path.basename(s) for s in seen]
    assert names[0].startswith(".out.txt.") and names[0].endswith(".tmp") and names[1].endswith(".tmp.mp4")
    assert all(os.path.dirname(s) == str(tmp_path) for s in seen)

    def vanish(tmp):
        os.unlink(tmp)
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):  # the writer's own error, not the clean-up's
        iio.atomic_write(tmp_path / "gone.txt", vanish)
    assert sorted(os.listdir(tmp_path)) == ["out.txt", "video.mp4"]


def _colours(path) -> list:
    with Image.open(path) as im:
        out = []
        for k in range(im.n_frames):
            im.seek(k)
            out.append(im.convert("RGB").getpixel((0, 0)))
        return out, im.info


RGB3 = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_gif_loops_and_bounces(tmp_path):
    frames = [Image.new("RGB", (8, 6), c) for c in RGB3]
    colours, info = _colours(iio.save_gif(tmp_path / "a.gif", frames))
    assert colours == RGB3 + [RGB3[1]] and info["loop"] == 0 and info["duration"] == 120  # 8 fps: 125 ms → 12 cs
    five = [Image.new("RGB", (2, 2), (40 * k, 0, 0)) for k in range(5)]
    assert [c[0] for c in _colours(iio.save_gif(tmp_path / "a.gif", five))[0]] == [0, 40, 80, 120, 160, 120, 80, 40]
    colours, info = _colours(iio.save_gif(tmp_path / "b.gif", frames, fps=4, bounce=False))
    assert colours == RGB3 and info["duration"] == 250
    assert _colours(iio.save_gif(tmp_path / "c.gif", frames[:2], fps=4))[0] == RGB3[:2]
    assert sorted(os.listdir(tmp_path)) == ["a.gif", "b.gif", "c.gif"]


def test_mp4_frames_are_enlarged_to_the_minimum_side(tmp_path, monkeypatch):
    frames = [Image.new("RGB", (16, 8), c) for c in RGB3]
    for kwargs, size, fps in (({}, (512, 256), 8.0), ({"fps": 5, "min_side": 4}, (16, 8), 5.0)):
        path = iio.save_mp4(tmp_path / "v.mp4", frames, **kwargs)  # 256 / 8 → ×32; 4 / 8 → never shrunk
        video = cv2.VideoCapture(str(path))
        assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == size
        assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and video.get(cv2.CAP_PROP_FPS) == fps
        for colour in RGB3:
            ok, bgr = video.read()
            assert ok and np.abs(bgr.reshape(-1, 3).mean(0)[::-1] - colour).max() < 40
        video.release()
    one = cv2.VideoCapture(str(iio.save_mp4(tmp_path / "v.mp4", [Image.new("L", (8, 8), 200)], min_side=8)))
    ok, bgr = one.read()  # a single grey frame
    assert ok and one.get(cv2.CAP_PROP_FRAME_COUNT) == 1 and abs(float(bgr.mean()) - 200) < 10
    one.release()
    assert os.listdir(tmp_path) == ["v.mp4"]

    class Closed:
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(cv2, "VideoWriter", Closed)
    with pytest.raises(OSError, match=f"^OpenCV cannot write MP4 video to {tmp_path / 'w.mp4'}$"):
        iio.save_mp4(tmp_path / "w.mp4", frames)
    assert os.listdir(tmp_path) == ["v.mp4"]


def test_contact_sheet_lays_frames_in_labelled_rows():
    frames = [Image.fromarray(np.full((6, 8, 3), 40 * k, np.uint8)) for k in range(5)]
    sheet = np.asarray(iio.contact_sheet(frames, [f"f{k}" for k in range(5)], columns=3, min_side=12))
    assert sheet.shape == (2 * (12 + 16), 3 * 16, 3)  # 12 / 6 → ×2, a 16-pixel label under each row
    for k in range(5):
        y, x = (k // 3) * 28, (k % 3) * 16
        assert (sheet[y:y + 12, x:x + 16] == 40 * k).all()
        assert sheet[y + 12:y + 28, x:x + 16].min() < 100  # its label
    assert (sheet[28:, 32:] == 255).all()  # the empty sixth cell
    ink = sheet[12:28, 0:16]
    assert (ink.min(axis=(0, 1)) == 0).all() and ((ink.min(axis=2) > 0) & (ink.min(axis=2) < 255)).any()  # black, AA
    nine = [Image.new("RGB", (16, 8), (9, 9, 9))] * 9
    assert np.asarray(iio.contact_sheet(nine, [""] * 9)).shape == (2 * (128 + 16), 8 * 256, 3)  # 8 columns, ×16
    big = np.asarray(iio.contact_sheet([Image.new("L", (20, 20), 70)], ["one"], min_side=10))
    assert big.shape == (20 + 16, 20, 3) and (big[:20] == 70).all()  # never shrunk; grey frames as RGB


def test_output_set_sweeps_only_dead_runs_stages(tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = [f".invedit-staging-{dead.pid}-x", f".invedit-old-{dead.pid}-y", f".invedit-staging-{os.getpid()}-z",
             ".invedit-staging-notapid-w", ".invedit-a-b-c", ".invedit-keep", f".invedit-staging-{dead.pid}-file"]
    listed = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(sorted(listed(self, pattern))))  # ".invedit-a…" first
    for name in names[:-1]:
        (tmp_path / name).mkdir()
    (tmp_path / names[-1]).write_text("not a folder: left alone, and no reason to fail")
    with iio.output_set(tmp_path) as stage:
        (stage / "a.txt").write_text("a")
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:] + ["a.txt"])  # the dead runs' folders are gone
    assert iio.moved({"a": stage / "a.txt", "b": stage / "f" / "1.png"}, stage, tmp_path) == {
        "a": tmp_path / "a.txt", "b": tmp_path / "f" / "1.png"}
