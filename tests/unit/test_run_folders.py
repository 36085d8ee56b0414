"""experiments.runs: the readers of a run folder (config.yaml, metrics.json) that --compare and --sweep share. A
damaged run folder is one RunFolderError naming the file; --compare skips it with one warning line."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
import yaml

from experiments.runs import RunFolderError, compare_runs, read_run, readable_run

CONFIG = {"arch": "resnet18", "lr": 0.1, "epochs": 2, "tag": "x"}


def row(epoch: int, val=50.0) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "val_top1": val, "img_per_s": 100.0, "time": 3.0}


def run_folder(folder: Path, config=CONFIG, metrics=None) -> Path:
    """A run folder: ``config``/``metrics`` as YAML/JSON, or raw bytes/text written as they are."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_bytes(config if isinstance(config, bytes) else yaml.safe_dump(config).encode())
    if metrics is not None:
        (folder / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return folder


def finished(folder: Path) -> Path:
    return run_folder(folder, metrics={"history": [row(0, 50.0), row(1, 60.0)], "test": {"test_top1": 55.0}})


def self_linked_config(folder: Path) -> Path:
    folder.mkdir(parents=True)
    os.symlink("config.yaml", folder / "config.yaml")
    return folder


DAMAGED = {
    "nul-byte-config": (lambda d: run_folder(d, b"arch: resnet18\x00\nlr: 0.1\n"), "config.yaml",
                        r"position 14: unacceptable character #x0000"),
    "list-config": (lambda d: run_folder(d, [1, 2]), "config.yaml", r"it holds a list, not a mapping of flags"),
    "not-utf8-config": (lambda d: run_folder(d, b"arch: \xff\xfe\n"), "config.yaml", r"can't decode byte 0xff"),
    "self-linked-config": (self_linked_config, "config.yaml",
                           r"it cannot be read \(Too many levels of symbolic links\)"),
    "list-metrics": (lambda d: run_folder(d, metrics=[1, 2]), "metrics.json",
                     r"it holds a list, not a mapping with the run's history"),
    "invalid-json-metrics": (lambda d: run_folder(d, metrics='{"history": ['), "metrics.json",
                             r"it is not valid JSON \("),
    "history-not-a-list": (lambda d: run_folder(d, metrics={"history": {"a": 1}}), "metrics.json",
                           r"its history is a dict, not a list of rows"),
    "row-without-epoch": (lambda d: run_folder(d, metrics={"history": [row(0), {"val_top1": 50.0}]}), "metrics.json",
                          r"history row 2 has no epoch$"),
    "string-epoch": (lambda d: run_folder(d, metrics={"history": [{**row(0), "epoch": "1"}]}), "metrics.json",
                     r"history row 1: epoch is '1', not an epoch number"),
    "string-val-top1": (lambda d: run_folder(d, metrics={"history": [row(0, "n/a"), row(1, 60.0)]}), "metrics.json",
                        r"history row 1: val_top1 is 'n/a', not a number"),
    "string-test-top1": (lambda d: run_folder(d, metrics={"history": [row(0)], "test": {"test_top1": "high"}}),
                         "metrics.json", r"the test result: test_top1 is 'high', not a number"),
    "list-test": (lambda d: run_folder(d, metrics={"history": [row(0)], "test": [99.0]}), "metrics.json",
                  r"its test result is a list, not a mapping"),
}


@pytest.mark.parametrize("name", DAMAGED)
def test_a_damaged_run_folder_is_one_error_naming_the_file(tmp_path, name):
    make, file, problem = DAMAGED[name]
    run = make(tmp_path / "run")
    with pytest.raises(RunFolderError) as e:
        read_run(run)
    assert e.value.path == run / file and re.search(problem, e.value.problem), e.value
    assert str(e.value).startswith(f"{run / file}: ") and "\n" not in str(e.value)


def test_well_formed_runs_still_read(tmp_path):
    """The checks refuse only what the comparison cannot use: nulls, ints and extra keys are fine."""
    run = run_folder(tmp_path / "run", metrics={"history": [{**row(0), "val_top1": None, "extra": "x"},
                                                            {**row(1), "val_top1": 70, "time": None}],
                                                "test": {"test_top1": 65, "test_top5": None, "note": "x"}})
    record = read_run(run)
    assert record.status == "finished" and record.metrics["best_val_top1"] == 70 and record.metrics["best_epoch"] == 2
    assert read_run(run_folder(tmp_path / "empty", b"")).config == {}
    assert compare_runs([run], out_dir=tmp_path / "table")["runs"] == 1  # the plot draws a null as a gap


def test_compare_skips_a_damaged_run_with_one_warning(tmp_path, caplog):
    good = finished(tmp_path / "runs/good")
    run_folder(tmp_path / "runs/bad", metrics={"history": [row(0, "n/a")]})
    with caplog.at_level(logging.WARNING, logger="experiments.runs"):
        result = compare_runs([tmp_path / "runs"])
    assert result["runs"] == 1 and result["best"] == str(good.resolve())
    assert "| good " in result["table"] and "| bad " not in result["table"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bad/metrics.json: history row 1: val_top1 is 'n/a', not a number" in warnings[0]


def test_compare_with_no_readable_run_is_one_error(tmp_path):
    run_folder(tmp_path / "one/bad", [1, 2])
    with pytest.raises(ValueError, match=r"^--compare: .*one/bad/config\.yaml: it holds a list, not a mapping of "
                                         r"flags; fix or delete that file$"):
        compare_runs([tmp_path / "one"])
    self_linked_config(tmp_path / "two/a")
    run_folder(tmp_path / "two/b", metrics=[1])
    with pytest.raises(ValueError, match=r"^--compare: none of the 2 run directories found can be read"):
        compare_runs([tmp_path / "two"])


def finished_run(path):
    record = readable_run(path)
    return record is not None and record.status == "finished"


def test_a_sweep_reuses_only_a_readable_finished_run(tmp_path, caplog):
    assert finished_run(finished(tmp_path / "done"))
    assert not finished_run(run_folder(tmp_path / "going", metrics={"history": [row(0)]}))
    assert not finished_run(tmp_path / "never_started")
    damaged = run_folder(tmp_path / "damaged", b"arch: r\x00", metrics={"history": [row(0)], "test": {"test_top1": 1}})
    with caplog.at_level(logging.WARNING, logger="experiments.runs"):
        assert not finished_run(damaged)
        assert not finished_run(self_linked_config(tmp_path / "looped"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "damaged/config.yaml: position 7: unacceptable character #x0000" in warnings[0]
    assert "looped/config.yaml: it cannot be read (Too many levels of symbolic links)" in warnings[1]
