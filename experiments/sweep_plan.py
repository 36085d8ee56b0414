"""Sweep files and the processes that run their variants (no torch, no Optuna here): the config side of
``--sweep``, as ``applications.setup.strategies`` is the config side of training.

A sweep file is YAML::

    name: lr_arch                 # the sweep folder <output>/<name> (default: the file's name)
    base:                         # flags of every run; `config:` names a YAML config they start from
      config: z_task_shell/configs/digits_resnet18.yaml
      epochs: 10
    grid:                         # every combination of these values ...
      lr: [0.05, 0.1]
      arch: [resnet18, resnet50]
    variants:                     # ... or named variants (flags on top of the base) ...
      baseline: {}
      bce: {criterion: bce, label_smoothing: 0}
    search:                       # ... or an Optuna search space (with trials:)
      lr: {low: 1.0e-3, high: 0.3, log: true}
      optimizer: [sgd, adamw]
    trials: 20
    sampler_seed: 0               # TPE's seed (default: none)
    pruning: {startup_trials: 5, warmup_epochs: 1}   # median pruning; false turns it off

Each variant is an ordinary ``main.py --train`` run in ``<sweep folder>/<arch>/<tag>``, with a tag
made from its values (``lr-0.05_arch-resnet18``; a search trial's floats to 4 significant digits) or its name.
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from config import ConfigError, build_parser, coerce_flag_values, finite_float, flag_dest, load_yaml_defaults
from utils.misc import StopSignals

logger = logging.getLogger(__name__)

KINDS = ("grid", "variants", "search")
TOP_KEYS = {"name", "base", "trials", "sampler_seed", "pruning", *KINDS}
MAX_TAG = 80
MAX_VARIANTS = 1000  # a grid of more combinations is refused unless --max_variants raises the limit


@dataclass
class Variant:
    """One run of a sweep: its tag and the flag values it sets on top of the base (config keys)."""
    tag: str
    values: dict[str, Any]


@dataclass
class SearchParam:
    """One searched flag: a number range (``low``, ``high``, ``log``, ``step``; an int flag gives ints)
    or a list of choices."""
    dest: str
    kind: str  # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)


@dataclass
class SweepSpec:
    """A parsed, checked sweep file."""
    name: str
    path: Path
    base: dict[str, Any]
    variants: list[Variant] = field(default_factory=list)
    search: list[SearchParam] = field(default_factory=list)
    trials: int | None = None
    sampler_seed: int | None = None
    pruning: dict[str, int] | None = None
    kind: str = "grid"  # one of KINDS


def load_sweep(path: str | Path, max_variants: int = MAX_VARIANTS) -> SweepSpec:
    """Read and check a sweep file; every error names the file, the key and what is allowed. A grid of
    more than ``max_variants`` combinations is refused before it is expanded."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--sweep: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--sweep: {path} must hold a mapping with base: and one of grid:, variants:, search:")
    unknown = sorted(set(map(str, data)) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"--sweep: {path}: unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    kinds = [k for k in KINDS if k in data]
    if len(kinds) != 1:
        raise ConfigError(f"--sweep: {path} needs exactly one of grid:, variants:, search: (found "
                          f"{', '.join(kinds) or 'none'})")
    parser = build_parser()
    name = str(data.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name in (".", ".."):
        raise ConfigError(f"--sweep: {path}: name {name!r} may hold letters, digits, '_', '.' and '-' only")
    spec = SweepSpec(name, path, _base_values(parser, data.get("base") or {}, path))
    where = f"--sweep: {path}"
    kind = spec.kind = kinds[0]
    body = data[kind]
    if kind == "grid":
        spec.variants = expand_grid(parser, _mapping(body, f"{where}: grid"), f"{where}: grid", max_variants)
    elif kind == "variants":
        spec.variants = _named_variants(parser, _mapping(body, f"{where}: variants"), f"{where}: variants")
    else:
        spec.search = [_search_param(parser, key, value, f"{where}: search")
                       for key, value in _mapping(body, f"{where}: search").items()]
        spec.trials = _positive_int(data.get("trials"), f"{where}: trials")
        spec.sampler_seed = _int(data.get("sampler_seed"), f"{where}: sampler_seed", 0)
        pruning = data.get("pruning")
        if pruning is not False:
            pruning = {} if pruning is None else _mapping(pruning, f"{where}: pruning")
            bad = sorted(set(pruning) - {"startup_trials", "warmup_epochs"})
            if bad:
                raise ConfigError(f"{where}: pruning: unknown key(s) {bad}; allowed: startup_trials, warmup_epochs")
            spec.pruning = {key: _int(pruning.get(key, default), f"{where}: pruning: {key}", 0)
                            for key, default in (("startup_trials", 5), ("warmup_epochs", 1))}
    for key in ("trials", "sampler_seed", "pruning"):
        if key in data and kind != "search":
            raise ConfigError(f"{where}: {key}: is a search option (this sweep has {kind}:)")
    return spec


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a non-empty mapping, got {value!r}")
    return value


def _positive_int(value: Any, where: str) -> int | None:
    return _int(value, where, 1)


def _int(value: Any, where: str, minimum: int) -> int | None:
    """``value`` when it is None or an integer >= ``minimum``, else a ConfigError naming ``where``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _refuse_nulls(parser, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` (config keys -> converted values) unless one is null for a flag whose default is not:
    YAML's null (``lr: [null]``, ``lr: ~``) is no value of such a flag, and would fail every run."""
    for dest, value in values.items():
        default = parser.get_default(dest)
        if value is None and default is not None:
            where = where if where.endswith(f": {dest}") else f"{where}: {dest}"
            raise ConfigError(f"{where}: null is not a value of --{dest}; give a value, or leave the key out for "
                              f"its default ({default!r})")
    return values


def cut_list(items: Iterable[Any], shown: int = 10) -> str:
    """``items`` joined by commas, the first ``shown`` only, then "... and N more"."""
    items = [str(i) for i in items]
    more = f", ... and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _base_values(parser, base: Any, path: Path) -> dict[str, Any]:
    """The base flags: those of its ``config:`` file (resolved like ``--config``), then its own keys."""
    if not isinstance(base, dict):
        raise ConfigError(f"--sweep: {path}: base: expected a mapping of flags, got {base!r}")
    base = dict(base)
    values = {}
    if base.get("config") is not None:
        values.update(load_yaml_defaults(parser, str(base.pop("config"))))
    values.update(coerce_flag_values(parser, base, f"--sweep: {path}: base", f"{path}: base"))
    return _refuse_nulls(parser, values, f"--sweep: {path}: base")


def expand_grid(parser, grid: dict, where: str, max_variants: int = MAX_VARIANTS) -> list[Variant]:
    """Every combination of the grid's values (the first key varies slowest), one variant each; more than
    ``max_variants`` combinations are refused (counted, not expanded)."""
    columns = []
    for key, values in grid.items():
        dest = flag_dest(parser, key, where)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {key}: expected a list of values to try, got {values!r}")
        columns.append([(dest, v) for v in coerce_values(parser, dest, values, f"{where}: {key}")])
    count = math.prod(len(c) for c in columns)
    if count > max_variants:
        raise ConfigError(f"{where}: {count} combinations ({' x '.join(str(len(c)) for c in columns)}) are more "
                          f"than the limit of {max_variants}; trim the grid, or raise the limit with "
                          f"--max_variants {count}")
    variants = []
    for combo in itertools.product(*columns):
        values = dict(combo)
        variants.append(Variant(variant_tag(values), values))
    return variants


def coerce_values(parser, dest: str, values: list, where: str) -> list[Any]:
    """Each value converted and checked as the flag ``dest`` would convert it (null refused)."""
    return [_refuse_nulls(parser, coerce_flag_values(parser, {dest: v}, where, where), where)[dest] for v in values]


def _named_variants(parser, variants: dict, where: str) -> list[Variant]:
    out = []
    for name, flags in variants.items():
        flags = flags or {}
        if not isinstance(flags, dict):
            raise ConfigError(f"{where}: {name}: expected a mapping of flags (or {{}}), got {flags!r}")
        tag = sanitize_tag(str(name))
        if tag != str(name) or tag.startswith("-"):
            raise ConfigError(f"{where}: variant name {name!r} becomes a run tag: use letters, digits, '_', '.' "
                              f"and '-' only, not starting with '-' (e.g. {tag.lstrip('-') or 'run'!r})")
        values = coerce_flag_values(parser, flags, f"{where}: {name}", f"{where}: {name}")
        out.append(Variant(tag, _refuse_nulls(parser, values, f"{where}: {name}")))
    return out


def _search_param(parser, key: str, value: Any, where: str) -> SearchParam:
    dest = flag_dest(parser, key, where)
    action = next(a for a in parser._actions if a.dest == dest)
    if isinstance(value, list) and value:
        return SearchParam(dest, "choice", choices=coerce_values(parser, dest, value, f"{where}: {key}"))
    if isinstance(value, dict) and {"low", "high"} <= set(value) and set(value) <= {"low", "high", "log", "step"}:
        if action.type not in (int, finite_float) or action.nargs not in (None, "?"):
            raise ConfigError(f"{where}: {key}: a range needs a number flag; give a list of choices instead")
        try:
            low, high = float(value["low"]), float(value["high"])
            step = None if value.get("step") is None else float(value["step"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}: low, high and step must be numbers, got {value!r}") from None
        if not all(map(math.isfinite, (low, high, 0.0 if step is None else step))) or (step is not None and step <= 0):
            raise ConfigError(f"{where}: {key}: low and high must be finite numbers and step (if given) a number "
                              f"> 0, got {value!r}")
        log = value.get("log", False)
        if not isinstance(log, bool) or not low < high or (log and low <= 0) or (log and step):
            raise ConfigError(f"{where}: {key}: need low < high, log true/false (log needs low > 0 and no step), "
                              f"got {value!r}")
        return SearchParam(dest, "int" if action.type is int else "float", low, high, log, step)
    raise ConfigError(f"{where}: {key}: expected {{low: L, high: H, log: true|false}} or a list of choices, "
                      f"got {value!r}")


def sanitize_tag(text: str) -> str:
    """``text`` with every character a run tag may not hold replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", text).strip(".") or "run"


def variant_tag(values: dict[str, Any], digits: int | None = None) -> str:
    """A run tag made from flag values (``lr-0.05_arch-resnet18_ghm_loss-true``); long ones end in a hash
    of the exact values. Exact by default (floats keep all their digits), so equal values give the same tag
    and other values another; ``digits``: floats to that many significant digits (``lr-0.02288``), so
    values that round alike give the same tag (the search tells its trials apart: ``sweep._trial_flags``)."""
    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "-".join(text(x) for x in v)
        if isinstance(v, float):
            return repr(v) if digits is None else f"{v:.{digits}g}".replace("e+", "e")  # 1.2e05, not 1.2e-05
        return str(v)
    tag = sanitize_tag("_".join(f"{k}-{text(v)}" for k, v in values.items()) or "base")
    if len(tag) > MAX_TAG:
        tag = tag[:MAX_TAG - 9] + "-" + hashlib.sha1(repr(sorted(values.items())).encode()).hexdigest()[:8]
    return tag


def parse_devices(text: str | None) -> list[str | None]:
    """``--sweep_devices``: ``"0,1"`` -> ``["0", "1"]``; None -> one slot on the default device."""
    return [d.strip() for d in text.split(",")] if text else [None]


def device_flags_env(device: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The flags and environment that put a run on a device slot: ``cpu`` -> ``--device cpu``; a CUDA
    index -> ``CUDA_VISIBLE_DEVICES=<index>`` and ``--device cuda``; None -> the run's own choice."""
    if device is None:
        return {}, {}
    if device == "cpu":
        return {"device": "cpu"}, {"CUDA_VISIBLE_DEVICES": ""}
    return {"device": "cuda"}, {"CUDA_VISIBLE_DEVICES": device}


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the sweep dies in any way, SIGKILL included
    (Linux's ``PR_SET_PDEATHSIG``; None elsewhere). The signal comes when the thread that started the
    child ends: each child is started and waited for by one thread, so that is when the sweep ends."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the sweep died before prctl: the signal will not come
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


class Children:
    """The training processes a sweep runs: each started in its own session and process group (a Ctrl-C
    in the terminal reaches the sweep alone), and signalled by it: ``stop()`` sends each a SIGTERM, on
    which it saves its state and exits 130. They die with the sweep: ``close()`` (on every exit of the
    sweep) stops them and kills the groups of those that do not end in time, and a sweep killed outright
    takes them along through ``PR_SET_PDEATHSIG``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self.stopping = threading.Event()
        self._preexec = _die_with_parent()

    def run(self, argv: list[str], env: dict[str, str], log_path: Path,
            watch: Callable[[subprocess.Popen], None] | None = None, poll: float = 0.5) -> int:
        """Run ``argv`` to its end with stdout and stderr into ``log_path``; ``watch(proc)`` is called
        every ``poll`` seconds while it runs (and once after). Returns its exit code."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log, self._lock:
            if self.stopping.is_set():
                return 130
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                    start_new_session=True, preexec_fn=self._preexec)
            self._live.add(proc)
        try:
            while True:
                try:
                    proc.wait(timeout=poll)
                    break
                except subprocess.TimeoutExpired:
                    if watch is not None:
                        watch(proc)
            if watch is not None:
                watch(proc)
            return proc.returncode
        finally:
            with self._lock:
                self._live.discard(proc)

    def stop(self) -> None:
        with self._lock:
            self.stopping.set()
            for proc in self._live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def close(self, grace: float = 60.0) -> None:
        """Stop the children still running and wait up to ``grace`` seconds for them to save and exit;
        kill the process group (the run and its data workers) of any still there after that."""
        with self._lock:
            live = [proc for proc in self._live if proc.poll() is None]
        if not live:
            return
        self.stop()
        for proc in live:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not stop within %.0f s of a SIGTERM: killed", proc.pid, grace)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


class ForwardSignals(StopSignals):
    """While the block runs, SIGINT, SIGTERM and SIGHUP (the terminal closed) to the sweep stop its
    children (see ``Children.stop``); on leaving it, ``Children.close`` ends any still running."""

    def __init__(self, children: Children) -> None:
        super().__init__()
        self.children = children

    def __enter__(self) -> "ForwardSignals":
        super().__enter__()
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.children.close()
        finally:
            super().__exit__(*exc)

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("%s received: stopping the running variants (each saves and exits; rerun the sweep "
                       "to continue)", signal.Signals(signum).name)
        self.children.stop()


def train_command(flags: dict[str, Any]) -> list[str]:
    """``python main.py --train`` with ``flags`` (config keys -> values) as command-line flags."""
    from config import flags_to_argv
    return [sys.executable, str(Path(__file__).resolve().parent.parent / "main.py"), "--train",
            *flags_to_argv(build_parser(), flags)]


def last_error(log_path: Path) -> str:
    """The most telling line of a child's output: its last ERROR line, else its last line."""
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if " ERROR " in line]
    return (errors or lines or [""])[-1].strip()
