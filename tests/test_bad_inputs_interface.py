"""Bad input at the interface: unknown timm names, hf-hub: ids without network, not cached, malformed, or
without the hub extra. Each case runs the installed console script (tests/bad_input.py)."""

from __future__ import annotations

import pytest

from bad_input import BadInput, run_bad_input

HUB_ID = "hf-hub:timm/convnext_tiny.fb_in1k"
LOCAL_FILE = "--weights PATH"

CASES = [
    BadInput("unknown-timm-name", "convnext-export", ("--size", "convnext_tinny", "--out", "{work}/out"), 2,
             ("unknown ConvNeXt size 'convnext_tinny'", "close matches: convnext_tiny", "valid sizes: atto"),
             outputs=("out",)),
    BadInput("unknown-size", "convnext-export", ("--size", "tinyy"), 2, ("close matches: tiny",)),
    BadInput("unknown-pretrained-tag", "convnext-export", ("--size", "convnext_tiny.fb_in1kk"), 2,
             ("unknown pretrained tag 'fb_in1kk' for convnext_tiny", "close matches: fb_in1k", "its tags:")),
    BadInput("headless-tag", "convnext-export", ("--size", "convnext_small.dinov3_lvd1689m"), 2,
             ("headless feature extractor", "convnext_small.fb_in1k")),
    BadInput("bench-unknown-timm-name", "convnext-bench", ("--size", "convnext_atoo", "--work", "{work}/w"), 2,
             ("close matches: convnext_atto",), outputs=("w",)),
    BadInput("hub-malformed-id", "convnext-export", ("--weights", "hf-hub:convnext_tiny.fb_in1k"), 2,
             ("hf-hub:convnext_tiny.fb_in1k", "OWNER/NAME", "hf-hub:timm/convnext_tiny.fb_in1k")),
    BadInput("hub-invalid-repo-id", "convnext-export", ("--weights", "hf-hub:timm/convnext..tiny"), 2,
             ("not a valid Hugging Face Hub repository id", "OWNER/NAME")),
    BadInput("hub-offline-not-cached", "convnext-export", ("--weights", HUB_ID, "--out", "{work}/out"), 2,
             (HUB_ID, "unreachable", "not in the local cache", LOCAL_FILE), outputs=("out",), process=True),
    BadInput("bench-hub-offline-not-cached", "convnext-bench", ("--weights", HUB_ID, "--work", "{work}/w"), 2,
             (HUB_ID, "unreachable", "not in the local cache", LOCAL_FILE), outputs=("w",), process=True),
    BadInput("hub-revision-offline", "convnext-export", ("--weights", f"{HUB_ID}@v2",), 2,
             (f"{HUB_ID}@v2", "unreachable", LOCAL_FILE), process=True),
]

NO_NETWORK = BadInput("hub-no-network", "convnext-export", ("--weights", HUB_ID, "--out", "{work}/out"), 2,
                      (HUB_ID, "unreachable", "not in the local cache", LOCAL_FILE), outputs=("out",), process=True)

NOT_INSTALLED = BadInput("hub-not-installed", "convnext-export", ("--weights", HUB_ID), 2,
                         (f"{HUB_ID} needs huggingface_hub", "pip install 'convnext-export[hub]'", LOCAL_FILE), process=True)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """The command's hub cache is an empty folder of the test's, never the user's."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return cache


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, monkeypatch, empty_hub_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_bad_input(case, tmp_path)


@pytest.mark.slow  # ~30 s of the hub client's own retries
def test_hub_without_network(tmp_path, monkeypatch, empty_hub_cache):
    """Online, but the hub cannot be reached (a closed local port stands for no network): ~30 s of the hub's
    retries for the first file, then the cache alone."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    run_bad_input(NO_NETWORK, tmp_path)


def test_hub_without_the_extra(tmp_path, monkeypatch, empty_hub_cache):
    """huggingface_hub absent: a folder first on PYTHONPATH makes its import fail as an uninstalled one does."""
    blocker = tmp_path / "no-hub"
    (blocker / "huggingface_hub").mkdir(parents=True)
    (blocker / "huggingface_hub" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'huggingface_hub'\", name='huggingface_hub')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    run_bad_input(NOT_INSTALLED, tmp_path)
