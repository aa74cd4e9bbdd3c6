# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The ledger's signing key stays outside the run directory (and survives `rm -rf runs/demo`);
# the audit pins the public key from the key directory, not the run directory's copy.
DEMO_KEYS ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/secure-fedrl/ledger-keys/demo

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/secure-fedrl simulate clients/cartpole/federation.toml --out runs/demo --ledger-key $(DEMO_KEYS)
	$(PY) audit/verify_ledger.py runs/demo --public-key-file $(DEMO_KEYS)/ledger_public_key.hex --quiet

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/fedrl.py

# Headless Chromium (Debian) for the privacy report's browser tests and PDF output; ~30 s here.
# Without it those tests skip and `report --format pdf` says so.
browser:
	command -v chromium >/dev/null 2>&1 || { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) runs .pytest_cache
