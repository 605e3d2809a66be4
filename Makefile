# Set-up and the jobs of the README: `make book`, `make rerun` and `make test`.
# Each target creates the virtual environment when it is missing (or older than pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The book's environment is pinned, with hashes, in requirements-book.lock (Linux x86-64,
# CPython 3.11, torch 2.13.0's CPU-only build); `make lock` refreshes it and environment.yml.
# Elsewhere (macOS, other Pythons) `LOCK=` installs unpinned: torch from PyTorch's CPU index,
# then the package with its extras. For CUDA, TORCH_CUDA=cu128 (or another CUDA tag of
# https://download.pytorch.org/whl) replaces the CPU build of torch 2.13.0 by that one.
LOCK ?= requirements-book.lock
TORCH_CUDA ?=
TORCH_VERSION := 2.13.0
# Where `make lock` finds torch's CPU wheels (a local folder of wheels works too).
TORCH_WHEELS ?= https://download.pytorch.org/whl/cpu/torch/
UV ?= uv
# `--retries 1`: where PyTorch's index cannot be reached (an offline machine with torch's wheel in a
# local --find-links folder), pip moves on at once instead of retrying it for every package.
# Offline mirror of the data sets (see ../shared/data/README.md); users without one download.
export ADAMQLR_DATA ?= $(abspath ../shared/data)
export PYTHONHASHSEED = 0

.PHONY: env book rerun test lint bench clean-book lock

# The torch build installed (cpu, or the CUDA tag of TORCH_CUDA) is a prerequisite too: asking for
# another one (`make book TORCH_CUDA=cu128` after a plain `make book`, or back) reinstalls.
TORCH_BUILD := $(BIN)/.torch-$(or $(TORCH_CUDA),cpu)

$(TORCH_BUILD):
	mkdir -p $(BIN)
	rm -f $(BIN)/.torch-*
	touch $@

$(BIN)/.installed: pyproject.toml $(LOCK) $(TORCH_BUILD)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifneq ($(LOCK),)
	$(BIN)/python -m pip install -q --retries 1 --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
else
	$(BIN)/python -m pip install -q --extra-index-url https://download.pytorch.org/whl/cpu "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[test]"
endif
ifneq ($(TORCH_CUDA),)
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)+$(TORCH_CUDA)" --index-url https://download.pytorch.org/whl/$(TORCH_CUDA)
endif
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
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

bench: env
	$(BIN)/python benchmarks/step_cost.py

clean-book:
	rm -rf _build book/*.failed.ipynb

# Re-pin the book's environment (needs uv: `pip install uv`, and the package index): compile
# pyproject.toml's extra `test` with torch's CPU build (requirements-book.in) for Linux x86-64 and
# CPython 3.11, with the SHA-256 of every file, then write environment.yml from the lock.
lock:
	{ echo "# The book's environment, pinned with hashes by \`make lock\` (do not edit; see README)."; \
	  echo "# Python: 3.11  platform: x86_64-manylinux_2_28  torch: CPU-only build"; \
	  echo "--extra-index-url https://download.pytorch.org/whl/cpu"; \
	  $(UV) pip compile pyproject.toml requirements-book.in --extra test --generate-hashes \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --no-annotate \
		--index-url https://pypi.org/simple --find-links $(TORCH_WHEELS) $(LOCK_FLAGS); } > requirements-book.lock.tmp
	mv requirements-book.lock.tmp requirements-book.lock
	$(PYTHON) .ci/environment_from_lock.py
