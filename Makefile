# Set-up and the jobs of the README: `make book`, `make rerun` and `make test`.
# Each target creates the virtual environment when it is missing (or older than pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, on its own: its build is the reader's choice. The default is the
# CPU-only build from PyTorch's CPU index (about 200 MB instead of PyPI's 5.5 GB CUDA build on
# Linux). For CUDA: TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or TORCH_INDEX= for PyPI's
# default build). A wheel in pip's find-links folder (our machines) is used as well.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Offline mirror of the data sets (see ../shared/data/README.md); users without one download.
export ADAMQLR_DATA ?= $(abspath ../shared/data)
export PYTHONHASHSEED = 0

.PHONY: env book rerun test lint bench clean-book

# When the package and its extras are installed, torch is already there and satisfies every
# requirement on it, so nothing they pull in (curvlinops -> backpack -> torchvision) replaces it.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name adamqlr --display-name "Python (adamqlr)" >/dev/null
	touch $@

env: $(BIN)/.installed

# Chromium from Debian's packages for the browser test (no browser download at test time).
/usr/bin/chromium:
	(command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) \
		|| echo "chromium not installed: the browser test will be skipped"

# On a fresh clone every committed page is up to date, so `make book` executes no notebook: it
# builds the committed pages. One torch thread: the pages are light, and on a shared 2-core
# machine two threads spin-wait.
book: env
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/adamqlr book build

# Re-execute every page (each under the profile it was published with), then build.
rerun: env
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/adamqlr book build --force

# One torch thread per pytest worker: two workers with two threads each on two cores spend most
# of their time spin-waiting (an AdamQLR step on a small MLP went from ~8 ms to ~250 ms).
test: env /usr/bin/chromium
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q

lint: env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: env
	$(BIN)/python benchmarks/step_cost.py

clean-book:
	rm -rf _build book/*.failed.ipynb
