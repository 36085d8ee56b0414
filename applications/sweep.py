"""``--sweep FILE``: run a grid, named variants or an Optuna search as ordinary training runs, then
compare them.

Every variant is a real ``main.py --train`` process (a crash in one does not end the sweep; a SIGTERM
to the sweep reaches each running variant, which saves and exits 130) in ``<output>/<name>/<arch>/<tag>``.
Rerunning the sweep skips finished variants and resumes interrupted ones. ``--sweep_devices 0,1`` runs
one variant per device at a time.

The search asks Optuna (TPE sampler, median pruner) for each trial's flags and runs the trial as such a
process too. The sweep watches the run's ``metrics.json`` (written after every epoch), reports each
epoch's val top-1 to the trial and stops a trial the pruner gives up on with a SIGTERM, so the training
loop knows nothing about Optuna and a trial is as isolated, resumable and comparable as any run. The
study lives in ``<sweep folder>/study.db`` (SQLite) or ``--study_storage URL``, so processes on several
machines can work on one study.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import threading
from pathlib import Path
from typing import Any

from config import SORT_KEYS, ConfigError, build_parser, check_mode_flags, validate
from utils.atomic import write_text_atomic
from utils.runs import NOT_SETTINGS, PRUNED_FILE, compare_runs, missing_outputs, read_run

from .common import run_dir_for
from .sweep_plan import (Children, ForwardSignals, SweepSpec, Variant, device_flags_env, last_error, load_sweep,
                         parse_devices, train_command, variant_tag)

logger = logging.getLogger(__name__)


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep in ``cfg.sweep`` (see the module docstring); returns its folder, counts and table."""
    spec = load_sweep(cfg.sweep)
    sweep_dir = Path(cfg.output) / spec.name
    base = {**spec.base, **command_line_flags(cfg)}
    devices = parse_devices(cfg.sweep_devices)
    variants = select_variants(spec, cfg.sweep_only)
    children = Children()
    with ForwardSignals(children):
        if spec.search:
            result = _search(spec, cfg, base, sweep_dir, devices, children)
        else:
            result = _variants(spec, variants, base, sweep_dir, devices, children)
    result["sweep_dir"] = str(sweep_dir)
    if children.stopping.is_set():
        result["interrupted"] = True
        logger.warning("sweep stopped; rerun the same command to continue it")
    if result["run_dirs"]:
        table = compare_runs(result["run_dirs"], out_dir=sweep_dir, sort_by=cfg.sort_by,
                             larger_is_better=SORT_KEYS[cfg.sort_by])
        print(table.pop("table"), flush=True)
        result["compare"] = table
    return result


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
        raise ConfigError(f"--sweep_only: {spec.path} has no variant {', '.join(map(repr, unknown))}; "
                          f"its variants: {', '.join(tags)}")
    return [v for v in spec.variants if v.tag in only]


def command_line_flags(cfg: argparse.Namespace) -> dict[str, Any]:
    """Flags given next to ``--sweep`` (those that differ from their defaults): they apply to every run,
    over the sweep file's base and under each variant's own values. ``--tracker`` is passed on too."""
    defaults = vars(build_parser().parse_args([]))
    skip = NOT_SETTINGS - {"tracker"}
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


def _launch(children: Children, flags: dict[str, Any], device: str | None, sweep_dir: Path, watch=None) -> int:
    """Run one variant on ``device`` to its end; a failure is logged with its last error line."""
    device_flags, env = device_flags_env(device)
    argv = train_command({**flags, **device_flags})
    log = sweep_dir / "logs" / f"{flags['tag']}.log"
    logger.info("start %s%s: %s", flags["tag"], f" on device {device}" if device else "", shlex.join(argv[1:]))
    code = children.run(argv, env, log, watch=watch)
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


def _variants(spec: SweepSpec, variants: list[Variant], base: dict[str, Any], sweep_dir: Path,
              devices: list[str | None], children: Children) -> dict[str, Any]:
    """The grid or the named ``variants`` of ``spec``: finished ones skipped, the rest run one per device
    slot."""
    planned = [(v, run_flags(base, v.values, sweep_dir, v.tag)) for v in variants]
    tags = [v.tag for v, _ in planned]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"--sweep: {spec.path}: two variants have the same tag: "
                          f"{sorted({t for t in tags if tags.count(t) > 1})}")
    todo = []
    for variant, flags in planned:
        run_dir = _run_dir(flags, sweep_dir)
        record = read_run(run_dir) if (run_dir / "config.yaml").is_file() else None
        missing = missing_outputs(run_dir, record) if record is not None and record.status == "finished" else []
        if record is not None and record.status == "finished" and not missing:
            logger.info("skip %s: finished", variant.tag)
        else:
            if missing:  # the run resumes at its end: only its final step runs again
                logger.info("rerun %s: finished, but %s missing", variant.tag, ", ".join(missing))
            todo.append(flags)
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
    run_dirs = [str(_run_dir(f, sweep_dir)) for _, f in planned if (_run_dir(f, sweep_dir) / "config.yaml").is_file()]
    return {"variants": len(planned), "ran": len(codes), "skipped": len(planned) - len(todo),
            "failed": sorted(t for t, c in codes.items() if c not in (0, 130)), "run_dirs": run_dirs}


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


def _history(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("history", [])
    except (OSError, json.JSONDecodeError):  # not written yet (or mid-replace on a filesystem without atomic rename)
        return []


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
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = cfg.study_storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=spec.pruning["startup_trials"],
                                          n_warmup_steps=spec.pruning["warmup_epochs"])
              if spec.pruning else optuna.pruners.NopPruner())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True, direction="maximize",
                                pruner=pruner)
    # A fresh study draws from sampler_seed; a continued one from sampler_seed + its trial count, so that a
    # rerun does not repeat the first run's random draws.
    seed = None if spec.sampler_seed is None else spec.sampler_seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    distributions = _distributions(spec)
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
            with lock:
                if counted() >= target:
                    return
                trial = study.ask(distributions)
            values = _trial_values(spec, trial.params)
            flags = run_flags(base, values, sweep_dir, variant_tag(values))
            run_dir = _run_dir(flags, sweep_dir)
            trial.set_user_attr("run_dir", str(run_dir))
            state = _run_trial(trial, flags, run_dir, device, sweep_dir, children)
            logger.info("trial %d (%s): %s", trial.number, flags["tag"], state)

    _in_parallel(devices, work, children)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    result: dict[str, Any] = {"study": spec.name, "storage": storage, "trials": len(study.trials),
                              "complete": len(complete),
                              "pruned": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
                              "run_dirs": [str(Path(t.user_attrs["run_dir"])) for t in study.trials
                                           if t.user_attrs.get("run_dir") and Path(t.user_attrs["run_dir"]).is_dir()]}
    result["run_dirs"] = list(dict.fromkeys(result["run_dirs"]))
    if complete:
        best = study.best_trial
        flags = {k: v for k, v in run_flags(base, _trial_values(spec, best.params), sweep_dir, "best").items()
                 if k not in ("output", "tag", "no_progress")}
        command = "python " + shlex.join(["main.py", *train_command(flags)[2:]])
        result.update(best_trial=best.number, best_value=best.value, best_command=command)
        print(f"best trial {best.number}: val top-1 {best.value:.2f} ({best.user_attrs.get('run_dir')})\n{command}",
              flush=True)
    return result


def _run_trial(trial, flags: dict[str, Any], run_dir: Path, device: str | None, sweep_dir: Path,
               children: Children) -> str:
    """Run one trial's training process; report each new epoch's val top-1 to Optuna and stop the run
    (SIGTERM: it saves and exits) when the pruner says so. Tells the study how the trial ended."""
    from optuna.trial import TrialState
    reported = {"epochs": 0, "pruned": False}

    def watch(proc) -> None:
        history = _history(run_dir)
        for row in history[reported["epochs"]:]:
            if reported["pruned"]:
                break
            trial.report(row["val_top1"], row["epoch"])
            reported["epochs"] += 1
            if trial.should_prune():
                reported["pruned"] = True
                write_text_atomic(run_dir / PRUNED_FILE, f"pruned by the search after epoch {row['epoch'] + 1}\n")
                if proc.poll() is None:
                    proc.terminate()

    code = _launch(children, flags, device, sweep_dir, watch=watch)
    if reported["pruned"]:
        trial.study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    history = _history(run_dir)
    if code == 0 and history:
        (run_dir / PRUNED_FILE).unlink(missing_ok=True)
        trial.study.tell(trial, max(row["val_top1"] for row in history))
        return "complete"
    # 130: the run saved and stopped; -SIGTERM/-SIGINT: the signal the sweep forwarded landed where the run
    # has no handler (its final test): either way a rerun resumes or finishes it
    interrupted = code in (130, -signal.SIGTERM, -signal.SIGINT)
    if interrupted:
        trial.set_user_attr("interrupted", True)
    trial.study.tell(trial, state=TrialState.FAIL)
    return "interrupted" if interrupted else "failed"
