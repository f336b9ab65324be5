"""The fused FP32 graph of every registered size: fusions applied and ONNX op census, as a Markdown table.

Each size is built with random weights, fused and exported at a tiny resolution (the census does not
depend on it), the way `convnext-export --size NAME` does it:

    python benchmarks/census.py --family v2 --markdown benchmarks/results/census-v2.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from convnext_export.config import get_config, size_names
from convnext_export.export import check_single_file_onnx, export_onnx
from convnext_export.fusion import fuse_model
from convnext_export.errors import InputError
from convnext_export.model import build_model


def census_row(size: str, image_size: int) -> dict:
    model = build_model(get_config(size))
    fused, fusions = fuse_model(model)
    try:
        check_single_file_onnx(fused)
    except InputError as error:
        return {"size": size, "fusions": fusions, "ops": None, "note": str(error).split(";")[0]}
    with tempfile.TemporaryDirectory() as work:
        graph = export_onnx(fused, Path(work) / "model.onnx", image_size)
    return {"size": size, "fusions": fusions, "ops": graph.op_census}


def markdown(rows: list[dict]) -> str:
    lines = ["| size | fusions | ONNX ops (fused FP32) |", "|---|---|---|"]
    for row in rows:
        fusions = ", ".join(f"{name} {count}" for name, count in row["fusions"].items())
        ops = ", ".join(f"{op} {n}" for op, n in row["ops"].items()) if row["ops"] else row["note"]
        lines.append(f"| {row['size']} | {fusions} | {ops} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("v1", "v2", "all"), default="all")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    sizes = [s for s in size_names() if args.family == "all" or get_config(s).family == args.family]
    rows = []
    for size in sizes:
        rows.append(census_row(size, args.image_size))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    text = markdown(rows)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
