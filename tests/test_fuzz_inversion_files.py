"""Property-based hostile inversion files (issue 13): random mutations of a valid file's metadata, tensors and
bytes either load as a valid inversion or are refused with an InversionFileError, never another exception."""
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from invedit import api
from invedit.store import InversionFileError, load_inversion

FIELDS = ["method", "prompt", "negative_prompt", "guidance", "schedule", "schedule.timesteps", "schedule.alphas",
          "schedule.noise", "schedule.noise.beta_schedule", "schedule.noise.num_train_timesteps", "image",
          "image.original_size", "image.resized_size", "image.content_box", "model", "stats", "format"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid(tiny_model_dir, photo, tmp_path_factory):
    model = api.load(str(tiny_model_dir), device="cpu")
    out = tmp_path_factory.mktemp("fuzz")
    path = api.invert_image(model, photo, "a cat", api.InversionSettings(steps=3, method="direct", guidance=2.0),
                            out=out).path
    with safe_open(str(path), framework="pt") as f:
        return path, json.loads(f.metadata()["invedit"]), {k: f.get_tensor(k) for k in f.keys()}


def _loads_or_refuses(path) -> None:
    try:
        inv = load_inversion(path)
    except InversionFileError as exc:
        assert str(exc).startswith(str(path))  # names the file
        return
    assert torch.isfinite(inv.x_T).all() and inv.method in ("ddim", "fixed-point", "negative-prompt", "null-text",
                                                             "direct", "edict", "bdia")


@SLOW
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_metadata_value_loads_or_is_refused(valid, tmp_path, field, value):
    _, meta, tensors = valid
    meta = json.loads(json.dumps(meta))
    node, keys = meta, field.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    path = tmp_path / "m.inversion.safetensors"
    save_file(tensors, str(path), metadata={"invedit": json.dumps(meta)})
    _loads_or_refuses(path)


@SLOW
@given(name=st.sampled_from(["x_T", "z0", "input", "extra.offsets", "extra.pivot"]),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.float64, torch.uint8, torch.int64]),
       fill=st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -1e30]))
def test_any_tensor_loads_or_is_refused(valid, tmp_path, name, shape, dtype, fill):
    _, meta, tensors = valid
    tensors = dict(tensors)
    value = torch.full(shape, fill) if dtype.is_floating_point else torch.zeros(shape)
    tensors[name] = value.to(dtype) if dtype.is_floating_point or fill == fill else torch.zeros(shape, dtype=dtype)
    path = tmp_path / "t.inversion.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"invedit": json.dumps(meta)})
    _loads_or_refuses(path)


@SLOW
@given(cut=st.floats(0.0, 1.0), flip=st.integers(0, 10**9))
def test_truncated_or_damaged_bytes_load_or_are_refused(valid, tmp_path, cut, flip):
    data = bytearray(valid[0].read_bytes())
    data = data[:int(len(data) * cut)] if cut < 1 else data
    if data:
        data[flip % len(data)] ^= 0xFF
    path = tmp_path / "b.inversion.safetensors"
    path.write_bytes(bytes(data))
    _loads_or_refuses(path)
