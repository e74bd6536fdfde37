# invedit: the two commands a newcomer needs (README.md).
#   make demo   install, then edit a shapes-world scene and reconstruct a photo with the model that ships in assets/
#   make test   install, then run the test suite (what CI runs)
#
# Where it installs: into the active virtualenv or conda environment when there is one (a GPU machine keeps its
# CUDA torch), otherwise into a project-local .venv made with the system python3 (a stock Debian/Ubuntu python3
# refuses `pip install` outside a virtualenv: PEP 668). Set PYTHON=... to choose an interpreter yourself.
SYSTEM_PYTHON ?= python3
ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
endif
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE ?= 1

.PHONY: install test test-all demo bench

.venv/bin/python:
	$(SYSTEM_PYTHON) -m venv .venv

install: $(if $(filter .venv/bin/python,$(PYTHON)),.venv/bin/python)
	@# The CPU build of torch 2.13.0 unless a torch (a CUDA build, say) is already installed.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"

test: install
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q

test-all: install
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q --runslow

demo: install
	$(PYTHON) -m invedit edit assets/scenes/yellow-star.png --source "a yellow star on a blue background" \
		--target "a red star on a blue background" --target "a yellow star on a black background" \
		--target "a yellow circle on a blue background" --out runs/demo
	$(PYTHON) -m invedit roundtrip assets/photos/astronaut.png --prompt "a photo" --out runs/demo

bench: install
	$(PYTHON) benchmarks/bench_inversion.py
