# make demo: install into .venv if needed, then train the embedded default (char GPT on Shakespeare).
# make test: install the test extras if needed, then lint (ruff format --check, ruff check, the import layering:
# lint-imports) and run the tests.
# make accelerator-wheels: the wheels a GPU image without a registry lacks (benchmarks/accelerator.py's recipe).
# The pinned stack needs Python >= 3.12: the first of python3.12 and python3.13 that runs (on PATH, or pyenv's).
PYTHON ?= $(shell for p in python3.12 python3.13 $$HOME/.pyenv/versions/3.1[23]*/bin/python3.1[23]; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
# uv installs the pinned sets (from its cache, a fresh clone's .venv takes seconds, not pip's minutes). It does
# not compile them to bytecode, as pip does: Python does, once for each module it imports, which it is let do here
# (an empty PYTHONDONTWRITEBYTECODE is unset) so that the suite's many processes do not each parse every module.
UV_PIN := uv==0.13.10
UV := $(VENV)/bin/uv pip install --quiet --python $(PY)
export PYTHONDONTWRITEBYTECODE =
WORKDIR ?= workdirs/demo
WHEELS ?= accelerator-wheels

.PHONY: demo test test-slow clean-demo accelerator-wheels

$(VENV)/.runtime: requirements.txt requirements-nodeps.txt
	@test -n "$(PYTHON)" || { echo "error: no Python >= 3.12 found; install python3.12 or set PYTHON=" >&2; exit 1; }
	$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
		|| { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip "$(UV_PIN)"
	$(UV) -r requirements.txt
	$(UV) --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.test: requirements-test.txt requirements-aot.txt $(VENV)/.runtime
	$(UV) -r requirements-test.txt
	$(UV) --no-deps --upgrade --target $(VENV)/tpu-compiler -r requirements-aot.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=$(WORKDIR)

test: $(VENV)/.test
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n auto --durations=30

test-slow: $(VENV)/.test
	$(PY) -m pytest -q -m slow

clean-demo:
	rm -rf $(WORKDIR)

accelerator-wheels: $(VENV)/.runtime
	$(PY) benchmarks/accelerator_wheels.py --out $(WHEELS)
