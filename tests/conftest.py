"""Shared fixtures: tiny real datasets (scikit-learn digits) in the four layouts, a finished tiny run, caches and
a sweep runner. The helpers they use live in helpers.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dataloader.layout_writers import write_csv_tables, write_txt_lists, write_zip_archives
from helpers import run_main, tiny_train_args, write_digit_folders, write_png_bomb
from unit.tier_guard import cpu_seconds


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """The same tiny digits dataset as class folders, txt lists, zip archives and csv tables (read-only: copy to
    change)."""
    base = tmp_path_factory.mktemp("tiny")
    folder = write_digit_folders(base / "folder")
    return {"folder": folder, "txt": write_txt_lists(folder, base / "txt"),
            "zip": write_zip_archives(folder, base / "zip"), "csv": write_csv_tables(folder, base / "csv")}


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A finished 1-epoch tiny training run (resnet18, tag v), shared by the end-to-end tests that only need
    a trained checkpoint: they read it and may add outputs of other modes beside it (visual/, ...)."""
    out = tmp_path_factory.mktemp("tiny_run")
    assert run_main(tiny_train_args(tiny_data["folder"], out, "--tag", "v", "--epochs", "1")) == 0
    return out / "resnet18" / "v"


@pytest.fixture(scope="session")
def mosaics(tmp_path_factory) -> Path:
    """A tiny multi-label csv set: digit mosaics with 1-3 labels each (``make_digits.py --multi_label``), 12 train,
    2 val and 3 test images (read-only: copy to change)."""
    from dataloader.digits import make_mosaic
    return make_mosaic(tmp_path_factory.mktemp("mosaics") / "data", {"train": 12, "val": 2, "test": 3})


@pytest.fixture
def data(tiny_data, tmp_path):
    """A writable copy of the tiny folder dataset (side files are written into DATA)."""
    return shutil.copytree(tiny_data["folder"], tmp_path / "data")


@pytest.fixture
def bomb_data(tiny_data, tmp_path):
    """A writable copy of the tiny folder dataset with a 30000 x 30000 PNG bomb in train/1."""
    root = shutil.copytree(tiny_data["folder"], tmp_path / "data")
    write_png_bomb(root / "train" / "1" / "bomb.png")
    return root


@pytest.fixture
def caches(tmp_path, monkeypatch) -> Path:
    """Empty library caches in tmp_path, and downloads forbidden."""
    home = tmp_path / "home"
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def sweep_here(tmp_path, capsys, monkeypatch):
    """``main.py --sweep ARGS`` run in this process from ``tmp_path`` (its variants still train as child
    processes): the same code as the command without the seconds of a fresh interpreter's imports.
    Returns a CompletedProcess with the exit code and what the sweep printed and logged."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def sweep(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = run_main(["--sweep", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["main.py", "--sweep", *args], rc, out, err)
    return sweep


# ---- --cpu_report N: where the suite's CPU time goes (wall time is noise on a shared machine)
_CPU_START = pytest.StashKey[float]()
_CPU_BY_TEST: dict[str, float] = {}


def pytest_addoption(parser) -> None:
    parser.addoption("--cpu_report", type=int, default=0, metavar="N",
                     help="list the N tests that took the most CPU seconds (user + system of the test process and "
                          "of the child processes it waited for; setup + call + teardown) and the total")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    item.stash[_CPU_START] = cpu_seconds()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item) -> None:
    item.stash[_CPU_START] = cpu_seconds()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item) -> None:
    item.stash[_CPU_START] = cpu_seconds()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if item.config.getoption("cpu_report") and _CPU_START in item.stash:
        report.cpu_s = cpu_seconds() - item.stash[_CPU_START]  # an attribute: pytest-xdist sends it to the controller
    return report


def pytest_runtest_logreport(report) -> None:
    if hasattr(report, "cpu_s"):
        _CPU_BY_TEST[report.nodeid] = _CPU_BY_TEST.get(report.nodeid, 0.0) + report.cpu_s


def pytest_terminal_summary(terminalreporter, config) -> None:
    n = config.getoption("cpu_report")
    if not n or not _CPU_BY_TEST:
        return
    terminalreporter.section(f"the {n} tests that took the most CPU seconds")
    for nodeid, seconds in sorted(_CPU_BY_TEST.items(), key=lambda kv: -kv[1])[:n]:
        terminalreporter.write_line(f"{seconds:8.1f}  {nodeid}")
    terminalreporter.write_line(f"{sum(_CPU_BY_TEST.values()):8.1f}  in all, {len(_CPU_BY_TEST)} tests")
