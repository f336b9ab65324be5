"""--image-size is checked against the machine's memory before an export starts."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from convnext_export.cli import bench_command, export_command
from convnext_export.config import get_config
from convnext_export.errors import InputError
from convnext_export.memory import biggest_activation, check_export_memory, export_memory_bytes
from convnext_export.model import build_model

GB = 10**9


@pytest.mark.parametrize("size, image_size", [("atto", 64), ("atto", 96), ("tiny", 64)])
def test_biggest_activation_is_the_eager_models_largest_tensor(size, image_size):
    model = build_model(get_config(size)).eval()
    largest = [3 * image_size * image_size]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output[0].numel())

    for module in model.modules():
        module.register_forward_hook(record)
    with torch.inference_mode():
        model(torch.zeros(1, 3, image_size, image_size))
    assert biggest_activation(get_config(size), image_size) == largest[0]


def test_an_export_that_cannot_fit_is_refused_with_what_would():
    tiny = get_config("tiny")
    with pytest.raises(InputError) as refused:
        check_export_memory(tiny, 5000, "fp32", None, memory=(16 * GB, 12 * GB))
    message = str(refused.value)
    assert message.startswith("--image-size 5000: exporting ConvNeXt-tiny would need about 39.5 GB of memory")
    assert "more than this machine's 16.0 GB" in message and "a smaller --size than tiny" in message
    largest = int(message.split("use --image-size ")[1].split()[0])
    assert export_memory_bytes(tiny, largest, "fp32", None) <= 16 * GB < export_memory_bytes(tiny, largest + 32,
                                                                                              "fp32", None)
    assert "--batch 1 (about 10.7 GB)" in message  # 1 image instead of 4 fits in 16 GB
    with pytest.raises(InputError, match="the 256 calibration images take 76.8 GB.*a smaller --calib-size"):
        check_export_memory(tiny, 5000, "int8", None, calib_size=256, memory=(16 * GB, 12 * GB))


def test_large_or_tight_exports_warn_and_small_ones_are_quiet():
    atto, logged = get_config("atto"), []
    check_export_memory(atto, 224, "fp32", None, log=logged.append, memory=(16 * GB, 12 * GB))
    assert logged == []
    check_export_memory(atto, 2048, "fp32", None, log=logged.append, memory=(16 * GB, 12 * GB))
    assert logged == ["warning: --image-size 2048 needs about 3.8 GB of memory (its biggest activation is 168 MB per "
                      "image); it will be slow (84x the compute of 224 px)"]
    check_export_memory(atto, 512, "fp32", None, log=logged.append, memory=(16 * GB, 0.5 * GB))
    assert "more than the 500 MB free now" in logged[-1]


@pytest.mark.parametrize("command", [export_command, bench_command])
def test_an_image_size_no_machine_holds_is_a_usage_error_before_any_work(command, tmp_path):
    args = ["--size", "atto", "--image-size", "100000"]
    result = CliRunner().invoke(command, args + (["--out", str(tmp_path / "o")] if command is export_command
                                                 else ["--work", str(tmp_path / "w"), "--no-cold-start"]))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "--image-size 100000: exporting ConvNeXt-atto would need about" in message and "or less" in message
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()
