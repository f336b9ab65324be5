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

clean:
	rm -rf $(VENV) artifacts bench-out
