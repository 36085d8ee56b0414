"""The shared test helpers check what they claim: a helper that cannot fail would hide a broken feature."""
from __future__ import annotations

import pytest

from helpers import assert_nested_close


def test_nested_close_takes_float_rounding_and_refuses_other_differences():
    a = {"top1": 66.6667, "preds": [{"path": "a.png", "label": 1, "scores": [0.633326, 0.1]}]}
    assert_nested_close(a, {"top1": 66.66671, "preds": [{"path": "a.png", "label": 1, "scores": [0.633325, 0.1]}]})
    for other in ({"top1": 66.6667, "preds": [{"path": "a.png", "label": 2, "scores": [0.633326, 0.1]}]},
                  {"top1": 66.6667, "preds": [{"path": "b.png", "label": 1, "scores": [0.633326, 0.1]}]},
                  {"top1": 66.6667, "preds": [{"path": "a.png", "label": 1, "scores": [0.64, 0.1]}]},
                  {"top1": 66.6667, "preds": []},
                  {"top1": 66.6667}):
        with pytest.raises(AssertionError):
            assert_nested_close(a, other)
