"""Signal handling that a training run relies on: a held signal is delivered when its block ends."""
from __future__ import annotations

import os
import signal

import pytest

from utils.misc import HoldSignals, Interrupted, InterruptOnSignals


def test_a_signal_inside_a_held_block_waits_for_its_end_then_interrupts():
    """A real SIGTERM to this process inside HoldSignals: the block runs to its end (what it guards, e.g.
    TensorBoard's writer, is never cut mid-call), then the handler outside raises Interrupted."""
    done, before = [], signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGTERM received; rerun"):
        with InterruptOnSignals("rerun"):
            with HoldSignals():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("after the signal")
            done.append("after the block")  # never reached: the held signal is raised on leaving the block
    assert done == ["after the signal"] and signal.getsignal(signal.SIGTERM) is before


def test_a_held_block_without_a_signal_leaves_no_trace():
    before = signal.getsignal(signal.SIGTERM)
    with InterruptOnSignals():
        with HoldSignals() as held:
            pass
    assert held.held == [] and signal.getsignal(signal.SIGTERM) is before
