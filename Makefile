# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (the pair that imports together on the project's machines);
# pyproject keeps ranges so roli installs beside other stacks.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.roli-installed

.PHONY: demo test test-all setup lint clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The embedded default: robust tiny ViT (Fashion-MNIST PGD-AT) -> MNIST; linear probe, full finetune RanLI / RoLI.
DEMO_RECIPES := recipes/tiny/mnist_linear_ranli.yaml recipes/tiny/mnist_full_ranli.yaml recipes/tiny/mnist_full_roli.yaml
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: $(STAMP)
	$(VENV)/bin/roli run $(DEMO_RECIPES) --out $(DEMO_OUT)
	@echo "demo report: $(DEMO_OUT)/report.md (runs, results.json and checkpoints in $(DEMO_OUT)/)"

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m 'not gpu'

lint: $(STAMP)
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check src tests

clean-venv:
	rm -rf $(VENV)
