# Set-up and the two jobs of the README: `make book` and `make test`.
# Each target creates the virtual environment when it is missing (or older than pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Our machines carry a CPU wheel of torch 2.13.0 on disk; elsewhere pick any torch>=2.10 build.
TORCH_SPEC ?= torch==2.13.0
# Offline mirror of the data sets (see ../shared/data/README.md); users without one download.
export ADAMQLR_DATA ?= $(abspath ../shared/data)
export PYTHONHASHSEED = 0

.PHONY: env book test lint bench clean-book

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is named in the same resolve as the extras, so that nothing they pull in (curvlinops ->
	# backpack -> torchvision) can upgrade it to another build.
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name adamqlr --display-name "Python (adamqlr)" >/dev/null
	touch $@

env: $(BIN)/.installed

# Chromium from Debian's packages for the browser test (no browser download at test time).
/usr/bin/chromium:
	(command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) \
		|| echo "chromium not installed: the browser test will be skipped"

# One torch thread: the pages are light, and on a shared 2-core machine two threads spin-wait.
book: env
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/adamqlr book build

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
