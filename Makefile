# dap — one entry point for set-up, the main job and the tests.
#   make demo      the main job: evaluate every shipped model, side by side -> runs/demo/report.md
#   make test      unit tests + jupytext pairing check + every notebook (DAP_PROFILE=ci)
#   make test-browser  every notebook run in JupyterLab in a headless Chromium (Playwright):
#                  no stderr, a figure wherever a cell plots, sliders redraw; screenshots in
#                  runs/browser/ (skips with a reason when no Chromium is installed)
#   make lab       open the notebooks in JupyterLab (tools/lab.py; the browser test starts the same)
#   make notebooks regenerate notebooks/*.ipynb from their reviewed .py twins
# Targets create (or reuse) a virtual environment in $(VENV) and install dap in editable mode.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Used only when the environment has no torch yet (Colab and conda users bring their own).
TORCH_SPEC ?= torch==2.13.0
DAP_PROFILE ?= ci
NB_TIMEOUT ?= 900
# notebooks run NB_WORKERS at a time, each kernel on one CPU thread
NB_WORKERS ?= 2

# Headless notebook runs draw with Agg. Set per recipe, never exported: a `make lab` kernel that
# inherits MPLBACKEND=Agg keeps it and plt.show() draws nothing in the browser.
HEADLESS := MPLBACKEND=Agg
export PIP_DISABLE_PIP_VERSION_CHECK = 1
ifeq ($(CI),true)
export TQDM_DISABLE = 1
endif

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: install demo test unit nbrun test-browser notebooks lab clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

unit: install
	$(HEADLESS) $(BIN)/python -m pytest tests -q

nbrun: install
	$(HEADLESS) DAP_PROFILE=$(DAP_PROFILE) OMP_NUM_THREADS=1 $(BIN)/python -m pytest --nbmake \
		--nbmake-kernel=python3 --nbmake-timeout=$(NB_TIMEOUT) -n $(NB_WORKERS) -q $(NOTEBOOKS)

test: unit nbrun

# The browser tests carry the `browser` marker (deselected by the plain pytest run above).
test-browser: install
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/pip install -e ".[browser]"
	DAP_PROFILE=ci OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m browser -v -s tests/test_browser.py

demo: install
	$(BIN)/python -m dap demo $(DEMO_ARGS)

notebooks: install
	$(BIN)/python tools/nbsync.py --write

lab: install
	$(BIN)/python tools/lab.py $(LAB_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
