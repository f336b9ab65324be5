# One virtualenv for everything. torch is installed first, pinned to the builds that lie on this
# project's machines' disk (2.14.1 + torchvision 0.29.1, which timm needs for the peer tests),
# so no install ever pulls a multi-GB build from the registry by accident.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
ARTIFACT := artifacts/convnext_tiny-int8

.PHONY: setup run test gate clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]' $(TORCH_PINS)
	touch $@

setup: $(BIN)/.installed

# The main job: export ConvNeXt-T as calibrated INT8 and benchmark it against eager PyTorch.
run: setup
	$(BIN)/convnext-export --size tiny --int8 --out $(ARTIFACT) --force
	$(BIN)/convnext-bench $(ARTIFACT) --batch 1 --json bench-out/tiny-int8.json --markdown bench-out/tiny-int8.md --plot bench-out/tiny-int8.png

test: setup
	$(BIN)/pytest -q

# CI's latency gate: ConvNeXt-atto FP32 and INT8 in ONNX Runtime vs eager, compared as speedups (noise-robust)
# with the committed baseline; 1 thread so that the two cores do not contend. Checked over repeated runs,
# also beside other work: speedups moved by up to 10% (FP32 -9.9% in a fresh-clone run), so 20% beyond the
# measured spread (28-36% allowed in those runs) does not flake.
gate: setup
	$(BIN)/convnext-bench --size atto --image-size 64 --batch 1 --threads 1 --backends torch,onnxruntime \
		--iters 200 --block 5 --warmup 10 --no-cold-start \
		--baseline benchmarks/baseline-atto.json --max-regression 20% --json bench-out/gate.json

clean:
	rm -rf $(VENV) artifacts bench-out
