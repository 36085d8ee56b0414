"""--patience, --checkpoint_hist and --keep_last on real tiny runs: the stop, its resume, the kept epochs."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from helpers import ROOT, main_command, read_json, run_history, run_main, tiny_train_args
from utils.checkpoint import KILL_AT_ENV, load_checkpoint

# lr 0: the weights (simple_cnn: no batch norm) never change, so the eval metric (the val loss) does not improve:
# the counter reaches 2 after epochs 2 and 3 and the run stops after 3 of its 8 epochs
STOPPING = ("--arch", "simple_cnn", "--epochs", "8", "--lr", "0", "--patience", "2", "--eval_metric", "val_loss",
            "--keep_last", "2", "--checkpoint_hist", "1", "--seed", "1")


@pytest.mark.slow
def test_patience_2_with_lr_0_stops_after_3_epochs_and_a_killed_run_resumes_to_the_same_stop(tiny_data, tmp_path):
    ref = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *STOPPING)
    assert run_main(ref) == 0
    run = tmp_path / "simple_cnn" / "ref"
    metrics = read_json(run / "metrics.json")
    assert [row["epoch"] for row in metrics["history"]] == [0, 1, 2]
    assert metrics["test"]["early_stopped_at"] == 3 and metrics["test"]["eval_metric"] == "val_loss"
    assert all("val_macro_f1" in row and "val_balanced_acc" in row for row in metrics["history"])
    last = load_checkpoint(run / "checkpoints/last.pth")
    assert last["early_stop"]["stopped_epoch"] == 2 and last["early_stop"]["wait"] == 2
    # the kept epochs: the last 2 and the best 1 by val loss (ties: the lower loss, then the earlier epoch)
    kept = read_json(run / "checkpoints/kept.json")
    best_epoch = min(metrics["history"], key=lambda r: (r["val_loss"], r["epoch"]))["epoch"] + 1
    assert [e["epoch"] for e in kept["last"]] == [2, 3] and [e["epoch"] for e in kept["best"]] == [best_epoch]
    assert load_checkpoint(run / "checkpoints/best.pth")["epoch"] == best_epoch - 1
    files = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pth"))
    assert files == sorted({f"epoch_{e}.pth" for e in (2, 3, best_epoch)})
    for name in files:
        assert load_checkpoint(run / "checkpoints" / name)["epoch"] == int(name[6:-4]) - 1

    # killed right after epoch 2's last.pth is in place, then the same command: it stops after epoch 3 as well
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "killed", *STOPPING)
    killed = subprocess.run(main_command(args), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, KILL_AT_ENV: "last_replaced:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "simple_cnn/killed/checkpoints/last.pth")["epoch"] == 1
    assert not (tmp_path / "simple_cnn/killed/checkpoints/epoch_2.pth").exists()  # killed before keeping it
    assert run_main(args) == 0
    resumed = read_json(tmp_path / "simple_cnn/killed/metrics.json")
    assert run_history(tmp_path / "simple_cnn/killed") == run_history(run)
    assert resumed["test"] == {**metrics["test"], "run_dir": str(tmp_path / "simple_cnn/killed")}
    assert read_json(tmp_path / "simple_cnn/killed/checkpoints/kept.json") == kept

    # killed in the final test after the stop: the rerun trains no more epochs and finishes the same
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "final", *STOPPING)
    killed = subprocess.run(main_command(args), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, KILL_AT_ENV: "final_test:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert run_main(args) == 0
    assert run_history(tmp_path / "simple_cnn/final") == run_history(run)
    assert read_json(tmp_path / "simple_cnn/final/metrics.json")["test"]["early_stopped_at"] == 3

    # --compare shows the stop
    assert run_main(["--compare", str(tmp_path / "simple_cnn")]) == 0
    assert "early-stopped at epoch 3" in (tmp_path / "simple_cnn/compare.md").read_text()
