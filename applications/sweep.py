"""``--sweep FILE``: run a grid, named variants or an Optuna search as ordinary training runs, then
compare them.

Every variant is a real ``main.py --train`` process (a crash in one does not end the sweep; a SIGTERM
to the sweep reaches each running variant, which saves and exits 130) in ``<output>/<name>/<arch>/<tag>``;
the variants die with the sweep however it ends (``sweep_plan.Children``). Rerunning the sweep skips
finished variants of the same settings (``existing_run``: compared as ``--train`` compares a saved
config.yaml) and resumes interrupted ones. ``--sweep_devices 0,1`` runs one variant per device at a time.

The search asks Optuna (TPE sampler, median pruner) for each trial's flags and runs the trial as such a
process too. The sweep watches the run's ``metrics.json`` (written after every epoch), reports each
epoch's val top-1 (val mAP when the runs are multi-label: ``--multi_label`` in the sweep's flags; the
objective is ``experiments.runs.headline_metric``) to the trial and stops a trial the pruner gives up on with
a SIGTERM, so the training loop knows nothing about Optuna and a trial is as isolated, resumable and
comparable as any run. The study lives in ``<sweep folder>/study.db`` (SQLite) or ``--study_storage URL``,
so processes on several machines can work on one study.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from config import (
    SORT_KEYS,
    ConfigError,
    build_parser,
    check_mode_flags,
    config_conflicts,
    default_criterion,
    flags_to_argv,
    load_saved_config,
    parse_config,
    validate,
)
from experiments.runs import (
    NOT_SETTINGS,
    PRUNED_FILE,
    RunFolderError,
    compare_runs,
    headline_metric,
    latest_step_line,
    missing_outputs,
    read_config,
    read_metrics,
    readable_run,
)
from experiments.sweep_plan import (
    Children,
    ForwardSignals,
    SweepSpec,
    Variant,
    cut_list,
    device_flags_env,
    last_error,
    load_sweep,
    parse_devices,
    train_command,
    variant_tag,
)
from utils.atomic import write_text_atomic
from utils.eval_metric import EvalMetric, eval_metric_of
from utils.runlock import RunDirLocked, lock_holder

from .setup.common import run_dir_for

logger = logging.getLogger(__name__)


class NothingSucceeded(ValueError):
    """Every variant (or trial) the sweep ran failed: the sweep exits 1."""


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep in ``cfg.sweep`` (see the module docstring); returns its folder, counts and table."""
    spec = load_sweep(cfg.sweep, cfg.max_variants)
    if not spec.search:
        for flag in ("trials", "study_storage"):
            if getattr(cfg, flag) is not None:
                raise ConfigError(f"--{flag} is a search option, and {spec.path} has no search: (it has "
                                  f"{spec.kind}:); drop --{flag}")
    sweep_dir = Path(sweep_output(cfg, spec)) / spec.name
    base = {**spec.base, **command_line_flags(cfg)}
    devices = parse_devices(cfg.sweep_devices)
    variants = select_variants(spec, cfg.sweep_only)
    children = Children()
    with ForwardSignals(children):
        if spec.search:
            result = _search(spec, cfg, base, sweep_dir, devices, children)
        else:
            result = _variants(spec, variants, base, sweep_dir, devices, children, cfg.overwrite)
    result["sweep_dir"] = str(sweep_dir)
    if children.stopping.is_set():
        result["interrupted"] = True
        logger.warning("sweep stopped; rerun the same command to continue it")
    if result["run_dirs"]:
        table = compare_runs(result["run_dirs"], out_dir=sweep_dir, sort_by=cfg.sort_by,
                             larger_is_better=SORT_KEYS.get(cfg.sort_by, True))
        print(table.pop("table"), flush=True)
        result["compare"] = table
    if not result.get("interrupted") and result["failed"] and not result["succeeded"]:
        what = "trial(s)" if spec.search else "variant(s)"
        raise NothingSucceeded(f"--sweep: nothing succeeded: {len(result['failed'])} {what} failed "
                               f"({cut_list(result['failed'], 5)}); their output: {sweep_dir / 'logs'}")
    return result


def sweep_output(cfg: argparse.Namespace, spec: SweepSpec) -> str:
    """The folder that holds the sweep folder: ``--output`` when given next to ``--sweep``, else the sweep
    file's ``base: {output: ...}``, else the default."""
    default = build_parser().get_default("output")
    return cfg.output if cfg.output != default else str(spec.base.get("output") or default)


def select_variants(spec: SweepSpec, only: list[str] | None) -> list[Variant]:
    """``--sweep_only``: the variants of ``spec`` with these tags, in the file's order; a tag the file does
    not have is an error that lists the ones it has."""
    if not only:
        return list(spec.variants)
    if spec.search:
        raise ConfigError(f"--sweep_only picks variants of a grid or of named variants; {spec.path} is a search")
    tags = [v.tag for v in spec.variants]
    unknown = [t for t in only if t not in tags]
    if unknown:
        raise ConfigError(f"--sweep_only: {spec.path} has no variant {cut_list(map(repr, unknown))}; "
                          f"its variants: {cut_list(tags)}")
    return [v for v in spec.variants if v.tag in only]




def command_line_flags(cfg: argparse.Namespace) -> dict[str, Any]:
    """Flags given next to ``--sweep`` (those that differ from their defaults): they apply to every run,
    over the sweep file's base and under each variant's own values. ``--tracker`` and ``--log_interval`` are passed
    on too. A value the
    checks derive from the task when it is not given (``--criterion``: softmax, bce with ``--multi_label``) is
    compared with what they derive, not passed on as given."""
    defaults = {**vars(build_parser().parse_args([])),
                "criterion": default_criterion(getattr(cfg, "multi_label", False))}
    skip = NOT_SETTINGS - {"tracker", "log_interval"}
    return {k: v for k, v in vars(cfg).items() if k not in skip and v != defaults.get(k)}


def run_flags(base: dict[str, Any], values: dict[str, Any], sweep_dir: Path, tag: str) -> dict[str, Any]:
    """The flags of one variant's run, checked as ``main.py`` would check them (before anything runs)."""
    defaults = vars(build_parser().parse_args([]))
    flags = {**base, **values, "output": str(sweep_dir), "tag": tag, "no_progress": True}
    cfg = argparse.Namespace(**{**defaults, **flags, "train": True})
    try:
        validate(cfg)
        check_mode_flags(cfg, set(flags))  # a flag --train does not read would fail every run: refused now
    except ConfigError as e:
        raise ConfigError(f"--sweep: variant {tag}: {e}") from None
    return {k: v for k, v in flags.items() if v != defaults.get(k)}


def _run_dir(flags: dict[str, Any], sweep_dir: Path) -> Path:
    return run_dir_for(str(sweep_dir), flags.get("arch", "resnet18"), flags["tag"])


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """A variant's or trial's history rows so far (the one reader of metrics.json): none while it is not
    written, or when it cannot be read as a run's (the run's own --train then says why)."""
    try:
        return read_metrics(run_dir / "metrics.json")[0]
    except (OSError, RunFolderError):
        return []


class EpochReporter:
    """While a variant runs, one console line per epoch it finishes, naming the variant (``lr-0.1: epoch
    2/10  train loss 0.4123  val loss 0.3812 top-1 91.20  14 s``): the new rows of its ``metrics.json``,
    read by the one metrics reader each time it is called (``Children.run``'s watch). Rows already there
    when it starts (a resumed run's earlier epochs) are not repeated. A variant trained with ``--log_interval``
    also shows its latest per-step line (from its ``log.txt``) when that changed, at most every
    ``step_every`` seconds, so that each running variant's progress inside a long epoch is seen."""

    def __init__(self, run_dir: Path, tag: str, epochs: int | None, step_every: float = 10.0) -> None:
        self.run_dir, self.tag, self.epochs = run_dir, tag, epochs
        self.seen = {self._key(row) for row in _history(run_dir)}
        self.step_every, self.step_shown, self.step_line = step_every, -math.inf, latest_step_line(
            run_dir / "log.txt")

    @staticmethod
    def _key(row: dict[str, Any]) -> str:
        return json.dumps(row, sort_keys=True, default=str)

    def __call__(self, proc=None) -> None:
        for row in _history(self.run_dir):
            key = self._key(row)
            if key not in self.seen:
                self.seen.add(key)
                logger.info("%s: %s", self.tag, epoch_line(row, self.epochs))
        now = time.monotonic()
        if now - self.step_shown >= self.step_every:
            line = latest_step_line(self.run_dir / "log.txt")
            if line and line != self.step_line:
                self.step_line, self.step_shown = line, now
                logger.info("%s: %s", self.tag, line)


def epoch_line(row: dict[str, Any], epochs: int | None) -> str:
    """One history row as a console line: the epoch of ``epochs``, the losses and top-1s it has, its time."""
    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
    parts = [f"epoch {row['epoch'] + 1}/{epochs if epochs is not None else '?'}",
             f"train loss {num('train_loss', '.4f')}",
             f"val loss {num('val_loss', '.4f')} " + (f"mAP {num('val_map', '.2f')}" if "val_map" in row
                                                      else f"top-1 {num('val_top1', '.2f')}")]
    if row.get("time") is not None:
        parts.append(f"{num('time', '.0f')} s")
    return "  ".join(parts)


def _launch(children: Children, flags: dict[str, Any], device: str | None, sweep_dir: Path, watch=None) -> int:
    """Run one variant on ``device`` to its end, a console line per epoch (``EpochReporter``); a failure is
    logged with its last error line."""
    device_flags, env = device_flags_env(device)
    argv = train_command({**flags, **device_flags})
    log = sweep_dir / "logs" / f"{flags['tag']}.log"
    logger.info("start %s%s: %s", flags["tag"], f" on device {device}" if device else "", shlex.join(argv[1:]))
    report = EpochReporter(_run_dir(flags, sweep_dir), flags["tag"],
                           flags.get("epochs", build_parser().get_default("epochs")))

    def watch_all(proc) -> None:
        report(proc)
        if watch is not None:
            watch(proc)

    code = children.run(argv, env, log, watch=watch_all)
    if code == 0:
        logger.info("done %s", flags["tag"])
    elif code == 130 and children.stopping.is_set():
        logger.warning("%s stopped (it saved its state; rerun the sweep to resume it)", flags["tag"])
    elif code == 130:
        logger.info("%s stopped early", flags["tag"])
    else:
        logger.error("%s failed (exit %d): %s (full output: %s)", flags["tag"], code, last_error(log), log)
    return code


def _in_parallel(devices: list[str | None], work, children: Children) -> None:
    """``work(device)`` once per device slot, each in its own thread; the main thread waits (and stays
    free to take signals). An error in one stops the others' runs and is raised here."""
    errors: list[BaseException] = []

    def guarded(device: str | None) -> None:
        try:
            work(device)
        except BaseException as e:  # raised again in the main thread below
            errors.append(e)
            children.stop()

    threads = [threading.Thread(target=guarded, args=(d,), daemon=True) for d in devices]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.2)
    if errors:
        raise errors[0]


def existing_run(run_dir: Path, flags: dict[str, Any]) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """What ``run_dir`` holds for a variant with ``flags``: ``("new", {})`` (nothing to reuse),
    ``("finished", {})`` (a finished run of exactly these settings: reused), or ``("resume", conflicts)``:
    a run to continue (an interrupted one, or a finished one the variant gives more ``epochs``, which
    trains on as ``--train`` does) unless ``conflicts`` names settings that differ, compared as ``--train``
    compares a saved config.yaml (plus fewer ``epochs`` than a finished run trained)."""
    record = readable_run(run_dir)
    if record is None:  # none, or one whose files cannot be read (said): the variant's --train decides
        return "new", {}
    saved = load_saved_config(run_dir / "config.yaml")
    finished = record.status == "finished"
    if not finished and not any((run_dir / "checkpoints").glob("*.pth*")):
        return "new", {}  # --train starts such a folder afresh
    cfg = parse_config(["--train", *flags_to_argv(build_parser(), flags)])  # what the variant's run parses
    conflicts = config_conflicts(saved, cfg)
    if finished and saved.get("epochs") == cfg.epochs and not conflicts:
        missing = missing_outputs(run_dir, record)
        if not missing:
            return "finished", {}
        # finished, but killed before its last outputs: the run resumes at its end, only its final step runs
        logger.info("rerun %s: finished, but %s missing", run_dir.name, ", ".join(missing))
        return "resume", {}
    if finished and isinstance(saved.get("epochs"), int) and saved["epochs"] > cfg.epochs:
        conflicts["epochs"] = (saved["epochs"], cfg.epochs)
    return "resume", conflicts


def _variants(spec: SweepSpec, variants: list[Variant], base: dict[str, Any], sweep_dir: Path,
              devices: list[str | None], children: Children, overwrite: bool = False) -> dict[str, Any]:
    """The grid or the named ``variants`` of ``spec``: finished runs of the same settings skipped, the rest
    run one per device slot. A run with other settings in a variant's folder is refused before anything
    runs (``overwrite``: started afresh), and so is a folder another live process holds. The run folders
    returned for the comparison are those of every variant of ``spec`` that has one."""
    planned = [(v, run_flags(base, v.values, sweep_dir, v.tag)) for v in variants]
    tags = [v.tag for v, _ in planned]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"--sweep: {spec.path}: two variants have the same tag: "
                          f"{cut_list(sorted({t for t in tags if tags.count(t) > 1}))}")
    todo, differ, finished = [], [], 0
    for variant, flags in planned:
        run_dir = _run_dir(flags, sweep_dir)
        state, conflicts = existing_run(run_dir, flags)
        if state == "finished":
            logger.info("skip %s: finished", variant.tag)
            finished += 1
            continue
        if conflicts and overwrite:
            logger.info("%s: %s holds a run with other settings (%s): started afresh (--overwrite)", variant.tag,
                        run_dir, _describe_conflicts(conflicts))
            flags = {**flags, "overwrite": True}
        elif conflicts:
            differ.append(f"{run_dir} ({_describe_conflicts(conflicts)})")
            continue
        todo.append(flags)
    if differ:
        raise ConfigError(f"--sweep: {len(differ)} variant folder(s) hold runs with other settings than the sweep "
                          f"gives them now: {cut_list(differ, 3)}; pass --overwrite to run them afresh, "
                          f"or give the settings they were run with")
    for flags in todo:
        holder = lock_holder(_run_dir(flags, sweep_dir))
        if holder:
            raise RunDirLocked(f"--sweep: run directory {_run_dir(flags, sweep_dir)} is in use by {holder} (a run "
                               f"of an earlier sweep?); wait for it to end or stop it, then rerun the sweep")
    logger.info("sweep %s: %d variants, %d to run, on %s", spec.name, len(planned), len(todo),
                ", ".join(d or "the default device" for d in devices))
    queue, lock, codes = list(todo), threading.Lock(), {}

    def work(device: str | None) -> None:
        while not children.stopping.is_set():
            with lock:
                if not queue:
                    return
                flags = queue.pop(0)
            codes[flags["tag"]] = _launch(children, flags, device, sweep_dir)

    _in_parallel(devices, work, children)
    # the comparison covers every variant of the file that has a run, those --sweep_only left out too
    every = [_run_dir({**base, **v.values, "tag": v.tag}, sweep_dir) for v in spec.variants]
    run_dirs = [str(d) for d in dict.fromkeys(every) if (d / "config.yaml").is_file()]
    return {"variants": len(planned), "ran": len(codes), "skipped": finished,
            "succeeded": finished + sum(c == 0 for c in codes.values()),
            "failed": sorted(t for t, c in codes.items() if c not in (0, 130)), "run_dirs": run_dirs}


def _describe_conflicts(conflicts: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"--{k}: {a!r} -> {b!r}" for k, (a, b) in conflicts.items())


# ---- search ------------------------------------------------------------------------------------------

def _distributions(spec: SweepSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    out = {}
    for p in spec.search:
        if p.kind == "choice":  # Optuna keeps scalars: list values (e.g. image sizes) travel as their text
            out[p.dest] = CategoricalDistribution([_choice_key(c) for c in p.choices])
        elif p.kind == "int":
            out[p.dest] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.dest] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def _choice_key(value: Any) -> Any:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _trial_values(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params as flag values (list choices back from their text)."""
    values = {}
    for p in spec.search:
        value = params[p.dest]
        if p.kind == "choice":
            value = next(c for c in p.choices if _choice_key(c) == value)
        values[p.dest] = value
    return values


TRIAL_DIGITS = 4  # significant digits of a float in a trial's folder name


def _trial_flags(study, trial, values: dict[str, Any], base: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """The run flags of a ``trial`` with these flag ``values``: exact values, and a tag with its floats to
    ``TRIAL_DIGITS`` significant digits (``lr-0.02288``). A trial asked again with an earlier trial's params
    (an interrupted one) gets that trial's folder, so its run resumes; values that round alike to another
    trial's, or to those of a run already in the folder (of a study moved away), get the first free
    ``-2``, ``-3``, ... suffix."""
    claimed = {t.user_attrs["run_dir"]: t.params for t in study.get_trials(deepcopy=False)
               if t.number != trial.number and t.user_attrs.get("run_dir")}
    tag, n = variant_tag(values, digits=TRIAL_DIGITS), 1
    while True:
        flags = run_flags(base, values, sweep_dir, tag if n == 1 else f"{tag}-{n}")
        run_dir = _run_dir(flags, sweep_dir)
        params = claimed.get(str(run_dir))
        if params == trial.params or (params is None and not _holds_other_values(run_dir, values)):
            return flags
        n += 1


def _holds_other_values(run_dir: Path, values: dict[str, Any]) -> bool:
    """True when ``run_dir`` holds a run whose config gives one of these flags another value (a folder
    without a readable config.yaml holds none: the trial's --train decides about it)."""
    try:
        saved = read_config(run_dir / "config.yaml")
    except (OSError, RunFolderError):
        return False
    return any(saved.get(k) != v for k, v in values.items())


def _search(spec: SweepSpec, cfg: argparse.Namespace, base: dict[str, Any], sweep_dir: Path,
            devices: list[str | None], children: Children) -> dict[str, Any]:
    """The Optuna study: trials until it holds ``--trials`` (or the file's ``trials``) finished ones."""
    import optuna
    from optuna.trial import TrialState
    target = cfg.trials or spec.trials
    if target is None:
        raise ConfigError(f"--sweep: {spec.path} has a search space: give the number of trials (--trials N or "
                          f"trials: N in the file)")
    for p in spec.search:  # each choice and each end of each range must make a valid run: checked up front
        for value in p.choices or ([int(p.low), int(p.high)] if p.kind == "int" else [p.low, p.high]):
            run_flags(base, {p.dest: value}, sweep_dir, variant_tag({p.dest: value}))
    if not cfg.study_storage:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = cfg.study_storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=spec.pruning["startup_trials"],
                                          n_warmup_steps=spec.pruning["warmup_epochs"])
              if spec.pruning else optuna.pruners.NopPruner())
    study = open_study(spec.name, cfg.study_storage, sweep_dir / "study.db", pruner, eval_metric_of(base))
    # A fresh study draws from sampler_seed; a continued one from sampler_seed + its trial count, so that a
    # rerun does not repeat the first run's random draws.
    seed = None if spec.sampler_seed is None else spec.sampler_seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    distributions = _distributions(spec)
    fail_stale_trials(study)
    # Trials a stopped sweep left unfinished are asked again with the same flags: the same tag, so their
    # run resumes where it stopped.
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and not study.user_attrs.get(f"requeued_{t.number}"):
            study.set_user_attr(f"requeued_{t.number}", True)
            study.enqueue_trial(t.params, skip_if_exists=False)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    lock = threading.Lock()

    def counted() -> int:  # finished, pruned, running anywhere, and failed (not interrupted) trials
        trials = study.get_trials(deepcopy=False)
        return sum(t.state in done_states or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
                   for t in trials)

    def work(device: str | None) -> None:
        while not children.stopping.is_set():
            with lock:  # a trial claims its folder before another thread asks for the next trial
                if counted() >= target:
                    return
                trial = study.ask(distributions)
                trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
                flags = _trial_flags(study, trial, _trial_values(spec, trial.params), base, sweep_dir)
                run_dir = _run_dir(flags, sweep_dir)
                trial.set_user_attr("run_dir", str(run_dir))
            holder = lock_holder(run_dir)
            if holder:
                trial.set_user_attr("interrupted", True)
                study.tell(trial, state=TrialState.FAIL)
                raise RunDirLocked(f"--sweep: trial {trial.number}'s run directory {run_dir} is in use by {holder} "
                                   f"(a run of an earlier sweep?); wait for it to end or stop it, then rerun the sweep")
            state = _run_trial(trial, flags, run_dir, device, sweep_dir, children)
            logger.info("trial %d (%s): %s", trial.number, flags["tag"], state)

    _in_parallel(devices, work, children)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
              if not t.user_attrs.get("interrupted")]
    result: dict[str, Any] = {"study": spec.name, "storage": _shown_url(storage), "trials": len(study.trials),
                              "complete": len(complete), "pruned": len(pruned),
                              "succeeded": len(complete) + len(pruned),
                              "failed": [f"trial {t.number}" for t in failed],
                              "run_dirs": [str(Path(t.user_attrs["run_dir"])) for t in study.trials
                                           if t.user_attrs.get("run_dir") and Path(t.user_attrs["run_dir"]).is_dir()]}
    result["run_dirs"] = list(dict.fromkeys(result["run_dirs"]))
    if complete:
        best = study.best_trial
        flags = {k: v for k, v in run_flags(base, _trial_values(spec, best.params), sweep_dir, "best").items()
                 if k not in ("output", "tag", "no_progress")}
        command = "python " + shlex.join(["main.py", *train_command(flags)[2:]])
        objective = headline_metric(base)
        result.update(best_trial=best.number, best_value=best.value, objective=objective, best_command=command)
        print(f"best trial {best.number}: val {eval_metric_of(base).label} {best.value:.2f} "
              f"({best.user_attrs.get('run_dir')})\n{command}", flush=True)
    return result


def open_study(name: str, url: str | None, default_db: Path, pruner, metric: EvalMetric | None = None):
    """The Optuna study ``name`` in the storage ``url`` (default: SQLite ``default_db``), created or
    continued (maximising the runs' eval ``metric``, minimising val_loss), and written to once, so that a database that
    cannot be used (damaged, read-only, a bad URL, a missing folder or driver) is one line naming it, before
    any trial starts."""
    import optuna
    import sqlalchemy.exc
    storage = url or f"sqlite:///{default_db.resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if url is None and default_db.is_file() and not os.access(default_db, os.W_OK):
            raise PermissionError("the file is read-only")
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                    direction="minimize" if metric and not metric.higher_is_better else "maximize",
                                    pruner=pruner)
        study.set_user_attr("last_opened", time.time())
    except (ImportError, ValueError, OSError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError) as e:
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:300]
        if isinstance(e, ImportError):
            reason = f"its database driver is not installed ({reason})"
        if url is None:
            raise ConfigError(f"--sweep: cannot use the study database {default_db}: {reason}; if it is damaged, "
                              f"move it away (a new study starts; the run folders stay), or make it writable") from None
        raise ConfigError(f"--study_storage {_shown_url(url)}: cannot open the study: {reason}; give an Optuna "
                          f"storage URL such as sqlite:////absolute/path/study.db or "
                          f"postgresql://user:password@host/db (with its driver installed)") from None
    return study


def _shown_url(url: str) -> str:
    """``url`` with its password hidden."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: nothing to hide
        return url


def _process_gone(pid: Any) -> bool:
    """True when no process ``pid`` runs on this host (none at all, or a zombie waiting to be reaped)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    except (TypeError, ValueError, OverflowError):
        return True
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def fail_stale_trials(study) -> None:
    """Trials left RUNNING by a sweep on this host that is gone (killed outright) become failed-as-
    interrupted, so that they are asked again and their runs resume; a live process still holding such a
    trial's run directory (an orphaned run) stops the sweep with a line naming it."""
    from optuna.trial import Trial, TrialState
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if not isinstance(worker, dict) or worker.get("host") != host or not _process_gone(worker.get("pid")):
            continue  # run by a live sweep, or by one on another machine
        run_dir = t.user_attrs.get("run_dir")
        holder = lock_holder(run_dir) if run_dir else None
        if holder:
            raise RunDirLocked(f"--sweep: trial {t.number}'s run directory {run_dir} is in use by {holder}, left "
                               f"running by a sweep that is gone; wait for it to end or stop it, then rerun the sweep")
        Trial(study, t._trial_id).set_user_attr("interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        logger.warning("trial %d was left running by a sweep that is gone (pid %s): it is asked again", t.number,
                       worker.get("pid"))


def _run_trial(trial, flags: dict[str, Any], run_dir: Path, device: str | None, sweep_dir: Path,
               children: Children) -> str:
    """Run one trial's training process; report each new epoch's headline (val top-1, or val mAP for a
    multi-label run: ``headline_metric``) to Optuna and stop the run
    (SIGTERM: it saves and exits) when the pruner says so. Tells the study how the trial ended."""
    from optuna.trial import TrialState
    reported = {"epochs": 0, "pruned": False}
    key = headline_metric(flags)

    def watch(proc) -> None:
        history = _history(run_dir)
        for row in history[reported["epochs"]:]:
            if reported["pruned"]:
                break
            reported["epochs"] += 1
            if row.get(key) is None:  # an epoch without validation reports nothing
                continue
            trial.report(row[key], row["epoch"])
            if trial.should_prune():
                reported["pruned"] = True
                write_text_atomic(run_dir / PRUNED_FILE, f"pruned by the search after epoch {row['epoch'] + 1}\n")
                if proc.poll() is None:
                    proc.terminate()

    code = _launch(children, flags, device, sweep_dir, watch=watch)
    if reported["pruned"]:
        trial.study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    scores = [row[key] for row in _history(run_dir) if row.get(key) is not None]
    if code == 0 and scores:
        (run_dir / PRUNED_FILE).unlink(missing_ok=True)
        trial.study.tell(trial, max(scores) if eval_metric_of(flags).higher_is_better else min(scores))
        return "complete"
    # 130: the run saved and stopped; -SIGTERM/-SIGINT: the signal the sweep forwarded landed where the run
    # has no handler (its final test): either way a rerun resumes or finishes it
    interrupted = code in (130, -signal.SIGTERM, -signal.SIGINT)
    if interrupted:
        trial.set_user_attr("interrupted", True)
    trial.study.tell(trial, state=TrialState.FAIL)
    return "interrupted" if interrupted else "failed"
