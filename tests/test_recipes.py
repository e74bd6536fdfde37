"""Recipes (issue 10, first part): the examples in recipes/ run offline on the shipped model, a rerun redoes
nothing, bad recipes are refused before any work with file, line and key, and one bad input does not stop
the others."""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from invedit import api
from invedit.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "recipes").glob("*.toml"))
pytestmark = pytest.mark.skipif(not (api.DEFAULT_MODEL / "model_index.json").is_file(), reason="no shipped model")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_there_are_at_least_four_examples():
    assert {p.name for p in EXAMPLES} >= {"folder-roundtrip.toml", "recolour-shapes.toml", "morph-chain.toml",
                                         "reference.toml"}


@pytest.mark.parametrize("recipe", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_runs_and_a_rerun_redoes_nothing(recipe, tmp_path):
    out = tmp_path / "out"
    args = ["run", recipe, "--set", "steps=4", "--set", f'out="{out}"', "--json"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["counts"]["failed"] == 0 and summary["counts"]["done"] == len(summary["tasks"]) > 0
    for row in summary["tasks"]:
        assert all(Path(p).exists() and Path(p).resolve().is_relative_to(out.resolve()) for p in row["paths"].values())
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in ("summary.json", "report.html")}
    again = json.loads(invoke(*args).stdout)
    assert again["counts"]["done earlier"] == len(again["tasks"]) and again["counts"]["done"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in ("summary.json", "report.html")} == written


def _recipe(tmp_path, body: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(body)
    return path


SCENE = ROOT / "assets" / "scenes" / "yellow-star.png"
GOOD = f'''out = "out"
[defaults]
steps = 3
[[inputs]]
path = "{SCENE}"
prompt = "a yellow star on a blue background"
[[steps]]
kind = "reconstruct"
'''


@pytest.mark.parametrize("change, message, line", [
    (("steps = 3", "steps = 0"), "defaults.steps: Input should be greater than or equal to 1", 3),
    (("steps = 3", "steps = nan"), "defaults.steps", 3),
    (("steps = 3", "guidance = nan"), "defaults.guidance: Input should be a finite number", 3),
    (("steps = 3", "method = \"plain\""), "defaults.method: Input should be", 3),
    (("steps = 3", "stpes = 3"), "defaults.stpes: Extra inputs are not permitted", 3),
    (('kind = "reconstruct"', 'kind = "recon"'), "steps.0.kind: Input tag 'recon' found using 'kind' does not match", 8),
    (('prompt = "a yellow', 'promt = "a yellow'), "inputs.0.promt: Extra inputs are not permitted", 6),
])
def test_bad_values_are_refused_with_file_line_and_key(tmp_path, change, message, line):
    path = _recipe(tmp_path, GOOD.replace(*change))
    result = invoke("recipe", "check", path)
    assert result.exit_code == 1 and message in result.output, result.output
    assert f"{path}:{line}:" in result.output
    assert invoke("run", path).exit_code == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("path, message", [("missing-folder", "matches no image file"),
                                           ("*.nothing", "matches no image file")])
def test_inputs_that_match_nothing_are_refused_before_work(tmp_path, path, message):
    recipe = _recipe(tmp_path, GOOD.replace(str(SCENE), path))
    result = invoke("run", recipe)
    assert result.exit_code == 1 and message in result.output and "inputs.0.path" in result.output
    assert not (tmp_path / "out").exists()


def test_a_bad_input_is_recorded_and_the_others_go_on(tmp_path):
    photos = tmp_path / "in"
    (photos / "a").mkdir(parents=True)
    (photos / "b").mkdir()
    shutil.copy(SCENE, photos / "a" / "scene.png")
    shutil.copy(SCENE, photos / "b" / "scene.png")  # the same stem twice: distinct outputs
    (photos / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    recipe = _recipe(tmp_path, GOOD.replace(f'path = "{SCENE}"', 'path = "in/**/*.png"'))
    result = invoke("run", recipe, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    status = {row["item"]: row["status"] for row in summary["tasks"]}
    assert status == {"broken": "failed", "scene": "done", "scene-2": "done"}
    assert "broken.png" in next(r["error"] for r in summary["tasks"] if r["item"] == "broken")
    assert (tmp_path / "out" / "scene" / "scene.recon.png").is_file()
    assert (tmp_path / "out" / "scene-2" / "scene-2.recon.png").is_file()
    Image.open(SCENE).save(photos / "a" / "broken.png")  # repaired: only it runs again
    rerun = json.loads(invoke("run", recipe, "--json").stdout)
    assert {row["item"]: row["status"] for row in rerun["tasks"]} == {
        "broken": "done", "scene": "done earlier", "scene-2": "done earlier"}


def test_dry_run_and_set_say_what_would_run(tmp_path):
    recipe = _recipe(tmp_path, GOOD)
    result = invoke("run", recipe, "--dry-run", "--set", "guidance=5", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["counts"]["would run"] == 1 and summary["defaults"]["guidance"] == 5
    assert not (tmp_path / "out").exists()


def test_schema_describes_every_step_kind():
    schema = json.loads(invoke("recipe", "schema").stdout)
    kinds = {d["properties"]["kind"]["const"] for d in schema["$defs"].values() if "kind" in d.get("properties", {})}
    assert kinds == {"invert", "reconstruct", "edit", "interpolate"}


def test_the_report_page_is_self_contained_and_every_picture_exists(tmp_path):
    """report.html references only files inside `out` (relative links), all of which exist; no network URL."""
    from html.parser import HTMLParser

    recipe = _recipe(tmp_path, GOOD + '\n[[steps]]\nkind = "edit"\ntargets = ["a red star on a blue background"]\n')
    assert invoke("run", recipe).exit_code == 0
    page = tmp_path / "out" / "report.html"
    refs = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            refs.extend(v for k, v in attrs if k in ("src", "href"))

    text = page.read_text()
    Links().feed(text)
    assert len([r for r in refs if r.endswith(".png")]) >= 6 and "http" not in text
    for ref in refs:
        target = (page.parent / ref).resolve()
        assert target.is_file() and target.is_relative_to(page.parent.resolve()), ref
    assert "reconstruct" in text and "edit" in text and "<script>" in text


def test_killed_twice_and_resumed_a_run_ends_identical_to_an_uninterrupted_one(tmp_path):
    """kill -9 at seeded moments, then a rerun: the outputs equal, byte for byte, those of a run never killed;
    no staging or temporary file is left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    body = GOOD.replace(f'path = "{SCENE}"', f'path = "{ROOT / "assets" / "scenes"}"').replace("steps = 3", "steps = 8")
    body = body.replace('prompt = "a yellow star on a blue background"', 'prompt = "a shape on a background"')
    body += '\n[[steps]]\nkind = "edit"\ntargets = ["a red star on a blue background"]\n'
    recipe = _recipe(tmp_path, body)  # 3 scenes × (reconstruct, edit)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, kill_at=None):
        cmd = [sys.executable, "-m", "invedit", "run", str(recipe), "--set", f'out="{out}"']
        if kill_at is None:
            return subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(kill_at)
        proc.send_signal(signal.SIGKILL)
        return proc.wait()

    start = time.perf_counter()
    assert run(tmp_path / "clean") == 0
    duration = time.perf_counter() - start
    for fraction in (0.45, 0.8):
        run(tmp_path / "killed", kill_at=fraction * duration)
    assert run(tmp_path / "killed") == 0

    _assert_same_outputs(tmp_path / "clean", tmp_path / "killed")


def _assert_same_outputs(clean: Path, other: Path) -> None:
    """Pictures and inversions byte for byte; reports equal but for timings and the output folder's name; no
    staging file left (the comparison of scripts/kill_resume.py, which the 24-image run of the note used)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from kill_resume import compare

    assert compare(clean, other) == []


def test_two_processes_give_the_outputs_and_summary_of_one(tmp_path):
    """torchrun (as accelerate launch) with 2 CPU processes splits the items; outputs equal a 1-process run's."""
    import os
    import subprocess
    import sys

    pytest.importorskip("accelerate")
    body = GOOD.replace(f'path = "{SCENE}"', f'path = "{ROOT / "assets" / "scenes"}"').replace(
        "steps = 3", "steps = 3\nbatch_size = 1\nmethod = \"bdia\"\nguidance = 1.0")
    body = body.replace('prompt = "a yellow star on a blue background"', 'prompt = "a shape on a background"')
    body += '\n[[steps]]\nkind = "interpolate"\nframes = 3\n'
    recipe = _recipe(tmp_path, body)  # 3 scenes × reconstruct, then one interpolation over all
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    one = [sys.executable, "-m", "invedit", "run", str(recipe), "--json", "--set", f'out="{tmp_path / "one"}"']
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "invedit", "run",
           str(recipe), "--json", "--set", f'out="{tmp_path / "two"}"']
    a = subprocess.run(one, env=env, capture_output=True, text=True, timeout=600)
    b = subprocess.run(two, env=env, capture_output=True, text=True, timeout=600)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-2000:]
    sa, sb = json.loads(a.stdout), json.loads(b.stdout)  # only the main process prints
    assert sb["shard"] == {"index": 0, "count": 2} and sa["shard"] == {"index": 0, "count": 1}
    assert sa["counts"] == sb["counts"] == {"done": 4, "done earlier": 0, "failed": 0, "would run": 0}
    assert [r["task"] for r in sa["tasks"]] == [r["task"] for r in sb["tasks"]]
    assert (tmp_path / "two" / "manifest-1.jsonl").is_file()  # the second process did its share
    _assert_same_outputs(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "two" / ".shards").exists()


def test_a_linked_folder_inside_out_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "yellow-star").symlink_to(outside, target_is_directory=True)
    result = invoke("run", _recipe(tmp_path, GOOD), "--json")
    assert result.exit_code == 1 and "is a link out of the recipe's out folder" in result.output
    assert list(outside.iterdir()) == []


def test_batched_inversions_equal_one_at_a_time(tmp_path):
    """batch_size 3 inverts the three scenes in one UNet batch; their reconstructions equal batch_size 1's to
    one grey level (the batch's rounding), and the batch size does not change any task's key."""
    import numpy as np

    body = GOOD.replace(f'path = "{SCENE}"', f'path = "{ROOT / "assets" / "scenes"}"').replace("steps = 3", "steps = 6")
    body = body.replace('prompt = "a yellow star on a blue background"', 'prompt = "a shape on a background"')
    recipe = _recipe(tmp_path, body)
    one = json.loads(invoke("run", recipe, "--set", "batch_size=1", "--set", 'out="one"', "--json").stdout)
    three = json.loads(invoke("run", recipe, "--set", "batch_size=3", "--set", 'out="three"', "--json").stdout)
    assert [r["key"] for r in one["tasks"]] == [r["key"] for r in three["tasks"]]
    for name in ("yellow-star", "red-circle", "cyan-square"):
        a = np.asarray(Image.open(tmp_path / "one" / name / f"{name}.recon.png"), dtype=int)
        b = np.asarray(Image.open(tmp_path / "three" / name / f"{name}.recon.png"), dtype=int)
        assert np.abs(a - b).max() <= 1
    stats = [json.loads((tmp_path / d / "cyan-square" / "cyan-square.report.json").read_text())
             for d in ("one", "three")]
    assert [s["inversion"]["network_calls"] for s in stats] == [12, 12]  # a batch of three costs what one image does
