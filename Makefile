# Aethr development tasks (GNU make). `make test` is the one command CI runs, per interpreter.
#
#   make test [PYTHON=python3.12] [PYTEST_ARGS='-k yaml']   tests in .venv-X.Y for that interpreter
#   make test-all        make test on every working CPython 3.10-3.13 (tests/find-pythons.sh)
#   make presets         regenerate the PRESETS block of aethr.py from presets/*.yaml
#   make check           ruff lint, then the tests on the oldest and newest interpreter
#   make importtime | bench | fuzz | build | clean

PYTHON ?= python3
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV := .venv-$(PYVER)
VENV_PY := $(VENV)/bin/python
# Written after a successful install; rebuilt when pyproject.toml is newer.
STAMP := $(VENV)/.aethr-dev-installed
PYTEST_ARGS ?=
RUFF_PATHS := aethr.py tests

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test test-all venv presets check importtime bench fuzz build clean

test: $(STAMP)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

$(VENV_PY):
	@test -n "$(PYVER)" || { echo "make: '$(PYTHON)' does not run; pass PYTHON=/path/to/python3.X" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV_PY)
	$(VENV_PY) -m pip install -q -e '.[dev]'
	@touch $@

test-all:
	@pythons=$$(sh tests/find-pythons.sh) || exit 1; \
	for py in $$pythons; do \
		echo "== make test PYTHON=$$py"; \
		$(MAKE) --no-print-directory test PYTHON="$$py" || exit 1; \
	done

presets:
	$(PYTHON) tests/presets_sync.py --write

# Lint, then the tests on the oldest and the newest interpreter found (STYLE §2, §5).
check: $(STAMP)
	$(VENV_PY) -m ruff check $(RUFF_PATHS)
	@pythons=$$(sh tests/find-pythons.sh) || exit 1; \
	for py in $$(echo "$$pythons" | head -1) $$(echo "$$pythons" | tail -1); do \
		$(MAKE) --no-print-directory test PYTHON="$$py" || exit 1; \
	done

importtime:
	$(PYTHON) -X importtime -c "import aethr" 2>&1 | tail -1

# make bench [PYTHON=/path/to/python3.12] [BENCH_ARGS='--quick']; SPEC §12 (use a clean interpreter).
BENCH_ARGS ?=
bench:
	$(PYTHON) tests/bench.py $(BENCH_ARGS)

# Long property-based runs; conftest.py registers the "long" Hypothesis profile.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(VENV_PY) -m pytest -k fuzz $(PYTEST_ARGS)

build:
	$(PYTHON) -m pip wheel --no-deps -w dist .

clean:
	rm -rf .venv-*/ build/ dist/ *.egg-info/ .pytest_cache/ .ruff_cache/ .hypothesis/
	find . -path ./.git -prune -o -name __pycache__ -type d -exec rm -rf {} +
