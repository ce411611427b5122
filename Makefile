# `make test` on a fresh machine: creates .venv, installs the pinned dependencies, runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test install demo bench clean parity

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# offline demo: tiny random-weight checkpoints under .cache/demo/, full pipeline on examples/demo_layout.json (CPU)
demo: $(STAMP)
	$(PY) -m ldm.inference.demo --no-progress

parity: $(STAMP)
	$(PY) ../shared/reference/check_parity.py --project . --golden ../shared/reference/golden

clean:
	rm -rf $(VENV) .cache .pytest_cache
