# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned for development and CI: 2.13.0 installs from a CPU wheel
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint typecheck bench clean

$(VENV)/.installed-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-base
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[test,torch,jax,plot]'
	touch $@

demo: $(VENV)/.installed-base
	$(VENV)/bin/sekron demo

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check sekron tests benchmarks
	$(VENV)/bin/mypy sekron
	OMP_NUM_THREADS=2 $(PY) -m pytest sekron tests -q

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_decompose.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
