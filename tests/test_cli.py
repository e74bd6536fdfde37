"""The command line through click's CliRunner, on the tiny random model: help, outputs and bad input."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from invedit.cli import main

COMMANDS = ["invert", "reconstruct", "roundtrip", "edit", "interpolate", "run", "recipe", "sample", "info"]


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(run, command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"invedit {command}" in result.output


def test_top_level_help_and_version(run):
    assert all(c in run("--help").output for c in COMMANDS)
    assert "0.1.0" in run("--version").output


def test_python_dash_m_works_like_the_console_script():
    out = subprocess.run([sys.executable, "-m", "invedit", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "roundtrip" in out.stdout


def test_roundtrip_writes_all_outputs(run, tiny_model_dir, photo, tmp_path):
    out = tmp_path / "run"
    result = run("roundtrip", photo, "--model", tiny_model_dir, "--device", "cpu", "--steps", 8, "--out", out,
                 "--prompt", "a cat")
    assert result.exit_code == 0, result.output
    assert "reconstruction vs VAE round trip" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["astro.compare.png", "astro.inversion.safetensors",
                                                     "astro.recon.png", "astro.report.json"]


def test_invert_then_reconstruct_with_json(run, tiny_model_dir, photo, tmp_path):
    result = run("invert", photo, "-m", tiny_model_dir, "--device", "cpu", "--steps", 6, "--method", "ddim",
                 "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["network_calls"] == 6 and summary["image"]["original_size"] == [40, 28]
    result = run("reconstruct", summary["inversion"], "-m", tiny_model_dir, "--device", "cpu", "--out", tmp_path,
                 "--json")
    report = json.loads(result.stdout)
    assert report["inversion"]["method"] == "ddim" and report["inversion"]["steps"] == 6
    assert set(report["files"]) == {"reconstruction", "comparison", "report"}


def test_sample_and_info(run, tiny_model_dir, tmp_path):
    result = run("sample", "-m", tiny_model_dir, "--device", "cpu", "-p", "a red circle", "--count", 2, "--steps", 4,
                 "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample_0.json", "sample_0_0.png", "sample_0_1.png"]
    info = json.loads(run("info", "-m", tiny_model_dir, "--device", "cpu", "--json").stdout)
    assert info["prediction_type"] == "epsilon" and info["size_multiple"] == 4


def _no_outputs(folder):
    return not folder.exists() or not any(folder.iterdir())


def test_missing_image(run, tmp_path):
    result = run("roundtrip", tmp_path / "nope.jpg", "--out", tmp_path / "out")
    assert result.exit_code != 0 and "nope.jpg" in result.output and "does not exist" in result.output
    assert _no_outputs(tmp_path / "out")


def test_corrupt_image_fails_before_loading_the_model(run, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    result = run("invert", bad, "--model", tmp_path / "no-model-here", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "broken.jpg" in result.output and "Traceback" not in result.output
    assert _no_outputs(tmp_path / "out")


def test_truncated_image_is_named(run, tiny_model_dir, tmp_path):
    from PIL import Image

    good = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, quality=95)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    result = run("roundtrip", good, "-m", tiny_model_dir, "--device", "cpu", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "photo.jpg" in result.output and "truncated" in result.output
    assert _no_outputs(tmp_path / "out")


def test_missing_model_path(run, photo, tmp_path):
    result = run("roundtrip", photo, "--model", "./models/nowhere", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "./models/nowhere" in result.output and "does not exist" in result.output
    assert _no_outputs(tmp_path / "out")


def test_a_file_that_is_not_an_inversion(run, tiny_model_dir, photo, tmp_path):
    result = run("reconstruct", photo, "-m", tiny_model_dir, "--device", "cpu", "--out", tmp_path / "out")
    assert result.exit_code == 1 and "not a readable safetensors file" in result.output
    assert _no_outputs(tmp_path / "out")


def test_bad_option_values_are_refused(run, photo):
    assert run("roundtrip", photo, "--method", "magic").exit_code == 2
    assert run("roundtrip", photo, "--steps", 0).exit_code == 2
    assert run("roundtrip", photo, "--dtype", "fp8").exit_code == 2


def test_reconstruct_with_another_model_says_what_differs(run, tiny_model_dir, photo, tmp_path):
    from invedit.model.build import save_tiny_pipeline

    run("invert", photo, "-m", tiny_model_dir, "--device", "cpu", "--steps", 4, "--method", "ddim", "--out", tmp_path)
    other = save_tiny_pipeline(tmp_path / "other", seed=7)
    result = run("reconstruct", tmp_path / "astro.inversion.safetensors", "-m", other, "--device", "cpu",
                 "--out", tmp_path / "out")
    assert result.exit_code == 1 and "fingerprint" in result.output
    assert _no_outputs(tmp_path / "out")


def test_cli_method_choices_match_the_library():
    from invedit.cli import METHOD_CHOICES
    from invedit.methods import METHODS

    assert METHOD_CHOICES == tuple(METHODS)
