"""The opt-in torch-compile backend computes what the eager model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convnext_export.backends import backend_spec
from convnext_export.config import get_config
from convnext_export.model import build_model

from helpers import make_trained_like, relative_drift


@pytest.mark.slow
def test_torch_compile_backend_matches_eager():
    model = make_trained_like(build_model(get_config("atto"), seed=3), seed=3)
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    backend = backend_spec("torch-compile").open(model=model, threads=2)
    assert backend.describe()["compile"] == "inductor"
    out = backend.run(images)
    drift = relative_drift(out, expected)
    assert drift <= 1e-4, drift
    # a second batch of the same shape reuses the compiled graph and stays exact
    again = backend.run(images[::-1].copy())
    assert relative_drift(again, expected[::-1]) <= 1e-4
