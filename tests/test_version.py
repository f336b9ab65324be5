"""--version on both commands: the package's version and the libraries' that decide what an artifact computes."""

import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner

import convnext_export
from convnext_export.cli import bench_command, export_command


@pytest.mark.parametrize("command, name", [(export_command, "convnext-export"), (bench_command, "convnext-bench")])
def test_version_names_the_package_and_key_libraries(command, name):
    result = CliRunner().invoke(command, ["--version"], prog_name=name)
    assert result.exit_code == 0, result.output
    first, libraries, optional = result.output.splitlines()
    assert first == f"{name} {convnext_export.__version__}"
    for library, version in (("torch", torch.__version__), ("onnx", onnx.__version__),
                             ("onnxruntime", onnxruntime.__version__)):
        assert f"{library} {version}" in libraries
    assert optional.startswith("optional: huggingface_hub ")
