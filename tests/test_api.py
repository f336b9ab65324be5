"""The Python API returns what the CLI prints and writes for the same arguments, with the CLI's defaults."""

from __future__ import annotations

import inspect
import json

import click
import pytest
from click.testing import CliRunner

import convnext_export
from convnext_export.cli import bench_command, export_command
from convnext_export.errors import InputError

# Fields that differ between two runs of the same export by nature: where it was written, when, how long it took.
RUN_FIELDS = ("artifact", "model", "seconds")
MANIFEST_RUN_FIELDS = ("created", "export_seconds")


def _same_export(summary: dict) -> dict:
    manifest = {k: v for k, v in summary["manifest"].items() if k not in MANIFEST_RUN_FIELDS}
    return {**{k: v for k, v in summary.items() if k not in RUN_FIELDS}, "manifest": manifest}


def test_export_returns_what_the_cli_writes(tmp_path):
    cli_json = tmp_path / "cli.json"
    result = CliRunner().invoke(export_command, ["--size", "convnext_atto", "--image-size", "32", "--crop-pct", "1.0",
                                                 "--out", str(tmp_path / "cli"), "--json", str(cli_json), "--quiet"])
    assert result.exit_code == 0, result.output
    api = convnext_export.export_model(size="convnext_atto", image_size=32, crop_pct=1.0, out=tmp_path / "api")
    written = json.loads(cli_json.read_text())
    assert _same_export(api.to_dict()) == _same_export(written)
    assert api.artifact.model_sha256 == written["manifest"]["model_sha256"]  # the same ONNX bytes
    assert written["manifest"]["config"]["name"] == "atto" and written["manifest"]["preprocessing"]["image_size"] == 32


@pytest.mark.parametrize("options, cli_args", [
    ({"fp16": True, "int8": True}, ["--fp16", "--int8"]),
    ({"calib_size": 64}, ["--calib-size", "64"]),
    ({"workspace": "1GiB"}, ["--workspace", "1GiB"]),
    ({"size": "convnext_tinny"}, ["--size", "convnext_tinny"]),
])
def test_export_refuses_what_the_cli_refuses_with_its_message(tmp_path, options, cli_args):
    cli = CliRunner().invoke(export_command, [*cli_args, "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 2
    with pytest.raises(InputError) as error:
        convnext_export.export_model(**options, out=tmp_path / "api")
    assert str(error.value) in cli.output.replace("\n", " ") or str(error.value) in cli.output
    assert not (tmp_path / "api").exists()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "atto"
    convnext_export.export_model(size="atto", image_size=32, out=out)
    return out


def test_bench_returns_what_the_cli_writes(artifact, tmp_path):
    options = {"backends": "torch,onnxruntime", "iters": 2, "warmup": 1, "block": 1, "threads": 1, "limit": 4}
    cli_json = tmp_path / "cli.json"
    result = CliRunner().invoke(bench_command, [str(artifact), "--backends", options["backends"], "--iters", "2",
                                                "--warmup", "1", "--block", "1", "--threads", "1", "--limit", "4",
                                                "--no-cold-start", "--json", str(cli_json), "--quiet"])
    assert result.exit_code == 0, result.output
    written = json.loads(cli_json.read_text())
    report = convnext_export.benchmark([artifact], cold_start=False, **options)
    assert report["schema"] == written["schema"] and set(report) == set(written)
    assert [row["id"] for row in report["rows"]] == [row["id"] for row in written["rows"]]
    for ours, theirs in zip(report["rows"], written["rows"]):  # timings differ run to run; what was computed doesn't
        assert ours["drift"] == theirs["drift"] and ours["batch"] == theirs["batch"]
        assert ours["runs"] == theirs["runs"] and ours["accuracy"] == theirs["accuracy"]
    assert report["settings"] == written["settings"] and report["artifacts"] == written["artifacts"]


def _api_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _cli_defaults(command: click.Command) -> dict:
    """The values the command's function receives when no option is given."""
    return command.make_context(command.name, [], resilient_parsing=True).params


def test_api_defaults_are_the_clis():
    export_defaults, cli = _api_defaults(convnext_export.export_request), _cli_defaults(export_command)
    assert cli.pop("no_fuse") is False and export_defaults["fuse"] is True
    for name in ("json_path", "quiet"):  # output options: the API returns the result instead
        cli.pop(name)
    assert {name: export_defaults[name] for name in cli} == {
        name: tuple(value) if isinstance(value, tuple) else value for name, value in cli.items()}
    bench_defaults, cli = _api_defaults(convnext_export.benchmark), _cli_defaults(bench_command)
    for name in ("artifact_dirs", "json_path", "markdown_path", "plot_path", "quiet"):
        cli.pop(name)
    from convnext_export.backends import default_backend_names

    # the CLI's default is computed (the backends it lists); the API's None stands for the same list
    assert cli.pop("backends") == tuple(default_backend_names()) and bench_defaults["backends"] is None
    assert {name: bench_defaults[name] for name in cli} == cli
