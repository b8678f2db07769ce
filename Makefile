# Two commands for a new user: `make demo` (train then evaluate on built-in data) and `make test`.
# Each creates .venv on first use. pyproject.toml keeps version ranges; this file pins the
# torch/torchvision pair known to install and import together on this kind of machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PIN := torch==2.9.1 torchvision==0.24.1
else
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
endif
STAMP := $(VENV)/.installed

.PHONY: demo demo-mask test test-fast zoo benchmark gpu-check clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev,export,openvino]" $(TORCH_PIN)
	touch $(STAMP)

# The main job: train Faster R-CNN R18-FPN on the embedded synthetic shapes (CPU, ~10 min), then evaluate:
# prints the COCO AP table, writes outputs/demo/{metrics.json,checkpoints/,predictions/,ap_vs_time.png}.
demo: $(STAMP)
	$(PY) tools/train_det.py --config configs/demo_cpu.yaml

# The Mask R-CNN variant of the demo (boxes and masks, ~20 min on 2 cores).
demo-mask: $(STAMP)
	$(PY) tools/train_det.py --config configs/demo_mask_cpu.yaml

# Every test, the slow end-to-end ones included (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q -ra

# The quick contract tests only.
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

zoo: $(STAMP)
	$(PY) tools/model_zoo.py

# Ours vs torchvision (speed, agreement, peak memory) and the COCO evaluator backends: rewrites this
# machine class's section of docs/benchmarks.md. Runs the top-level benchmarks/ package from the repo root.
benchmark: $(STAMP)
	$(PY) -m benchmarks

# On one CUDA GPU (< 8 min): training img/s of Faster and Mask R-CNN R50-FPN (bf16, channels_last, batch 8) and
# inference img/s (fp16/bf16), peak memory, on synthetic 800x1333 images; rewrites "## GPU check" of
# docs/benchmarks.md. `$(PY) -m benchmarks.gpu_check --dry-run` checks the script on a CPU (the test suite does).
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

clean-venv:
	rm -rf $(VENV)
