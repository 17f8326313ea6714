# make demo: install into .venv if needed, then train the embedded default (char GPT on Shakespeare).
# make test: install the test extras if needed, then lint (ruff format --check, ruff check) and run the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: demo test test-slow clean-demo

$(VENV)/.runtime: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.test: requirements-test.txt requirements-aot.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/tpu-compiler -r requirements-aot.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=$(WORKDIR)

test: $(VENV)/.test
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto

test-slow: $(VENV)/.test
	$(PY) -m pytest -q -m slow

clean-demo:
	rm -rf $(WORKDIR)
