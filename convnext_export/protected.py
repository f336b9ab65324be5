"""Directories an export must never replace: its own inputs, the working directory, a repository, home.

``--out --force`` removes what ``--out`` holds, so an ``--out`` equal to or above an input (the
checkpoint, the calibration images, a cache) would delete it, and one inside an input folder would
replace part of it. Paths are compared resolved (symlinks followed), before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .artifact import MANIFEST
from .errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve(strict=False)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def git_work_trees(starts: Iterable[Path]) -> list[Path]:
    """The top of each git work tree (a folder holding ``.git``) that one of ``starts`` lies in."""
    tops = []
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / ".git").exists():
                tops.append(folder)
                break
    return list(dict.fromkeys(tops))


def check_out_spares(out: Path, inputs: Mapping[str, Path | None]) -> None:
    """Refuse (exit 2) an ``--out`` that is, contains or lies inside an input (``inputs``: option -> path), or is
    or contains the working directory, a git work tree it or the package lies in, the package, or home."""
    target = _resolved(out)
    for option, path in inputs.items():
        if path is None:
            continue
        given = _resolved(path)
        if _within(given, target) or (given.is_dir() and _within(target, given)):
            where = ("is" if given == target else "contains" if _within(given, target) else "lies inside")
            raise InputError(f"--out {out} {where} the {option} input {path}: the export would replace it; "
                             f"choose an --out directory apart from the inputs (e.g. artifacts/NAME)")
    cwd = _resolved(Path.cwd())
    trees = git_work_trees((cwd, PACKAGE_DIR, target))
    places = {"the current directory": cwd, "the convnext_export package": PACKAGE_DIR,
              **{f"the git work tree {tree}": tree for tree in trees}, "your home directory": _resolved(Path.home())}
    for name, place in places.items():
        if _within(place, target):
            where = "is" if place == target else "contains"
            raise InputError(f"--out {out} {where} {name} ({place}): --force would delete it; give a new or an "
                             f"artifact's own directory, e.g. --out artifacts/NAME")
    tree = next((tree for tree in trees if _within(target, tree)), None)
    if tree is not None and target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise InputError(f"--out {out} lies in the git work tree {tree} and holds files but no {MANIFEST}: it is "
                         f"not an artifact, and --force would delete what it holds; give a new directory or an "
                         f"artifact's own, e.g. --out artifacts/NAME")
