# Two commands a newcomer needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# A CPU build that installs from local disk on our machines; any torch already
# present in the venv is kept.
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench bench-ingest bench-client bench-curvature clean

$(PY):
	$(PYTHON) -m venv $(VENV) || { $(PYTHON) -m pip install --user virtualenv && $(PYTHON) -m virtualenv $(VENV); }

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(PY) -m edgewatch demo

lint: $(STAMP)
	$(VENV)/bin/ruff check edgewatch tests bench
	$(VENV)/bin/ruff format --check edgewatch tests bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: bench-ingest bench-client bench-curvature

bench-ingest: $(STAMP)
	$(PY) bench/ingest.py

bench-client: $(STAMP)
	$(PY) bench/client_overhead.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench-curvature: $(STAMP)
	$(PY) bench/curvature.py
