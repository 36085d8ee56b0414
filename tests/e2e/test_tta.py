"""--tta in a run's final test (issue #30 item 3): the TTA number in metrics.json with the plain one beside it,
the plain one equal to --evaluation of best.pth; benchmarks/trust.py --quick is tested in test_benchmarks.py."""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from helpers import read_json, run_main, tiny_train_args


def test_final_test_with_tta_reports_the_plain_number_beside_it(tiny_data, tmp_path):
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "tta", "--epochs", "1",
                                    "--tta", "hflip")) == 0
    run = tmp_path / "resnet18" / "tta"
    test = read_json(run / "metrics.json")["test"]
    assert "test_top1_plain" in test
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_main(["--evaluation", "--resume", str(run / "checkpoints" / "best.pth"), "-j", "0",
                         "--no_progress"]) == 0
    assert json.loads(buf.getvalue())["top1"] == pytest.approx(test["test_top1_plain"])
    with contextlib.redirect_stdout(buf := io.StringIO()):
        assert run_main(["--evaluation", "--resume", str(run / "checkpoints" / "best.pth"), "-j", "0",
                         "--no_progress", "--tta", "hflip"]) == 0
    assert json.loads(buf.getvalue())["top1"] == pytest.approx(test["test_top1"])
