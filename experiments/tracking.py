"""What a training run records for comparing runs outside its folder: TensorBoard's HParams summary
(always) and, with ``--tracker mlflow`` or ``--tracker wandb``, a tracker's run with its params, per-epoch
metrics, final metrics and pictures.

``RunRecorder`` is the one object the training loop talks to (three calls: create, ``epoch``,
``finish``). The trackers are the ``TRACKERS`` registry (``create_tracker``), each with the same three
methods (``log_metrics``, ``log_pictures``, ``finish``); a tracker's package is imported only when asked for.
A resumed run continues its tracker's run (the id is kept in the run directory's ``mlflow_run.json`` or
``wandb_run.json``).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any

from experiments.runs import NOT_SETTINGS, format_value
from utils.atomic import write_json_atomic
from utils.misc import HoldSignals

logger = logging.getLogger(__name__)

# The final metrics HParams shows per run (scalars under these tags, written at the end of the run).
HPARAM_METRICS = ("best_val_top1", "test_top1", "test_top5")
MULTI_LABEL_HPARAM_METRICS = ("best_val_map", "test_map", "test_of1", "test_cf1")  # a multi-label run's, with p@1
MLFLOW_RUN_FILE = "mlflow_run.json"
WANDB_RUN_FILE = "wandb_run.json"


def hparams_of(config: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as HParams values: numbers, booleans and strings (lists as their command-line
    text); None values and keys that do not describe training (``NOT_SETTINGS``) left out."""
    out = {}
    for key, value in sorted(config.items()):
        if key in NOT_SETTINGS or value is None:
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else format_value(value)
    return out


def write_hparams(log_dir: str | Path, config: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """Write TensorBoard's HParams summary (the run's settings and final ``metrics``) into ``log_dir``,
    beside the run's scalars, so that ``tensorboard --logdir output`` lists every run in its HParams tab."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams
    tags = {f"hparams/{k}": float(v) for k, v in metrics.items() if v is not None}
    experiment, session_start, session_end = hparams(hparams_of(config), tags)
    with HoldSignals():  # a SIGTERM of the final step waits for the writer (see utils.misc.HoldSignals)
        writer = SummaryWriter(log_dir=str(log_dir))
        try:
            file_writer = writer._get_file_writer()  # SummaryWriter.add_hparams would write a sub-folder (a new run)
            for summary in (experiment, session_start, session_end):
                file_writer.add_summary(summary)
            for tag, value in tags.items():
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()


class MlflowRun:
    """One MLflow run for one run directory: created on the first start, continued on a resume."""

    def __init__(self, config: dict[str, Any], run_dir: Path, resumed: bool) -> None:
        from mlflow.tracking import MlflowClient
        output = Path(config.get("output") or run_dir.parent.parent).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output / 'mlruns' / 'mlflow.db'}"
        # A local database keeps its artifacts beside it (MLflow's default would be ./mlruns of the current
        # folder); a server decides for itself.
        local = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else None
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        saved = run_dir / MLFLOW_RUN_FILE
        known = json.loads(saved.read_text()) if saved.is_file() else {}
        if resumed and known.get("tracking_uri") == uri:
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or output.name
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                name, artifact_location=None if local is None else (local / "artifacts").as_uri())
            run = self.client.create_run(experiment_id, run_name=f"{run_dir.parent.name}/{run_dir.name}",
                                         tags={"run_dir": str(run_dir.resolve())})
            self.run_id = run.info.run_id
            from mlflow.entities import Param
            self.client.log_batch(self.run_id, params=[Param(k, format_value(v)[:6000])
                                                       for k, v in hparams_of(config).items()])
            write_json_atomic(saved, {"tracking_uri": uri, "run_id": self.run_id}, indent=None)
        self.uri = uri
        atexit.register(self._end, "KILLED")  # a run that stops before finish() is not left RUNNING
        logger.info("MLflow run %s in %s", self.run_id, uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_final(self, metrics: dict[str, float], step: int) -> None:
        """The run's final metrics, at step ``step`` (the run's last epoch)."""
        self.log_metrics(metrics, step)

    def log_pictures(self, run_dir: Path) -> None:
        """The run's pictures (curves, augmented samples, evaluation plots) and its metrics.json."""
        for path in sorted([*run_dir.glob("*.png"), *run_dir.glob("eval_*/*.png"), run_dir / "metrics.json"]):
            if path.is_file():
                folder = path.parent.relative_to(run_dir).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def _end(self, status: str) -> None:
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as e:  # at exit, a tracking server may be gone: the run directory is what counts
            logger.warning("could not mark MLflow run %s %s: %s", self.run_id, status, e)

    def finish(self) -> None:
        atexit.unregister(self._end)
        self._end("FINISHED")


class WandbRun:
    """One Weights & Biases run for one run directory: created on the first start, continued on a resume.

    The project is ``WANDB_PROJECT`` or the output folder's name; W&B's files go to ``WANDB_DIR``, else
    ``<output>/wandb``; ``WANDB_MODE=offline`` keeps the run on disk (``wandb sync`` uploads it later)."""

    def __init__(self, config: dict[str, Any], run_dir: Path, resumed: bool) -> None:
        import wandb
        output = Path(config.get("output") or run_dir.parent.parent).resolve()
        saved = run_dir / WANDB_RUN_FILE
        known = json.loads(saved.read_text()) if saved.is_file() else {}
        project = os.environ.get("WANDB_PROJECT") or output.name
        run_id = known.get("run_id") if resumed and known.get("project") == project else None
        try:
            self.run = wandb.init(project=project, name=f"{run_dir.parent.name}/{run_dir.name}",
                                  id=run_id, resume="allow" if run_id else None, config=hparams_of(config),
                                  dir=None if os.environ.get("WANDB_DIR") else str(output), reinit="create_new",
                                  notes=str(run_dir.resolve()))
        except Exception as e:  # no login, no network: one line saying what to do, not W&B's traceback
            raise ValueError(f"--tracker wandb: could not start a W&B run ({type(e).__name__}: {e}); log in "
                             f"(wandb login, or WANDB_API_KEY), or set WANDB_MODE=offline") from None
        write_json_atomic(saved, {"project": project, "run_id": self.run.id}, indent=None)
        self.step = 0
        atexit.register(self._end, 1)  # a run that stops before finish() is marked failed
        logger.info("W&B run %s in project %s (%s)", self.run.id, project, self.run.dir)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.step = max(self.step, step)
        self.run.log({k: float(v) for k, v in metrics.items()}, step=self.step)

    def log_final(self, metrics: dict[str, float], step: int) -> None:
        """The run's final metrics, in its summary (the numbers W&B's run table shows; ``step`` unused)."""
        self.run.summary.update({k: float(v) for k, v in metrics.items()})

    def log_pictures(self, run_dir: Path) -> None:
        """The run's pictures as W&B images (``pictures/<path>``) and its metrics.json as a run file."""
        import wandb
        images = {f"pictures/{path.relative_to(run_dir).with_suffix('').as_posix()}": wandb.Image(str(path))
                  for path in sorted([*run_dir.glob("*.png"), *run_dir.glob("eval_*/*.png")])}
        if images:
            self.run.log(images, step=self.step)
        if (run_dir / "metrics.json").is_file():
            self.run.save(str(run_dir / "metrics.json"), base_path=str(run_dir), policy="now")

    def _end(self, exit_code: int) -> None:
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:  # at exit, the W&B service may be gone: the run directory is what counts
            logger.warning("could not finish W&B run %s: %s", self.run.id, e)

    def finish(self) -> None:
        atexit.unregister(self._end)
        self._end(0)


# --tracker NAME -> the class of its runs (config/modes/train.py's choices are "none" and these names)
TRACKERS: dict[str, type] = {"mlflow": MlflowRun, "wandb": WandbRun}


def create_tracker(name: str | None, config: dict[str, Any], run_dir: Path, resumed: bool) -> Any:
    """The ``--tracker`` run for ``run_dir`` (None for ``none``), created or continued (``resumed``)."""
    if name in (None, "none"):
        return None
    if name not in TRACKERS:
        raise ValueError(f"--tracker {name!r} is not a tracker: choose from none, {', '.join(TRACKERS)}")
    return TRACKERS[name](config, run_dir, resumed)


class RunRecorder:
    """The training loop's recorder: per-epoch metrics to the tracker, and at the end HParams (and the
    tracker's final metrics and pictures). A no-op on ranks other than the first (``enabled=False``)."""

    def __init__(self, config: dict[str, Any], run_dir: Path, resumed: bool, enabled: bool = True) -> None:
        self.config, self.run_dir, self.enabled = config, Path(run_dir), enabled
        self.tracker = create_tracker(config.get("tracker"), config, self.run_dir, resumed) if enabled else None

    def epoch(self, row: dict[str, Any]) -> None:
        """One history row (``epoch`` is 0-based; it is logged as step epoch + 1, as in TensorBoard)."""
        if self.tracker is not None:
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))},
                                     row["epoch"] + 1)

    def finish(self, summary: dict[str, Any]) -> None:
        """The run's final metrics: HParams in its TensorBoard folder; the tracker's metrics and pictures."""
        if not self.enabled:
            return
        keys = HPARAM_METRICS + (MULTI_LABEL_HPARAM_METRICS if "test_map" in summary else ())
        metrics = {k: summary.get(k) for k in keys}
        write_hparams(self.run_dir / "tensorboard", self.config, metrics, int(self.config.get("epochs") or 0))
        if self.tracker is not None:
            self.tracker.log_final({k: v for k, v in metrics.items() if v is not None},
                                   int(self.config.get("epochs") or 0))
            self.tracker.log_pictures(self.run_dir)
            self.tracker.finish()
