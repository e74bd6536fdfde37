"""The shipped model and sample images travel with the package (issue 13, item 10)."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr[-300:]}")
    return next(out.glob("invedit-*.whl"))


def test_the_wheel_carries_the_default_model_and_the_demo_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    model = ROOT / "assets" / "models" / "shapes-64"
    needed = [p.relative_to(ROOT / "assets").as_posix() for p in model.rglob("*") if p.is_file()]
    needed += ["scenes/yellow-star.png", "photos/astronaut.png"]
    missing = [n for n in needed if f"invedit_assets/{n}" not in names]
    assert not missing, missing
    assert "invedit/api.py" in names and "invedit/model/adapter.py" in names


def test_an_installed_wheel_finds_its_model_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip puts in site-packages, without the source tree beside it
    code = "import invedit.api as a; print(a.DEFAULT_MODEL); assert (a.DEFAULT_MODEL / 'model_index.json').is_file()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip().startswith(str(site))
