"""Pruned checkpoints: a plain dict of tensors and simple values, loadable with ``torch.load(weights_only=True)``.

Format ``coinference.pruned/1`` (docs/ARCHITECTURE.md, "Pruning"):

- ``format``, ``method`` ("incremental" | "two-step"), ``model`` (zoo name), ``split`` (split point name),
  ``num_classes``, ``input_shape`` [C, H, W], ``feature_shape``, ``sparsity``, ``activation_sparsity``,
  ``whole_network`` (bool): metadata;
- ``state_dict``: the full masked model at its dense shapes, pruned entries zero (any loader of zoo
  checkpoints reads it, e.g. ``--weights``);
- ``groups``: channel-group name → int64 indices of its kept channels;
- ``kept_channels``: int64 indices of the transmitted feature channels;
- ``head_state_dict``: the shrunk head's own state dict (what a device would load).

:func:`load_pruned` rebuilds the shrunk head from ``state_dict`` + ``groups`` + ``kept_channels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from coinference.errors import CheckpointError
from coinference.prune.device import PrunedDevice, assemble

FORMAT = "coinference.pruned/1"


def save_pruned(pruned: PrunedDevice, path: str | Path, model_name: str) -> Path:
    """Write ``pruned`` to ``path`` (parents created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    linear = [m for m in pruned.model.modules() if isinstance(m, torch.nn.Linear)]
    blob: dict[str, Any] = {
        "format": FORMAT,
        "method": pruned.method,
        "model": model_name,
        "split": pruned.split.name,
        "num_classes": linear[-1].out_features if linear else 0,
        "input_shape": list(pruned.input_shape),
        "feature_shape": list(pruned.feature_shape),
        "sparsity": pruned.sparsity,
        "activation_sparsity": pruned.activation_sparsity,
        "whole_network": pruned.whole_network,
        "state_dict": {k: v.detach().clone() for k, v in pruned.model.state_dict().items()},
        "groups": {k: v.clone() for k, v in pruned.group_keep.items()},
        "kept_channels": pruned.kept_channels.clone(),
        "head_state_dict": {k: v.detach().clone() for k, v in pruned.head.state_dict().items()},
    }
    torch.save(blob, p)
    return p


def load_pruned(path: str | Path) -> PrunedDevice:
    """Read a pruned checkpoint (``weights_only=True``) and rebuild its :class:`PrunedDevice`.

    Raises:
        CheckpointError: unreadable file, another format, or weights that do not fit.
    """
    from coinference.zoo import build_model

    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"pruned checkpoint not found: {p}")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbage/unsafe files
        raise CheckpointError(f"corrupt or unsafe pruned checkpoint {p}: {type(e).__name__}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{p} is not a pruned checkpoint ({FORMAT}); format: {got!r}")
    shape = tuple(int(d) for d in blob["input_shape"])
    model = build_model(blob["model"], num_classes=int(blob["num_classes"]) or None, in_channels=shape[0])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{p} does not fit {blob['model']}: {str(e).splitlines()[0]}") from None
    out = assemble(
        model,
        model.split_point(blob["split"]),
        dict(blob["groups"]),
        blob["kept_channels"],
        (shape[0], shape[1], shape[2]),
        sparsity=float(blob["sparsity"]),
        activation_sparsity=float(blob["activation_sparsity"]),
        method=str(blob["method"]),
        whole_network=bool(blob["whole_network"]),
    )
    out.head.load_state_dict(blob["head_state_dict"])
    return out
