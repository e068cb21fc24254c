# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKSPACE ?= workspaces/demo
PYTEST_ARGS ?=

.PHONY: run test test-all setup demo-data demo-models bench bench-gpu clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -r requirements.txt 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, torchvision, diffusers, accelerate, timm, gradio, plotly, pandas, safetensors, openslide, tifffile, torchmetrics"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python app.py --workspace $(WORKSPACE)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

demo-data: $(STAMP)
	$(BIN)/python -m core data demo --workspace $(WORKSPACE)

# Retrains the bundled demo models from scratch (CPU, about an hour) and refreshes assets/demo_models.
demo-models: $(STAMP)
	$(BIN)/python -m core run --preset demo --workspace workspaces/demo-train
	$(BIN)/python -m core export-demo --workspace workspaces/demo-train --to assets/demo_models

bench: $(STAMP)
	$(BIN)/python -m benchmarks.pretrain_step
	$(BIN)/python -m benchmarks.guided_sampling
	$(BIN)/python -m benchmarks.app_latency
	$(BIN)/python -m benchmarks.quality_eval

# The speed goals on a CUDA machine in one table, under 8 minutes (`bash benchmarks/gpu.sh --dry-run`
# checks its Python parts on CPU at tiny shapes).
bench-gpu: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu.sh

clean:
	rm -rf $(VENV) workspaces .pytest_cache
