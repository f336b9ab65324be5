"""ONNX Runtime sessions spin within a run and stop as it returns (see backends/onnxruntime.py)."""

from __future__ import annotations

import pytest

from convnext_export.backends.onnxruntime import SPINNING, session_options


def test_default_sessions_spin_within_a_run_only():
    assert SPINNING == "within-run"
    options = session_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_other_spinning_policies():
    off = session_options(2, spinning="off")
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    on = session_options(2, spinning="on")
    assert on.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        on.get_session_config_entry("session.force_spinning_stop")  # threads keep spinning after a run
    with pytest.raises(ValueError, match="within-run, off, on"):
        session_options(2, spinning="sometimes")
