# `make demo` and `make test` each set everything up from a fresh checkout.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python

.PHONY: setup demo test bench experiments clean

setup: $(VENV)/.installed

# torch is pinned to the CPU build that pip finds locally; an unpinned torch
# would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[bench,test,record,ray,remote]'
	touch $@

demo: setup
	$(VENV)/bin/blackgrad demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/blackgrad bench

experiments: setup
	$(VENV)/bin/blackgrad run all

clean:
	rm -rf $(VENV) runs build src/*.egg-info
