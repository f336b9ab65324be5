from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: heavy sizes or long runs")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "tensorrt: needs the tensorrt package and a GPU")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = _cuda_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; this machine has none"))
        if "tensorrt" in item.keywords and not (has_gpu and has_trt):
            item.add_marker(
                pytest.mark.skip(reason="needs TensorRT and a GPU: pip install 'convnext-export[tensorrt]' on a GPU machine")
            )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real image data (../shared/data); tests skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (see the README: ../shared/data beside the repo)")
    return SHARED_DATA
