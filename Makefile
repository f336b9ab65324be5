# One virtualenv for everything. torch is installed first, pinned to the builds that lie on this
# project's machines' disk (2.14.1 + torchvision 0.29.1, which timm needs for the peer tests),
# so no install ever pulls a multi-GB build from the registry by accident.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
ARTIFACT := artifacts/convnext_tiny-int8
# The real images live beside the repository (never copied into it); make run DATA=DIR to point elsewhere.
DATA ?= ../shared/data
CIFAR10 := $(DATA)/cifar10
HAVE_CIFAR10 := $(and $(wildcard $(CIFAR10)/train),$(wildcard $(CIFAR10)/test))
REFERENCE := benchmarks/reference/convnext_atto_cifar10.pth
REFERENCE_ARTIFACT := artifacts/convnext_atto_cifar10-int8

.PHONY: setup run test test-all gate clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]' $(TORCH_PINS)
	touch $@

setup: $(BIN)/.installed

# The main job: export ConvNeXt-T as calibrated INT8 and benchmark it against eager PyTorch. Its weights are
# random and its calibration synthetic, so its drift and agreement are a plumbing check, not accuracy. Then the
# committed CIFAR-10 reference (ConvNeXt-atto, 64 px), calibrated on real training images and benched on the 8,000
# real test images: eager and INT8 top-1, their agreement and the speedup. Its bench runs 1 thread, like the gate:
# beside other work on the two cores, eager PyTorch on 2 threads measured 5-10x slower than on 1 and the speedup
# with it. Without the real images the reference is skipped, with a message.
run: setup
	$(BIN)/convnext-export --size tiny --int8 --out $(ARTIFACT) --force
	$(BIN)/convnext-bench $(ARTIFACT) --batch 1 --json bench-out/tiny-int8.json --markdown bench-out/tiny-int8.md --plot bench-out/tiny-int8.png
ifneq ($(HAVE_CIFAR10),)
	$(BIN)/convnext-export --weights $(REFERENCE) --int8 --calib-data $(CIFAR10)/train --out $(REFERENCE_ARTIFACT) --force
	$(BIN)/convnext-bench $(REFERENCE_ARTIFACT) --data $(CIFAR10)/test --batch 1 --threads 1 \
		--json bench-out/reference-int8.json --markdown bench-out/reference-int8.md --plot bench-out/reference-int8.png
else
	@echo "make run: no real images at $(CIFAR10)/train and $(CIFAR10)/test: skipped the CIFAR-10 reference" \
		"(INT8 accuracy on real images); the ConvNeXt-T figures above are a plumbing check, not accuracy"
endif

# The suite without the tests marked slow (heavy sizes' smoke tests, the trained references' full INT8 checks,
# qemu's whole-model run): the CI budget is 15 minutes on 2 cores. make test-all runs every test.
test: setup
	$(BIN)/pytest -q -m "not slow"

test-all: setup
	$(BIN)/pytest -q

# CI's latency gate: ConvNeXt-atto FP32 and INT8 in ONNX Runtime vs eager, compared as speedups (noise-robust)
# with the committed baselines, one per kind of CPU (convnext-bench uses the one recorded on this machine's
# kernel family); 1 thread so that the two cores do not contend. Checked over repeated runs, also beside other
# work: speedups moved by up to 10% (FP32 -9.9% in a fresh-clone run), so 20% beyond the measured spread
# (28-36% allowed in those runs) does not flake. Exit 3 ("could not gate": contended rows, or no baseline of
# this kind of CPU) is printed with its reason and does not fail the target: it says nothing about the change.
BASELINES := $(foreach file,$(sort $(wildcard benchmarks/baseline-atto*.json)),--baseline $(file))
gate: setup
	@status=0; $(BIN)/convnext-bench --size atto --image-size 64 --batch 1 --threads 1 --backends torch,onnxruntime \
		--iters 200 --block 5 --warmup 10 --no-cold-start \
		$(BASELINES) --max-regression 20% --json bench-out/gate.json || status=$$?; \
	if [ $$status -eq 3 ]; then echo "make gate: could not gate (exit 3, the reason is above): no verdict on this change"; \
	else exit $$status; fi

clean:
	rm -rf $(VENV) artifacts bench-out
