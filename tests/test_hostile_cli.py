"""Hostile command lines (issue 13, items 4, 7, 8): each fails with exit ≠ 0, one line naming the problem, no
traceback, and nothing written."""
import pytest
from click.testing import CliRunner

from invedit.cli import main


@pytest.fixture
def invoke(tmp_path):
    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])
    return run


@pytest.mark.parametrize("args, message", [
    (["sample", "-p", "x", "--seed", "99999999999999999999"], "is not in the range"),
    (["info", "--model", ""], "--model: is empty"),
    (["info", "--device", "mps"], "no Apple GPU (MPS)"),
    (["info", "--device", "tpu"], "is not one of auto, cpu"),
    (["interpolate", "A", "B", "--fps", "0.00001"], "--fps"),
    (["interpolate", "A", "B", "--fps", "1e9"], "--fps"),
])
def test_bad_options_fail_in_one_line(invoke, photo, args, message):
    args = [str(photo) if a in ("A", "B") else a for a in args]
    result = invoke(*args)
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert "Traceback" not in result.output


def test_out_below_a_file_is_refused_before_any_work(invoke, photo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("roundtrip", photo, "--out", blocker / "sub")
    assert result.exit_code == 2 and "is a file" in result.output


def test_unexpected_errors_are_one_line_unless_debug(invoke, tiny_model_dir, photo, tmp_path, monkeypatch):
    import invedit.api as api

    def boom(*a, **k):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(api, "roundtrip", boom)
    args = ["roundtrip", photo, "-m", tiny_model_dir, "--device", "cpu", "--out", tmp_path / "o"]
    result = invoke(*args)
    assert result.exit_code == 1 and "unexpected error: ZeroDivisionError: deep inside" in result.output
    assert "--debug" in result.output and "Traceback" not in result.output
    debug = invoke("--debug", *args)
    assert isinstance(debug.exception, ZeroDivisionError)


def test_a_failed_write_is_one_line(invoke, tiny_model_dir, photo, tmp_path, monkeypatch):
    import errno

    import invedit.io as io

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "x.png"))

    monkeypatch.setattr(io, "atomic_write", full)
    monkeypatch.setattr("invedit.store.atomic_write", full)
    result = invoke("roundtrip", photo, "-m", tiny_model_dir, "--device", "cpu", "-n", 2, "--method", "ddim",
                    "--out", tmp_path / "o")
    assert result.exit_code == 1 and "No space left on device" in result.output and "Traceback" not in result.output


def test_inversion_options_are_refused_with_saved_inversions(invoke, tiny_model_dir, photo, tmp_path):
    made = invoke("invert", photo, "-m", tiny_model_dir, "--device", "cpu", "-n", 3, "--method", "ddim", "--out",
                  tmp_path)
    assert made.exit_code == 0, made.output
    saved = tmp_path / "astro.inversion.safetensors"
    for args in (["interpolate", saved, saved, "--steps", 10], ["interpolate", saved, saved, "--method", "edict"],
                 ["edit", saved, "-t", "a dog", "--guidance", 3]):
        result = invoke(*args, "-m", tiny_model_dir, "--device", "cpu", "--out", tmp_path / "o")
        assert result.exit_code == 2 and "cannot apply to a saved inversion" in result.output, result.output
        assert not (tmp_path / "o").exists()


def test_fewer_frames_on_a_rerun_leave_no_stale_frames(invoke, tiny_model_dir, photo, tmp_path):
    out = tmp_path / "morph"
    base = ["interpolate", photo, photo, "-m", tiny_model_dir, "--device", "cpu", "-n", 2, "--method", "ddim",
            "--out", out]
    assert invoke(*base, "--frames", 5).exit_code == 0
    assert len(list((out / "frames").iterdir())) == 5
    assert invoke(*base, "--frames", 3).exit_code == 0
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".invedit-")]


@pytest.mark.parametrize("command", ["roundtrip", "interpolate", "edit"])
def test_a_failure_while_writing_leaves_the_earlier_outputs_untouched(invoke, tiny_model_dir, photo, tmp_path,
                                                                      monkeypatch, command):
    """The last output fails to write (a full disk): nothing of the new set appears, nothing old changes."""
    import invedit.api
    import invedit.editor
    import invedit.morph

    out = tmp_path / "o"
    args = {"roundtrip": ["roundtrip", photo, "-p", "a cat"], "interpolate": ["interpolate", photo, photo],
            "edit": ["edit", photo, "-s", "a cat", "-t", "a dog"]}[command]
    args = args + ["-m", tiny_model_dir, "--device", "cpu", "-n", 2, "--method", "ddim", "--out", out]
    if command == "interpolate":
        args += ["--frames", 3]
    assert invoke(*args).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(path, text):
        raise OSError(28, "No space left on device", str(path))

    module = {"roundtrip": invedit.api, "interpolate": invedit.morph, "edit": invedit.editor}[command]
    monkeypatch.setattr(module, "write_text", full)  # the report is written last
    result = invoke(*[a if a != 2 else 3 for a in args])  # other steps: every output would change
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_working_sizes_above_the_budget_are_refused_before_work(invoke, tiny_model_dir, tmp_path):
    """A 49 MP photo at --max-side 0, and sample --size 40000 (issue 13 item 5): refused at once, in one line."""
    import tracemalloc

    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (7000, 7000), (10, 200, 30)).save(big)
    tracemalloc.start()
    result = invoke("roundtrip", big, "--max-side", 0, "-m", tiny_model_dir, "--device", "cpu", "--out",
                    tmp_path / "o")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.exit_code == 1 and "above the working budget" in result.output and "--max-side 3544" in result.output  # √(4096·3072) = 3547, to ×4
    assert peak < 2e9 and not (tmp_path / "o").exists()
    result = invoke("sample", "-p", "a cat", "--size", 40000, "-m", tiny_model_dir, "--device", "cpu", "--out",
                    tmp_path / "s")
    assert result.exit_code == 1 and "above the working budget" in result.output


def test_kill_9_never_leaves_a_partial_set_and_a_rerun_completes(tiny_model_dir, photo, tmp_path):
    """kill -9 at seeded fractions of a roundtrip's measured duration: `out` holds either nothing or the whole
    set, never part of it; the rerun completes and leaves no staging folder of the killed runs behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "invedit", "roundtrip", str(photo), "-m", str(tiny_model_dir), "--device", "cpu",
           "-n", "40", "--method", "fixed-point", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    duration = time.perf_counter() - start
    complete = sorted(p.name for p in out.iterdir())
    for p in out.iterdir():
        p.unlink()
    for moment in (0.5, 0.9):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        visible = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []
        assert visible in ([], complete), (moment, visible)
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == complete  # no staging folder left


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_checkpoints_are_refused_for_safety_with_how_to_convert(invoke, tmp_path, suffix):
    marker = tmp_path / "ran"
    evil = tmp_path / f"model{suffix}"
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil.write_bytes(pickle.dumps(Payload()))
    result = invoke("info", "--model", evil)
    assert result.exit_code == 1 and "pickle checkpoint" in result.output and "safetensors" in result.output
    assert "refuses for safety" in result.output and not marker.exists()


def test_model_folders_and_hub_ids_that_cannot_load_say_why(invoke, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("info", "--model", "nobody/no-such-model")
    assert result.exit_code == 1 and "not in the local Hugging Face cache and the hub is offline" in result.output
    assert "stacktrace" not in result.output
    broken = shutil.copytree(tiny_model_dir, tmp_path / "m")
    shutil.rmtree(broken / "unet")
    result = invoke("info", "--model", broken)
    assert result.exit_code == 1 and "lacks its unet/ subfolder" in result.output
    (broken / "model_index.json").write_text("{oops")
    result = invoke("info", "--model", broken)
    assert result.exit_code == 1 and "model_index.json is not valid JSON" in result.output
