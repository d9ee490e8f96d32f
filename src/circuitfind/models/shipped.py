"""The models the project trained itself, their weights inside the package (``weights/NAME.pt``,
written by ``scripts/train_NAME.py``)."""

from __future__ import annotations

import pathlib
from importlib.resources import files

import torch

SHIPPED_FORMAT_VERSION = 1


def shipped_weights_path(name: str) -> pathlib.Path:
    """Where the package keeps the weights of the self-trained model ``name`` (may not exist)."""
    return pathlib.Path(str(files("circuitfind.models") / "weights" / f"{name}.pt"))


def read_shipped(name: str) -> dict:
    """The shipped weights file of ``name``: ``cfg`` (HookedTransformerConfig fields), ``state_dict``
    and whatever its training script recorded (``bos``, training settings, induction measurements)."""
    path = shipped_weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train it with `python scripts/train_{name.split('_')[0]}.py`")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format_version") != SHIPPED_FORMAT_VERSION or data.get("name") != name:
        raise ValueError(f"{path}: expected format_version {SHIPPED_FORMAT_VERSION} for model {name!r}, got "
                         f"format_version {data.get('format_version')!r} for {data.get('name')!r}")
    return data
