"""``ModelSpec``: a trained model's identity, written into its checkpoints and exports and read back once.

What a consumer needs to rebuild the network and feed it: the architecture, the class names (their
count is the head's size), the input size, the evaluation resize (letterbox or centre crop, with its
crop fraction), the input's channels (1 grey or 3 RGB) and bits per value (8 or 16), the normalisation
mean/std (one value per channel) and the head (``softmax`` or per-class sigmoid ``bce``, the training
criterion), the task (one class per image, or ``multi_label``: a set of labels, each with its decision
``thresholds``, 0.5 where none were tuned), the softmax ``temperature`` that ``--calibrate`` fitted (1.0:
the raw logits; every consumer divides the logits by it before the softmax), and the test size and crop
fraction of the pretrained weights it was fine-tuned from where their config has one (timm's
``test_input_size``/``test_crop_pct``, read by ``--use_test_size``; None otherwise). Inference reads it from the
checkpoint instead of from the command line; a checkpoint or export made before ``in_chans`` and ``bit_depth``
existed is 8-bit RGB, before ``multi_label`` single-label, before ``temperature`` uncalibrated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

# spec field -> the config key (flag) it is taken from
CONFIG_KEYS = {"arch": "arch", "image_size": "image_size", "eval_resize": "eval_resize", "crop_pct": "crop_pct",
               "mean": "mean", "std": "std", "head": "criterion", "interpolation": "interpolation",
               "in_chans": "in_chans", "bit_depth": "bit_depth", "multi_label": "multi_label"}
SIGMOID_HEADS = ("bce", "asl")
DEFAULT_THRESHOLD = 0.5  # a multi-label model's decision threshold per class unless --tune_thresholds chose one


@dataclass(frozen=True)
class ModelSpec:
    """A trained model's architecture, classes, input size and format, evaluation resize, mean/std and head."""
    arch: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_resize: str = "letterbox"
    crop_pct: float = 0.875
    head: str = "softmax"
    interpolation: str = "bilinear"
    in_chans: int = 3
    bit_depth: int = 8
    multi_label: bool = False
    thresholds: tuple[float, ...] = ()  # multi-label: one per class (empty: DEFAULT_THRESHOLD for every class)
    temperature: float = 1.0  # --calibrate's: probabilities are softmax(logits / temperature)
    # the pretrained weights' evaluation size and crop fraction (timm's test_input_size, test_crop_pct), each
    # recorded when the model trained at the weights' own input size; None: the weights define none
    test_image_size: tuple[int, int] | None = None
    test_crop_pct: float | None = None

    def __post_init__(self) -> None:  # lists (from YAML, JSON, a checkpoint) become tuples: frozen all the way
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "in_chans", int(self.in_chans))
        object.__setattr__(self, "bit_depth", int(self.bit_depth))
        object.__setattr__(self, "multi_label", bool(self.multi_label))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "temperature", float(self.temperature))
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature {self.temperature} is not a positive number (the logits are divided by it)")
        if self.test_image_size is not None:
            object.__setattr__(self, "test_image_size", tuple(int(s) for s in self.test_image_size))
        if self.test_crop_pct is not None:
            object.__setattr__(self, "test_crop_pct", float(self.test_crop_pct))
        if self.thresholds and (not self.multi_label or len(self.thresholds) != len(self.class_names)):
            raise ValueError(f"{len(self.thresholds)} decision thresholds for a "
                             f"{'multi-label' if self.multi_label else 'single-label'} model of "
                             f"{len(self.class_names)} classes: a multi-label model has one per class")
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(f"mean {list(self.mean)} and std {list(self.std)} need one value per input channel "
                             f"(in_chans {self.in_chans})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def decision_thresholds(self) -> list[float]:
        """A multi-label model's threshold per class: the tuned ones, else 0.5 for every class."""
        return list(self.thresholds) or [DEFAULT_THRESHOLD] * self.num_classes

    @property
    def sigmoid(self) -> bool:
        """Whether the outputs are per-class sigmoid probabilities (a multi-label model, or a ``bce``/``asl``
        head), not a softmax over the classes."""
        return self.multi_label or self.head in SIGMOID_HEADS

    @property
    def has_test_size(self) -> bool:
        """Whether the weights it was fine-tuned from define a test size or a test crop fraction."""
        return self.test_image_size is not None or self.test_crop_pct is not None

    def at_test_size(self) -> "ModelSpec":
        """This spec evaluating at the recorded test size and crop fraction (each where recorded; else the
        training one), as timm's ``resolve_data_config(use_test_size=True)``."""
        return replace(self, image_size=self.test_image_size or self.image_size,
                       crop_pct=self.crop_pct if self.test_crop_pct is None else self.test_crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, strings and numbers (safe for ``torch.load(weights_only=True)``, YAML and JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """The spec :meth:`to_dict` wrote."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def from_config(cls, config: Mapping[str, Any], class_names: Sequence[str]) -> "ModelSpec":
        """The spec of a model trained with ``config`` (a run's flags as a dict, e.g. an old checkpoint's
        ``config``) on ``class_names``; unset resize, crop fraction and head take their defaults."""
        values = {field: config.get(key) for field, key in CONFIG_KEYS.items()}
        return cls(class_names=tuple(class_names), **{k: v for k, v in values.items() if v is not None})

    def config_values(self) -> dict[str, Any]:
        """The spec as the config keys it comes from (``head`` as ``criterion``), lists for tuples."""
        data = self.to_dict()
        return {key: data[field] for field, key in CONFIG_KEYS.items()}
