"""DDP through real torchrun processes on the CPU (Gloo), and gradient checkpointing."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import (
    ROOT,
    TINY_CLASSES,
    TINY_COUNTS,
    assert_nested_close,
    assert_same_weights,
    free_port,
    launch,
    read_json,
    run_main,
    tiny_train_args,
)
from utils.checkpoint import KILL_AT_ENV, load_checkpoint

pytestmark = pytest.mark.slow


def single(args):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_torchrun_training_writes_one_set_of_files_and_evaluates_exactly(tiny_data, tmp_path):
    r = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ddp", "-b", "4"))
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "resnet18/ddp"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["augmented_samples.png", "checkpoints", "config.yaml", "curves.png", "eval_test", "log.txt",
         "metrics.json", "tensorboard"])
    # training events, end-of-run pictures, HParams (rank 0 only)
    assert len(list((run / "tensorboard").iterdir())) == 3
    log = (run / "log.txt").read_text()
    assert "(2 processes)" in log and log.count("epoch 2/2") == 1
    ddp_top1 = read_json(run / "metrics.json")["test"]["test_top1"]
    report = read_json(run / "eval_test/metrics.json")
    assert report["count"] == 12  # every test image counted once, no padding duplicates
    assert run_main(["--evaluation", "--resume", str(run / "checkpoints/best.pth"),  # one process: this one
                     "--data", str(tiny_data["folder"]), "-j", "0", "--out", str(tmp_path / "single.json")]) == 0
    assert read_json(run / "eval_test/metrics.json")["top1"] == ddp_top1
    assert read_json(run / "eval_test/metrics.json")["confusion_matrix"] == report["confusion_matrix"]



def test_torchrun_log_interval_lines_come_from_rank_0_only(tiny_data, tmp_path):
    """--log_interval 1 under torchrun: each rank trains 15 of the 30 images in batches of 4 (4 steps an
    epoch); one line per step, from rank 0 alone, in log.txt and on the console."""
    r = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ddp", "-b", "4", "--arch", "simple_cnn",
                               "--log_interval", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "simple_cnn/ddp/log.txt").read_text()
    steps = re.findall(r"epoch (\d)/2  step (\d)/(\d)  loss", log)
    assert steps == [(e, s, "4") for e in "12" for s in "1234"]
    assert len(re.findall(r"epoch \d/2  step \d/4  loss", r.stderr)) == 8  # not twice: rank 1 does not log
    assert len(list((tmp_path / "simple_cnn/ddp/tensorboard/steps").iterdir())) == 1  # one writer, rank 0's


def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_data, tmp_path):
    common = ("--arch", "simple_cnn", "--epochs", "2", "--weight_decay", "1e-4", "--train_resize", "rrc",
              "--rrc_scale", "0.5", "1")
    r = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "two", "-b", "5", *common), legacy=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = single(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "one", "-b", "10", *common))
    assert r.returncode == 0, r.stderr[-2000:]
    two = load_checkpoint(tmp_path / "simple_cnn/two/checkpoints/last.pth")["model"]
    one = load_checkpoint(tmp_path / "simple_cnn/one/checkpoints/last.pth")["model"]
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5


def test_ddp_run_stopped_by_sigterm_resumes_on_both_ranks(tiny_data, tmp_path):
    flags = ("--arch", "simple_cnn", "--epochs", "3", "-b", "2", "--image_size", "32", "32", "--mixup", "0.2")
    ref = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *flags))
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "stop", *flags)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "main.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    log = tmp_path / "simple_cnn/stop/log.txt"
    end = time.time() + 300
    while not (log.is_file() and "epoch 1/3" in log.read_text()):
        assert time.time() < end and proc.poll() is None, "the run ended before its first epoch"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun and both workers, as a job scheduler would
    proc.communicate(timeout=300)
    state = load_checkpoint(tmp_path / "simple_cnn/stop/checkpoints/last.pth")
    assert state["epoch"] >= 0
    if state.get("resume_at"):
        assert len(state["resume_at"]["partial"]) == 2  # each rank's running sums
    again = launch(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in (tmp_path / "simple_cnn/stop/log.txt").read_text()
    assert_same_weights(tmp_path / "simple_cnn/ref/checkpoints/last.pth",
                        tmp_path / "simple_cnn/stop/checkpoints/last.pth")


def test_ddp_step_checkpoints_gather_both_ranks_and_resume_exactly(tiny_data, tmp_path):
    """--save_every_steps 2 under torchrun: both ranks SIGKILLed after their 7th step (of 8 in the epoch) leave
    rank 0's step-6 checkpoint with both ranks' running sums; the same command then ends with the weights
    of a run never killed."""
    flags = ("--arch", "simple_cnn", "--epochs", "1", "-b", "2", "--mixup", "0.2", "--save_every_steps", "2")
    ref = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ref", *flags))
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "killed", *flags)
    killed = launch(args, env={KILL_AT_ENV: "step:7"})
    assert killed.returncode != 0
    state = load_checkpoint(tmp_path / "simple_cnn/killed/checkpoints/last.pth")
    assert state["resume_at"]["batch"] == 6 and len(state["resume_at"]["partial"]) == 2
    again = launch(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at epoch 1, batch 7" in (tmp_path / "simple_cnn/killed/log.txt").read_text()
    assert_same_weights(tmp_path / "simple_cnn/ref/checkpoints/last.pth",
                        tmp_path / "simple_cnn/killed/checkpoints/last.pth")


def test_repeated_aug_under_torchrun_deals_each_images_copies_to_both_ranks(tiny_data, tmp_path):
    """--repeated_aug 2 on two real ranks (one worker each): an epoch reads the dataset's length, each image
    drawn twice, once on each rank."""
    keys = tmp_path / "keys"
    r = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "ra", "--arch", "simple_cnn", "--epochs", "1",
                               "-j", "1", "-b", "4", "--repeated_aug", "2"), env={"PLAYGROUND_SAMPLE_KEYS": str(keys)})
    assert r.returncode == 0, r.stderr[-3000:]
    ranks: dict[str, list[str]] = {}  # rank -> the train keys its worker read (not r0main: the preview batch)
    for file in tmp_path.glob("keys.r*w*"):
        lines = [line.split(" ", 1) for line in file.read_text().splitlines()]
        ranks[file.name.split(".")[1][:2]] = [key for split, key in lines if split == "train"]
    size = TINY_COUNTS["train"] * len(TINY_CLASSES)  # 30: 15 a rank, 15 images each read once on each rank
    assert sorted(ranks) == ["r0", "r1"] and [len(ranks[r]) for r in ("r0", "r1")] == [size // 2] * 2
    assert set(ranks["r0"]) == set(ranks["r1"]) and len(set(ranks["r0"])) == size // 2


def test_torchrun_with_one_process_starts_the_process_group(tiny_data, tmp_path):
    """--nproc_per_node=1 runs DDP over a real process group (how one GPU checks NCCL and --sync_bn)."""
    r = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "one", "--arch", "simple_cnn", "--epochs", "1"),
               nproc=1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "started the gloo process group: rank 0 of 1 on cpu" in r.stderr
    assert "(1 processes)" in (tmp_path / "simple_cnn/one/log.txt").read_text()


def test_sync_bn_on_the_cpu_is_a_clear_error(tiny_data, tmp_path):
    r = launch(tiny_train_args(tiny_data["folder"], tmp_path, "--arch", "simple_cnn", "--sync_bn"), nproc=1)
    assert r.returncode == 1
    line = next(line for line in r.stderr.splitlines() if "--sync_bn" in line)  # main.py's one-line error
    assert "ERROR main: ValueError: --sync_bn needs CUDA devices" in line
    assert "this run is on cpu; drop --sync_bn" in line


def test_port_in_use_is_a_clear_error(tiny_data, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        r = subprocess.run([sys.executable, "main.py", *tiny_train_args(tiny_data["folder"], tmp_path)], cwd=ROOT,
                           capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    assert f"cannot start the gloo process group at 127.0.0.1:{port}" in r.stderr and "--master_port" in r.stderr


@pytest.mark.parametrize("flags", [["--use_checkpoint"], ["--channels_last"], ["--compile", "--arch", "simple_cnn"],
                                   ["--lr_scale", "linear", "--lr_base_batch", "16"]],
                         ids=["use_checkpoint", "channels_last", "compile", "lr_scale"])
def test_memory_and_speed_switches_train(tiny_data, tmp_path, flags):
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--tag", "s", "--epochs", "1", *flags)) == 0
    arch = flags[flags.index("--arch") + 1] if "--arch" in flags else "resnet18"  # compile: a small graph
    h = read_json(tmp_path / arch / "s/metrics.json")["history"][0]
    assert h["train_loss"] > 0
    if "--lr_scale" in flags:  # global batch 8 / base 16: half the LR, here at the 4th of 4 cosine steps
        from optim import lr_factor
        assert h["lr"] == pytest.approx(0.05 * 8 / 16 * lr_factor(3, total_steps=4, schedule="cosine"))


FAKE_SRUN = """#!/usr/bin/env bash
# stands in for SLURM's srun on a machine without SLURM: drops srun's options, runs one task here
while [ $# -gt 0 ] && [[ "$1" == -* ]]; do case "$1" in -p) shift 2;; *) shift;; esac; done
export SLURM_JOB_NODELIST=localhost SLURM_JOB_ID=42 SLURM_NODEID=0
exec "$@"
"""


def test_slurm_script_sets_up_the_rendezvous(tiny_data, tmp_path):
    import yaml
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"data": str(tiny_data["folder"]), "arch": "simple_cnn", "image_size": [16, 16],
                                      "batch_size": 4, "workers": 0, "epochs": 1, "warmup": 0, "no_progress": True}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GPUS": "2", "GPUS_PER_NODE": "2",
           "PORT": str(free_port()), "PYTHON_BIN": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "z_task_shell/slurm_train.sh", "debug", "tiny", str(config), str(tmp_path / "work"),
                        "--tag", "slurm"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(2 processes)" in (tmp_path / "work/simple_cnn/slurm/log.txt").read_text()
    r = subprocess.run(["bash", "z_task_shell/slurm_train.sh", "debug"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_evaluation_under_torchrun_shards_gathers_and_writes_once(tiny_data, tmp_path):
    """Each rank evaluates its shard, rank 0 alone logs and writes, and the report and predictions equal
    a single process's (both ranks used to evaluate the whole split and write the same report)."""
    assert run_main(tiny_train_args(tiny_data["folder"], tmp_path, "--arch", "simple_cnn", "--epochs", "1")) == 0
    run = tmp_path / "simple_cnn/default"
    best, data = str(run / "checkpoints/best.pth"), str(tiny_data["folder"])
    assert run_main(["--evaluation", "--resume", best, "--data", data, "-j", "0",
                     "--out", str(tmp_path / "one.json")]) == 0
    one = read_json(run / "eval_test/metrics.json")
    (run / "eval_test/metrics.json").unlink()
    log_before = (run / "log.txt").read_text()
    r = launch(["--evaluation", "--resume", best, "--data", data, "-j", "0", "-b", "5", "--no_progress",
                "--out", str(tmp_path / "two.json")])
    assert r.returncode == 0, r.stderr[-3000:]
    # labels, counts and names exactly; scores and losses to float32 rounding (other batch sizes take other
    # kernels: 0.633326 vs 0.633325 on an AVX-512 CPU)
    assert_nested_close(read_json(run / "eval_test/metrics.json"), one)
    assert_nested_close(read_json(tmp_path / "two.json"), read_json(tmp_path / "one.json"))
    new_log = (run / "log.txt").read_text()[len(log_before):]
    assert new_log.count("test split (12 images)") == 1, new_log
    assert r.stderr.count("test split (12 images)") == 1 and "(6 images)" not in r.stderr
    assert r.stdout.splitlines().count("{") == 1, r.stdout  # one JSON summary, rank 0's (both ranks printed it)
