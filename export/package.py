"""``--package CKPT DIR``: a trained model as a Hub package folder (``models.package`` defines its files), its
model card, and ``--push_to_hub REPO``'s upload through ``huggingface_hub``.

The folder is written complete in a scratch folder beside ``DIR`` and renamed into place
(``utils.atomic.replace_folder``); an existing ``DIR`` is replaced only when it is empty or a package this
project wrote (config.json with ``model_spec``). Before the rename, timm loads the scratch folder
(``models.package.timm_check``) and the config.json says whether timm builds the same model or only our loader
does, and why, and whether timm's evaluation transform gives the model's input (``preprocessing_difference``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from dataloader.transforms import center_crop_resize
from models.package import (
    CARD_FILE,
    CONFIG_FILE,
    PACKAGE_FILES,
    WEIGHTS_FILE,
    package_config,
    timm_candidate,
    timm_check,
)
from models.registry import model_family
from models.spec import ModelSpec
from utils.atomic import replace_folder, temp_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from utils.checkpoint import safetensors_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class RunFacts:
    """What the card says about the run that trained the model (all empty for a checkpoint outside a run)."""
    run_dir: Path | None = None
    data: str = ""
    command: str = ""
    metrics: dict[str, Any] | None = None
    test_table: str = ""
    exports: Sequence[str] = ()


def check_target(out: Path) -> None:
    """``out`` may be written: absent, empty, or a package this project wrote (the package's files and nothing
    else, its config.json holding our ``model_spec``), which is replaced. Any other folder (a downloaded Hub
    snapshot, a folder of only a README.md) is refused, never silently replaced."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--package: {out} is a file; give a folder name for the package")
    if not out.is_dir() or not any(out.iterdir()):
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in PACKAGE_FILES)
    if others:
        raise FileExistsError(f"--package: {out} exists and holds other files than a package's "
                              f"({', '.join(others[:5])}); choose another DIR or remove it")
    if not _written_here(out / CONFIG_FILE):
        raise FileExistsError(f"--package: {out} exists and is not a package --package wrote (its {CONFIG_FILE} "
                              f"is missing or has no model_spec); choose another DIR or remove it")


def _written_here(config: Path) -> bool:
    """Whether ``config`` is a config.json that --package wrote: JSON with our ``model_spec`` object."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model_spec"), dict)


def preprocessing_difference(spec: ModelSpec) -> str:
    """'' when timm's evaluation transform of the package (``create_transform(**resolve_data_config(
    pretrained_cfg=...))``) gives this model's input (to one level of 255: PIL's resampling, not torchvision's),
    else how it differs (tests/unit/test_package.py feeds both a non-square image)."""
    if spec.eval_resize == "letterbox":
        return ("timm's crop_mode 'border' pads with the mean colour (fill round(255 * mean)), this model's "
                "letterbox pads with 0")
    sizes = [spec.image_size, *([spec.test_image_size] if spec.test_image_size else [])]
    if any(h != w for h, w in sizes):
        return ("for a non-square input size timm's crop_mode 'center' resizes the image to cover "
                "floor(size / crop_pct) in both sides (ResizeKeepRatio), this model resizes its shorter side to "
                "floor(min(H, W) / crop_pct)")
    return ""


def eval_transform_text(spec: ModelSpec) -> str:
    """The model's evaluation transform in words, exactly as ``dataloader.transforms.create_transform`` does it."""
    h, w = spec.image_size
    if spec.eval_resize == "center_crop":
        geometry = (f"resize the shorter side to {center_crop_resize(spec.image_size, spec.crop_pct)} "
                    f"(floor(min(H, W) / crop_pct), crop_pct {spec.crop_pct:g}), centre crop {h} x {w} "
                    f"(padding with 0 where the resized image is smaller)")
    else:
        geometry = (f"letterbox: resize keeping the aspect ratio to fit {h} x {w} (the longer side to its target), "
                    f"then pad centred to {h} x {w} with 0 (black)")
    return f"{geometry}; {spec.interpolation} interpolation, antialiased"


def package_note(spec: ModelSpec, load_reason: str) -> str:
    """config.json's note: why timm cannot load the package, and whether timm's transform is the model's."""
    difference = preprocessing_difference(spec)
    parts = [f"not loadable by timm: {load_reason}"] if load_reason else []
    if difference:
        parts.append(f"timm's evaluation transform from this pretrained_cfg differs: {difference}; use the "
                     f"model's own: {eval_transform_text(spec)}")
    return "; ".join(parts)


def write_package(model: nn.Module, spec: ModelSpec, out: str | Path, card: str,
                  repo: str | None = None) -> dict[str, Any]:
    """Write the package folder ``out``: weights, config.json (timm-loadable where timm's model gives our
    logits) and ``card`` as README.md (its ``{timm_note}`` filled in; ``repo``: the Hub repo it goes to).
    Returns config.json's content."""
    out = Path(out)
    check_target(out)
    candidate = timm_candidate(spec.arch)
    with temp_dir(out) as scratch:
        folder = scratch / "package"
        folder.mkdir()
        write_bytes_atomic(folder / WEIGHTS_FILE, safetensors_checkpoint(model.state_dict(), {"arch": spec.arch}))
        write_json_atomic(folder / CONFIG_FILE, package_config(spec, candidate))
        reason = timm_check(folder, model, spec) if candidate else \
            f"timm has no model of {model_family(spec.arch)}'s {spec.arch} (no timm model of that name)"
        config = package_config(spec, None if reason else candidate, note=package_note(spec, reason))
        write_json_atomic(folder / CONFIG_FILE, config)
        write_text_atomic(folder / CARD_FILE, card.replace("{timm_note}", loading_text(config, out.name, repo,
                                                                                       reason)))
        replace_folder(folder, out)
    if config["timm_loadable"]:
        logger.info("package %s: timm loads it as timm.create_model('local-dir:%s', pretrained=True) (checked: "
                    "the same logits)", out, out)
    else:
        logger.warning("package %s: not loadable by timm: %s; load it with models.package.load_package('%s'), or "
                       "fine-tune from it with --pretrained local-dir:%s", out, reason, out, out)
    difference = preprocessing_difference(spec)
    if difference:
        logger.warning("package %s: timm's evaluation transform is not the model's (%s); config.json's note and "
                       "the card give the model's own", out, difference)
    return config


def loading_text(config: dict[str, Any], name: str, repo: str | None = None, reason: str = "") -> str:
    """The card's paragraph on loading the model: timm's one line, or our loader and why timm cannot."""
    if config["timm_loadable"]:
        return (f"timm builds this model ({config['architecture']}) with the same logits (checked when the package "
                f"was written):\n\n```python\nimport timm\nmodel = timm.create_model('hf-hub:{repo or '<repo>'}', "
                f"pretrained=True)  # or 'local-dir:{name}'\n```\n")
    return (f"**timm cannot load this package**: {reason}. Load it with this project's loader:\n\n"
            f"```python\nfrom models.package import load_package\nmodel, spec = load_package('{name}')\n```\n")


def run_facts(checkpoint: str | Path) -> RunFacts:
    """The run folder of ``checkpoint`` (``<run>/checkpoints/x.pth`` beside ``<run>/config.yaml``) read for the
    card: data, the command that trains it again, the test metrics and per-class table, the export files."""
    from config import build_parser, flag_defaults, flags_to_argv
    from experiments.runs import NOT_SETTINGS, readable_run
    path = Path(checkpoint).resolve()
    run_dir = path.parent.parent
    if path.parent.name != "checkpoints" or not (run_dir / "config.yaml").is_file():
        return RunFacts()
    record = readable_run(run_dir)
    if record is None:
        return RunFacts(run_dir)
    defaults, parser = flag_defaults(), build_parser()
    known = {a.dest for a in parser._actions}
    flags = {k: v for k, v in record.config.items() if k in known and k not in NOT_SETTINGS and k != "data"
             and (v != defaults.get(k) or k == "arch")}
    command = " ".join(["python main.py --train --data", str(record.config.get("data", "DATA")),
                        *flags_to_argv(parser, flags)])
    exports = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "export").rglob("*") if p.is_file()) \
        if (run_dir / "export").is_dir() else []
    return RunFacts(run_dir, str(record.config.get("data", "")), command, record.test or None,
                    _test_table(run_dir / f"eval_{(record.test or {}).get('test_split', 'test')}" / "metrics.json"),
                    exports)


def _test_table(path: Path) -> str:
    """The final test's per-class table (markdown) from its report's metrics.json, '' when there is none."""
    try:
        per_class = json.loads(path.read_text())["per_class"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not isinstance(per_class, dict) or not per_class:
        return ""
    columns = list(next(iter(per_class.values())))

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    rows = [f"| {name} | " + " | ".join(cell(row.get(c)) for c in columns) + " |" for name, row in per_class.items()]
    return "\n".join([f"| class | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|", *rows])


def model_card(spec: ModelSpec, checkpoint: str | Path, facts: RunFacts) -> str:
    """README.md: Hub front matter, the model (architecture, classes, input, preprocessing), how to load it
    (``{timm_note}``, filled by :func:`write_package`), the data, the command, the metrics and exports."""
    difference = preprocessing_difference(spec)
    timm_transform = (f"**differs**: {difference}; give the model its own transform above" if difference else
                      "the same input (up to one level of 255: PIL's resampling)")
    lines = ["---", "library_name: timm", "pipeline_tag: image-classification", "tags:", "- image-classification",
             "- timm", "---", f"# {spec.arch} ({spec.num_classes} classes)", "",
             f"Trained with this project (`{Path(checkpoint).name}`). Files: `{WEIGHTS_FILE}` (weights), "
             f"`{CONFIG_FILE}` (timm's pretrained_cfg form, with the project's model spec), `{CARD_FILE}`.", "",
             "## Model", f"- architecture: `{spec.arch}`", f"- classes: {', '.join(spec.class_names)}",
             f"- input: {spec.in_chans} x {spec.image_size[0]} x {spec.image_size[1]}, {spec.bit_depth}-bit, "
             f"{'RGB' if spec.in_chans == 3 else 'grey'}",
             f"- evaluation transform: {eval_transform_text(spec)}",
             f"- timm's transform (`create_transform(**resolve_data_config(pretrained_cfg=...))`): {timm_transform}",
             f"- normalisation: mean {list(spec.mean)}, std {list(spec.std)}",
             f"- head: {spec.head}{', multi-label' if spec.multi_label else ''}"
             + (f", temperature {spec.temperature:g}" if spec.temperature != 1.0 else ""), "",
             "## Loading", "{timm_note}"]
    if facts.run_dir is None:
        lines += ["## Training", "The checkpoint was not in a run folder: no data, command or metrics recorded.", ""]
        return "\n".join(lines)
    lines += ["## Training", f"- data: `{facts.data}`", "", "```bash", facts.command, "```", ""]
    if facts.metrics:
        lines += ["## Metrics", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in facts.metrics.items() if k != "run_dir" and v is not None]
        lines.append("")
    if facts.test_table:
        lines += ["## Test set, per class", facts.test_table, ""]
    lines += ["## Exports in the run folder", *([f"- `{e}`" for e in facts.exports] or ["none"]), ""]
    return "\n".join(lines)


def push_folder(folder: str | Path, repo_id: str) -> str:
    """Upload the package folder to the Hub repo ``repo_id`` (created when missing) with ``huggingface_hub``
    (``HfApi.create_repo`` + ``upload_folder``; the token and endpoint as huggingface_hub reads them:
    ``HF_TOKEN`` or ``hf auth login``, ``HF_ENDPOINT``). Returns the commit URL."""
    from huggingface_hub import HfApi, constants
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=f"Add {Path(folder).name} (main.py --package)",
                                   allow_patterns=list(PACKAGE_FILES))
    except Exception as e:  # huggingface_hub's HTTP errors (401: no token), the HTTP client's connection errors
        message = " ".join(str(e).split())[:400]
        raise HubUploadError(f"--push_to_hub {repo_id}: the upload to {constants.ENDPOINT} failed "
                             f"({type(e).__name__}: {message}); the package is complete in {folder}: set HF_TOKEN "
                             f"(or run hf auth login) and check the network, then run the command again") from None
    logger.info("pushed %s to %s (%s)", folder, url, commit.commit_url)
    return commit.commit_url


class HubUploadError(ValueError):
    """The package could not be uploaded (a ValueError: main.py prints it as one line, the user's to fix)."""
