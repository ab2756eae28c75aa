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
	# test-only reference attacks; --no-deps because torchattacks' metadata pins requests~=2.25.1 (see pyproject)
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

setup: $(STAMP)

# The embedded default: robust tiny ViT (Fashion-MNIST PGD-AT) -> MNIST; six methods x {RanLI, RoLI} (VPT RanLI only,
# as in the paper). The linear probe runs first: it is also the RoLI stage 1 that every *_roli recipe reuses.
DEMO_RECIPES := $(addprefix recipes/tiny/mnist_,linear_ranli.yaml full_ranli.yaml full_roli.yaml lora_ranli.yaml \
	lora_roli.yaml adapter_ranli.yaml adapter_roli.yaml bitfit_ranli.yaml bitfit_roli.yaml vpt_deep_ranli.yaml)
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
