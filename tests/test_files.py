"""Reports and engines are written whole or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from convnext_export.files import replacing, write_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_success_replaces_creates_parents_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "out" / "nested" / "plot.png"
    with replacing(target) as temporary:
        assert temporary.suffix == ".png" and temporary.parent == target.parent
        temporary.write_bytes(b"png")
    write_atomically(tmp_path / "out" / "a.md", "text")
    assert target.read_bytes() == b"png" and (tmp_path / "out" / "a.md").read_text() == "text"
    assert sorted(p.name for p in target.parent.iterdir()) == ["plot.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
