# Two commands a newcomer needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
DEV    := $(VENV)/.installed-dev
# A CPU build that installs from local disk on our machines; any torch already
# present in the venv is kept.
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench bench-ingest bench-restart bench-client bench-curvature bench-predict bench-preflight bench-alerts bench-fuzz bench-load bench-outage bench-web clean

$(PY):
	$(PYTHON) -m venv $(VENV) || { $(PYTHON) -m pip install --user virtualenv && $(PYTHON) -m virtualenv $(VENV); }

# The demo needs the package and torch; tests and benchmarks also the dev tools and the
# frameworks the integrations are tested against.
$(BASE): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e .
	@touch $@

$(DEV): $(BASE)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BASE)
	$(PY) -m edgewatch demo

lint: $(DEV)
	$(VENV)/bin/ruff check edgewatch edgewatch_testkit tests bench setup.py
	$(VENV)/bin/ruff format --check edgewatch edgewatch_testkit tests bench setup.py
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: bench-ingest bench-client bench-curvature bench-predict bench-preflight bench-alerts bench-fuzz bench-load bench-outage bench-web bench-restart

bench-ingest: $(DEV)
	$(PY) -m bench.perf.ingest

# Step times of a nanoGPT-sized transformer with and without edgewatch (p50/p99/worst,
# estimates per 1000 steps at the default budget), then the hook's µs per step on an MLP.
bench-client: $(DEV)
	$(PY) -m bench.perf.client_steps
	$(PY) -m bench.perf.client_overhead

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info

# HVPs to 1% error, warm and cold; then exact against difference products, side by side.
bench-curvature: $(DEV)
	$(PY) -m bench.perf.curvature
	$(PY) -m bench.perf.products

# The instability benchmark: 147 small CPU training runs in eight families through client
# and daemon, scored leaving one family out against the baselines, with an intervention
# track (30-45 minutes on 2 cores); report in bench/out/predict.md.
bench-predict: $(DEV)
	$(PY) -m bench.instability.predict

# Pre-flight's verdict and fix against the full runs of the fast families and a sample of
# char_gpt (about 15 minutes on 2 cores); report in bench/out/preflight.md.
bench-preflight: $(DEV)
	$(PY) -m bench.instability.preflight

# Record-to-webhook delay through real Prometheus and Alertmanager (about 3 minutes).
bench-alerts: $(DEV)
	$(PY) -m bench.perf.alert_path

# 100,000 generated hostile frames against a live daemon, good traffic in between.
bench-fuzz: $(DEV)
	$(PY) -m bench.perf.fuzz

# 32 concurrent clients into SQLite and PostgreSQL: at full speed, then at half that rate
# for the lag of a steady load.
bench-load: $(DEV)
	$(PY) -m bench.perf.ingest --clients 32 --records 1600000 --paced 0.5

# Restart time after SIGKILL against a running job's stored length (10^5 to 2*10^6 steps),
# from the analysis' checkpoint and by a full replay, beside a fresh start (SQLite).
bench-restart: $(DEV)
	$(PY) -m bench.perf.restart

# Step time through a long daemon outage (disk spool) against a live daemon, side by side.
bench-outage: $(DEV)
	$(PY) -m bench.perf.outage

# The job page of a 10^6- and a 10^7-step job in headless Chromium: load time and bytes
# (about 4 minutes, most of it writing the rows).
bench-web: $(DEV)
	$(PY) -m bench.perf.web
