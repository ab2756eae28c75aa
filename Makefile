# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here (the pair that imports together on the project's machines);
# pyproject keeps ranges so roli installs beside other stacks.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.roli-installed

.PHONY: demo demo-full test test-all setup lint bench clean-venv study study-tune study-report

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,lint]'
	# test-only reference attacks; --no-deps because torchattacks' metadata pins requests~=2.25.1 (see pyproject)
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

setup: $(STAMP)

# The embedded default (`make demo`: 197 s on the AMX Xeon, about 7.6 min on the AMD kind; README): the shipped robust tiny ViT (Fashion-MNIST PGD-AT) ->
# MNIST: linear probing (also the RoLI stage 1 every *_roli recipe reuses), full finetuning RanLI vs RoLI and LoRA
# RanLI vs RoLI, then AutoAttack (APGD-CE + APGD-T) on a fixed class-balanced subset of 100 test digits for the two
# full-finetuning models, then the report. `make demo-full`: all six methods x {RanLI, RoLI} (VPT RanLI only).
DEMO_RECIPES := $(addprefix recipes/tiny/mnist_,linear_ranli.yaml full_ranli.yaml full_roli.yaml lora_ranli.yaml \
	lora_roli.yaml)
DEMO_FULL_RECIPES := $(DEMO_RECIPES) $(addprefix recipes/tiny/mnist_,adapter_ranli.yaml adapter_roli.yaml \
	bitfit_ranli.yaml bitfit_roli.yaml vpt_deep_ranli.yaml)
DEMO_AA := --suite full --limit 100 --aa version=custom 'attacks=[apgd-ce,apgd-t]'
DEMO_OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: $(STAMP)
	$(VENV)/bin/roli run $(DEMO_RECIPES) --out $(DEMO_OUT)
	$(VENV)/bin/roli eval --checkpoint $(DEMO_OUT)/mnist_full_ranli/best.pt $(DEMO_AA) > /dev/null
	$(VENV)/bin/roli eval --checkpoint $(DEMO_OUT)/mnist_full_roli/best.pt $(DEMO_AA) > /dev/null
	$(VENV)/bin/roli report $(DEMO_OUT) > /dev/null
	@cat $(DEMO_OUT)/report.md
	@echo "demo report: $(DEMO_OUT)/report.md and report.html (runs, results.json and checkpoints in $(DEMO_OUT)/)"

demo-full: $(STAMP)
	$(VENV)/bin/roli run $(DEMO_FULL_RECIPES) --out $(DEMO_OUT)
	@echo "demo report: $(DEMO_OUT)/report.md (runs, results.json and checkpoints in $(DEMO_OUT)/)"

# The study (issue 13, docs/results.md): 4.44 CPU-hours for its first 44 cells (2.5 h on 2 cores), in resumable
# slices. `make study-tune` chooses the learning rates (done: recipes/study/tuned/); `make study` runs one slice
# (no new cell after STUDY_MINUTES) in two processes (one torch thread each: run.threads in recipes/study/base.yaml),
# then `make study-report`. Re-run
# `make study` until the sweeps run nothing new; finished cells are skipped, interrupted ones resume.
STUDY_MINUTES ?= 60

study-tune: $(STAMP)
	recipes/study/tune.sh

study: $(STAMP)
	recipes/study/run.sh $(STUDY_MINUTES)
	$(MAKE) study-report

study-report: $(STAMP)
	$(VENV)/bin/roli report runs/study/cells --archive docs/results/runs --out docs/results \
	  --findings recipes/study/findings.yaml --doc docs/results.md > /dev/null
	@echo "study report: docs/results.md, docs/results/report.html (archived runs: docs/results/runs/)"

# The suite in parallel over the cores (its tests are single-threaded): 191 s vs 277 s in one process (AMX Xeon).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal -m 'not gpu'

# Lint = ruff's rules (pyproject [tool.ruff.lint]) + a layout check (pycodestyle's indentation, whitespace and blank
# lines, E1/E2/E3, a ruff preview family). Not `ruff format`: its one-argument-per-line style would rewrite 130 of 167
# files (+1,500 lines) and push 17 functions past the house's 50 code lines (CONTRIBUTING.md).
LINT_PATHS := src tests scripts benchmarks
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff check --preview --select E1,E2,E3,W391 $(LINT_PATHS)

clean-venv:
	rm -rf $(VENV)

bench: $(STAMP)
	$(PY) benchmarks/run.py --quick
