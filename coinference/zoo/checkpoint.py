"""Loading state-dict checkpoints safely (``weights_only=True``) with clear reports of what does not fit."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from coinference.errors import CheckpointError

_MAX_LISTED = 3


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (the weights hash recorded in variant specs)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a plain state dict, never unpickling arbitrary objects.

    Accepts a bare state dict or a dict holding one under ``state_dict`` or ``model``; strips a ``module.``
    prefix (``nn.DataParallel``).

    Raises:
        CheckpointError: missing, corrupt or unsafe file, or one that holds no state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbage/unsafe files
        text = " ".join(str(e).split())
        if "weights only load failed" in text.lower():
            # torch's message suggests weights_only=False, which would run code from a file we do not trust.
            why = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation")[0].strip()
            raise CheckpointError(
                f"corrupt or unsafe checkpoint {p}: not a plain state dict of tensors ({why or 'unreadable'}); "
                "refused, since loading anything else would run code from the file"
            ) from None
        raise CheckpointError(f"corrupt or unsafe checkpoint {p}: {text[:200] or type(e).__name__}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {p} holds no state dict of tensors")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _first(keys: list[str]) -> str:
    more = f", … (+{len(keys) - _MAX_LISTED})" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_weights(model: nn.Module, path: str | Path, model_name: str = "model") -> None:
    """Load the checkpoint at ``path`` into ``model`` in place.

    Missing ``num_batches_tracked`` buffers are tolerated (old checkpoints lack them); any other missing,
    unexpected or wrongly shaped key is an error that names the keys.

    Raises:
        CheckpointError: the file cannot be read or does not fit the architecture.
    """
    sd = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items() if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches ({_first(wrong)})")
        raise CheckpointError(f"checkpoint {path} does not fit {model_name}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)
