"""Serialising a fitted codec's entropy-coder tables (symbol statistics live outside the module's state dict).

``coder_state(codec)`` → a dict of tensors and strings (loadable with ``torch.load(weights_only=True)``);
``load_coder_state(codec, state)`` puts the same tables back, so a reloaded codec emits identical bytes.
"""

from __future__ import annotations

import torch

from coinference.codec.base import FeatureCodec
from coinference.codec.entropy import CategoricalCoder
from coinference.codec.huffman import HuffmanCoder
from coinference.errors import CheckpointError


def coder_state(codec: FeatureCodec) -> dict[str, object]:
    """The codec's fitted coder tables ({} for codecs without one, e.g. raw bytes or analog JSCC)."""
    coder = getattr(codec, "coder", None)
    if isinstance(coder, CategoricalCoder):
        return {
            "coder": "categorical",
            # the weights as the coder was given them: normalising them again on loading gives the same bits
            "probs": torch.from_numpy(coder.weights.copy()),
            "contexts": torch.from_numpy(coder.contexts.copy()),
        }
    if isinstance(coder, HuffmanCoder):
        # HuffmanCoder adds one pseudo-count to every symbol; store the counts it was built from.
        return {"coder": "huffman", "counts": torch.from_numpy(coder.counts.copy())}
    return {}


def load_coder_state(codec: FeatureCodec, state: dict[str, object]) -> None:
    """Restore tables written by :func:`coder_state` into ``codec``.

    Raises:
        CheckpointError: tables of an unknown coder type.
    """
    kind = state.get("coder")
    if kind is None:
        return
    if kind == "categorical":
        probs, contexts = state["probs"], state["contexts"]
        assert isinstance(probs, torch.Tensor) and isinstance(contexts, torch.Tensor)
        codec.coder = CategoricalCoder(probs.numpy(), contexts.numpy())  # type: ignore[assignment]
    elif kind == "huffman":
        counts = state["counts"]
        assert isinstance(counts, torch.Tensor)
        codec.coder = HuffmanCoder(counts.numpy())  # type: ignore[assignment]
    else:
        raise CheckpointError(f"unknown entropy-coder tables {kind!r} in codec checkpoint")
