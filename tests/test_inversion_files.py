"""Hostile inversion files (issue 13, items 1, 3, 4, 7): every edit of a valid file that the tool cannot trust
is refused by `reconstruct` and `edit` with one clear line, exit 1, no traceback and nothing written."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from invedit import api
from invedit.cli import main
from invedit.store import InversionFileError, load_inversion


@pytest.fixture(scope="module")
def valid(tiny_model_dir, photo, tmp_path_factory):
    """A valid inversion file per method, made with the tiny model."""
    model = api.load(str(tiny_model_dir), device="cpu")
    out = tmp_path_factory.mktemp("valid")
    files = {}
    for method in ("ddim", "null-text", "direct", "edict", "bdia"):
        settings = api.InversionSettings(steps=4, method=method, guidance=3.0, null_text_steps=1)
        result = api.invert_image(model, photo, "a cat", settings, out=out / method)
        files[method] = result.path
    return files


def _parts(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["invedit"]), {k: f.get_tensor(k) for k in f.keys()}


def _write(path, meta, tensors, raw_meta=None):
    save_file(tensors, str(path), metadata={"invedit": raw_meta if raw_meta is not None else json.dumps(meta)})
    return path


def _set(meta, dotted, value):
    keys = dotted.split(".")
    node = meta
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return meta


_DELETE = object()
META_CASES = [
    ("schedule", _DELETE, "lacks 'schedule'"),
    ("guidance", "abc", "guidance 'abc' is not a finite number"),
    ("guidance", float("nan"), "is not a finite number"),
    ("schedule.alphas", [0.5], "needs"),
    ("schedule.timesteps", [999, 500, 250, 3], "is not the 4-step schedule"),
    ("method", "plain", "method 'plain' is not one of"),
    ("method", "edict", "needs the tensor extra.y_T"),
    ("method", "null-text", "needs the tensor extra.uncond"),
    ("method", "bdia", "needs the tensor extra.x_1"),
    ("image.original_size", [200000, 200000], "above the 64 MP input limit"),
    ("image.original_size", [12000, 12000], "above the 64 MP input limit"),
    ("image.content_box", [0, 0, 999, 999], "does not lie inside"),
    ("prompt", 7, "metadata 'prompt' is a int"),
    ("schedule.noise.beta_schedule", "cubic", "beta_schedule 'cubic'"),
]


@pytest.mark.parametrize("key, value, message", META_CASES, ids=[c[0] + ":" + str(c[1])[:12] for c in META_CASES])
def test_edited_metadata_is_refused(valid, tmp_path, key, value, message):
    meta, tensors = _parts(valid["ddim"])
    bad = _write(tmp_path / "bad.inversion.safetensors", _set(meta, key, value), tensors)
    with pytest.raises(InversionFileError, match="not a usable inversion|format") as err:
        load_inversion(bad)
    assert message in str(err.value)


def _tensor_case(name, change):
    def mutate(tensors):
        tensors[name] = change(tensors[name])
        return tensors
    return mutate


TENSOR_CASES = [
    ("ddim", "x_T", lambda t: t[..., :-1].contiguous(), "tensor z0 has shape"),
    ("ddim", "x_T", lambda t: t.clone().fill_(float("nan")), "tensor x_T is not all finite"),
    ("ddim", "z0", lambda t: t.clone().fill_(float("inf")), "tensor z0 is not all finite"),
    ("ddim", "input", lambda t: t.float(), "expected (B, 3, H, W) uint8"),
    ("direct", "extra.offsets", lambda t: t[:2].contiguous(), "expected (4, 1, …)"),
    ("direct", "extra.pivot", lambda t: t.clone().fill_(float("nan")), "extra.pivot is not all finite"),
    ("edict", "extra.y_T", lambda t: t[:, :2].contiguous(), "tensor extra.y_T has shape"),
    ("bdia", "extra.x_1", lambda t: t[..., :-1].contiguous(), "tensor extra.x_1 has shape"),
    ("bdia", "extra.x_1", lambda t: t.clone().fill_(float("nan")), "extra.x_1 is not all finite"),
    ("null-text", "extra.uncond", lambda t: t.clone().fill_(float("nan")), "extra.uncond is not all finite"),
]


@pytest.mark.parametrize("method, name, change, message", TENSOR_CASES,
                         ids=[f"{c[0]}:{c[1]}:{c[3][:20]}" for c in TENSOR_CASES])
def test_edited_tensors_are_refused(valid, tmp_path, method, name, change, message):
    meta, tensors = _parts(valid[method])
    tensors = _tensor_case(name, change)(tensors)
    bad = _write(tmp_path / "bad.inversion.safetensors", meta, tensors)
    with pytest.raises(InversionFileError) as err:
        load_inversion(bad)
    assert message in str(err.value)


def test_an_unknown_tensor_is_refused(valid, tmp_path):
    meta, tensors = _parts(valid["ddim"])
    tensors["extra.uncond"] = torch.zeros(4, 1, 77, 32)
    with pytest.raises(InversionFileError, match="extra.uncond is not one method ddim uses"):
        load_inversion(_write(tmp_path / "bad.inversion.safetensors", meta, tensors))


@pytest.mark.parametrize("raw, message", [("{not json", "not valid JSON"), ("[1, 2]", "format 'list'")])
def test_unreadable_metadata_is_refused(valid, tmp_path, raw, message):
    _, tensors = _parts(valid["ddim"])
    with pytest.raises(InversionFileError, match=message):
        load_inversion(_write(tmp_path / "bad.inversion.safetensors", None, tensors, raw_meta=raw))


@pytest.mark.parametrize("method", ["ddim", "null-text", "direct", "edict", "bdia"])
def test_valid_files_still_load(valid, method):
    assert load_inversion(valid[method]).method == method


@pytest.mark.parametrize("command", ["reconstruct", "edit"])
def test_the_cli_refuses_a_bad_file_in_one_line_and_writes_nothing(valid, tiny_model_dir, tmp_path, command):
    meta, tensors = _parts(valid["ddim"])
    tensors["x_T"] = tensors["x_T"].clone().fill_(float("nan"))
    bad = _write(tmp_path / "bad.inversion.safetensors", meta, tensors)
    out = tmp_path / "out"
    args = [command, str(bad), "-m", str(tiny_model_dir), "--device", "cpu", "--out", str(out)]
    if command == "edit":
        args += ["-t", "a dog"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "tensor x_T is not all finite" in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["roundtrip", "--guidance", "nan", "--method", "ddim"], "guidance must be a finite number"),
    (["roundtrip", "--guidance", "nan", "--method", "fixed-point"], "guidance must be a finite number"),
    (["roundtrip", "--null-text-lr", "inf", "--method", "null-text"], "null-text-lr must be a finite number"),
    (["sample", "--guidance", "nan", "-p", "a cat"], "guidance and eta must be finite"),
    (["edit", "-s", "a cat", "-t", "a dog", "--guidance", "inf"], "guidance must be a finite number"),
])
def test_non_finite_options_are_refused(tiny_model_dir, photo, tmp_path, args, message):
    out = tmp_path / "out"
    full = [args[0]] + ([str(photo)] if args[0] != "sample" else []) + args[1:]
    result = CliRunner().invoke(main, full + ["-m", str(tiny_model_dir), "--device", "cpu", "--steps", "2",
                                              "--out", str(out)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("key, value, message", [
    ("schedule.noise.num_train_timesteps", 10**12, "num_train_timesteps 1000000000000 is not an integer between"),
    ("schedule.noise.beta_end", 7, "beta_end 7 is not a number in [0, 1)"),
    ("schedule.noise.steps_offset", -3, "steps_offset -3 is not an integer"),
])
def test_a_hostile_noise_config_is_refused_before_it_allocates(valid, tmp_path, key, value, message):
    """Found by the property tests: a huge num_train_timesteps made the schedule check allocate ~24 GB."""
    meta, tensors = _parts(valid["ddim"])
    with pytest.raises(InversionFileError) as err:
        load_inversion(_write(tmp_path / "bad.inversion.safetensors", _set(meta, key, value), tensors))
    assert message in str(err.value)
