"""The output-hash matrix is unchanged: every recorded output, message and exit code.

The matrix (``tests/hashmatrix.py``) runs the real command over every corpus image and the
sample images under ten option sets; see that script for what is recorded and when to record
it again (a change meant to change outputs).
"""

from __future__ import annotations

import json

import pytest

from tests import hashmatrix
from tests.conftest import CORPUS


def test_the_matrix_is_unchanged() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus folder {CORPUS} is absent")
    expected = json.loads(hashmatrix.DATA.read_text())
    assert set(expected) == set(hashmatrix.OPTION_SETS), "re-record after changing the sets"
    found = hashmatrix.compute()
    assert hashmatrix.differences(expected, found) == []


def test_differences_name_what_changed() -> None:
    """The comparison reports a changed pixel, a changed byte, a message and a lost file."""
    base = {"s": {"exit": 0, "stdout": "", "stderr": "a", "files": {
        "x.png": ["b1", "p1"], "y.png": ["b2", "p2"], "z.png": ["b3", "p3"]}}}
    moved = {"s": {"exit": 1, "stdout": "", "stderr": "b", "files": {
        "x.png": ["b1*", "p1"], "y.png": ["b2*", "p2*"]}}}
    lines = hashmatrix.differences(base, moved)
    assert lines[0].startswith("s: exit differs")
    assert lines[1].startswith("s: stderr differs")
    assert lines[2:] == ["s: x.png: bytes differ", "s: y.png: bytes and pixels differ",
                         "s: z.png not written"]
    assert hashmatrix.differences(base, base) == []
