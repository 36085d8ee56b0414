"""Reading a class-index file: the class names of a model whose checkpoint carries none."""
from __future__ import annotations

import json
from pathlib import Path


def read_class_indices(path: str | Path) -> list[str]:
    """Class names in label order from a JSON file.

    Accepted: a list of names (``["cat", "dog"]``), or a map from index to name (``{"0": "cat", "1": "dog"}``)
    whose keys are exactly 0..K-1; a name may also be a list whose last item is the name, as in Keras'
    ``imagenet_class_index.json`` (``{"0": ["n01440764", "tench"]}``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--class_indices: {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--class_indices: {path} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        try:
            by_index = {int(k): v for k, v in data.items()}
        except ValueError:
            raise ValueError(f"--class_indices: {path}: keys must be class indices 0..K-1, "
                             f"got {sorted(data)[:5]}") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"--class_indices: {path}: keys must be exactly 0..{len(by_index) - 1}, "
                             f"got {sorted(by_index)[:10]}")
        data = [by_index[i] for i in range(len(by_index))]
    if not isinstance(data, list) or not data:
        raise ValueError(f"--class_indices: {path} must hold a non-empty list of names or an {{index: name}} map")
    names = [str(v[-1]) if isinstance(v, list) and v else str(v) for v in data]
    if len(set(names)) != len(names):
        raise ValueError(f"--class_indices: {path} holds duplicate class names")
    return names
