"""drift_meaning: the one decision every printer takes its words from."""

import pytest

from convnext_export.drift import PLUMBING, REAL_IMAGES, drift_meaning


@pytest.mark.parametrize("weights, inputs, words", [
    ("random", "synthetic", "random, untrained weights on 32 synthetic noise images"),
    ("random", "real", "random, untrained weights on 32 real images"),
    ("checkpoint", "synthetic", "checkpoint weights on 32 synthetic noise images"),
])
def test_random_weights_or_noise_are_a_plumbing_check_not_accuracy(weights, inputs, words):
    meaning = drift_meaning(weights, inputs, 32)
    assert meaning["kind"] == PLUMBING
    assert meaning["text"].startswith("plumbing check, not an accuracy figure") and words in meaning["text"]
    assert (meaning["weights"], meaning["inputs"], meaning["images"]) == (weights, inputs, 32)


def test_a_checkpoint_on_real_images_is_a_measurement():
    meaning = drift_meaning("checkpoint", "real", 8000)
    assert meaning["kind"] == REAL_IMAGES
    assert meaning["text"] == "measured on 8000 real images with checkpoint weights"
    assert "plumbing" not in meaning["text"]


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="random|checkpoint"):
        drift_meaning("pretrained", "real", 1)
    with pytest.raises(ValueError, match="synthetic|real"):
        drift_meaning("random", "dataset", 1)
