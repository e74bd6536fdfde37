import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SD-shaped pipeline saved as a diffusers folder (built in code, no hub)."""
    from invedit.model.build import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def xl_dir(tmp_path_factory):
    """A tiny random SDXL-shaped pipeline folder."""
    from invedit.model.build import save_tiny_xl_pipeline

    return save_tiny_xl_pipeline(tmp_path_factory.mktemp("xl") / "model")


@pytest.fixture(scope="session")
def v_dir(tmp_path_factory):
    """A tiny SD 2.x-style pipeline folder: SD 2.x's scheduler, v-prediction with trailing timestep spacing."""
    import json

    from invedit.model.build import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("v") / "model", prediction_type="v_prediction")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "timestep_spacing": "trailing"}))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from invedit import api

    return api.load(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def photo(tmp_path_factory):
    """A 40×28 crop of the shipped astronaut photo: small enough for fast tests, not a multiple of anything."""
    from pathlib import Path

    from PIL import Image

    src = Path(__file__).resolve().parent.parent / "assets" / "photos" / "astronaut.png"
    path = tmp_path_factory.mktemp("photo") / "astro.png"
    Image.open(src).resize((40, 28)).save(path)
    return path
