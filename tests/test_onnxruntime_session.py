"""ONNX Runtime sessions do not spin by default; the other policies set what they say (backends/onnxruntime.py)."""

from __future__ import annotations

import pytest

from convnext_export.backends.onnxruntime import SPINNING, session_options


def test_default_sessions_do_not_spin():
    assert SPINNING == "off"
    options = session_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_other_spinning_policies():
    within = session_options(2, spinning="within-run")
    assert within.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert within.get_session_config_entry("session.force_spinning_stop") == "1"
    on = session_options(2, spinning="on")
    assert on.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        on.get_session_config_entry("session.force_spinning_stop")  # threads keep spinning after a run
    with pytest.raises(ValueError, match="within-run, off, on"):
        session_options(2, spinning="sometimes")
