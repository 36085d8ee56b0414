"""The unit tier's guard (tier_guard.py): what counts as end-to-end training, and that each way a test
could train end to end is caught while refused runs and other processes pass."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import yaml

import config
from helpers import ROOT, run_main, tiny_train_args
from unit.tier_guard import EndToEndTraining, TrainingGuard, training_command


@pytest.mark.parametrize("argv, what", [
    ([sys.executable, str(ROOT / "main.py"), "--train", "--data", "d"], "main.py --train"),
    (["python", "main.py", "--config", "c.yaml", "--sweep", "s.yaml"], "main.py --sweep"),
    ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "main.py"], "torchrun"),
    (["/usr/bin/torchrun", "--standalone", "main.py", "--evaluation"], "torchrun"),
    (["bash", str(ROOT / "z_task_shell/1_train_baseline.sh")], "the recipe 1_train_baseline.sh"),
    ("cd /x && python main.py --train --epochs 1", "main.py --train"),  # shell=True: one string
    ([sys.executable, "main.py", "--evaluation", "--resume", "train.pth"], None),
    ([sys.executable, "main.py", "--predict", "--data", "data/train"], None),
    ([sys.executable, "benchmarks/gpu_check.py", "--quick"], None),
    (["bash", "other/run.sh"], None),
])
def test_training_command_names_what_trains(argv, what):
    assert training_command(argv) == what


def test_a_training_process_is_refused_before_it_starts_and_other_processes_run(tmp_path):
    with TrainingGuard() as guard:
        assert subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True).stdout == "ok\n"
        assert guard.report() is None
        with pytest.raises(EndToEndTraining, match="tests/unit: it started main.py --train; a test that trains end "
                                                    "to end belongs in tests/e2e"):
            subprocess.run([sys.executable, str(ROOT / "main.py"), "--train", "--output", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # never started
    assert guard.report() == ("tests/unit is for tests without end-to-end training, but it started main.py --train: "
                              "a test that trains end to end belongs in tests/e2e")


def test_a_training_mode_that_returns_in_process_is_reported_and_a_refused_one_is_not(tiny_data, tmp_path):
    with TrainingGuard() as guard:
        assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--arch", "resnet181")) == 1
    assert guard.report() is None
    # a sweep whose one variant has finished: main.py --sweep returns (after its --compare table)
    run = tmp_path / "out" / "s" / "simple_cnn" / "a"
    run.mkdir(parents=True)
    # the settings the sweep gives variant a (a finished run is reused only with the same settings)
    config.save_config(config.parse_config(["--train", "--arch", "simple_cnn", "--data", str(tiny_data["folder"]),
                                            "--output", str(tmp_path / "out" / "s"), "--tag", "a"]),
                       run / "config.yaml")
    (run / "metrics.json").write_text('{"history": [], "test": {"test_top1": 50.0}}')
    (run / "eval_test").mkdir()  # every output of the final step: the sweep reuses it rather than resuming it
    for name in ("eval_test/metrics.json", "eval_test/confusion_matrix.png"):
        (run / name).write_text("{}")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": {"arch": "simple_cnn", "data": str(tiny_data["folder"])},
                                     "variants": {"a": {}}}))
    with TrainingGuard() as guard:
        assert run_main(["--sweep", str(sweep), "--output", str(tmp_path / "out")]) == 0
    assert guard.violations == ["it ran main.py --sweep in its own process to the end"]


def test_a_test_over_the_cpu_budget_is_reported():
    with TrainingGuard(cpu_budget_s=0.1) as guard:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    assert re.fullmatch(r"tests/unit is for tests without end-to-end training, but it took 0\.[3-9] CPU seconds, "
                        r"over the unit tier's 0\.1: a test that trains end to end belongs in tests/e2e",
                        guard.report())
