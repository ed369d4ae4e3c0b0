"""Top-1 accuracy of a classifier on a data set's test (or train) split."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from coinference.data import ImageData
from coinference.progress import phase

INFERENCE_BATCH = 128
"""Images per batch of batched inference (evaluation, head features, the base model's logits, entropy-model
statistics). On a 2-core AVX2 CPU with a 32 MiB L3 cache, a 16-channel 32 × 32 activation of ResNet-20 is 8 MiB at
batch 128 and 32 MiB at batch 500: the whole model ran 1.22× and a pruned layer1.2 head 1.13× faster at 128 than at
500 (``bench/bench_variants.py --parts inference``, medians of interleaved passes)."""


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block. Every submodule's own mode is restored afterwards: the model may be a
    caller's shared one, with parts deliberately in eval mode (e.g. frozen BatchNorm under a training wrapper)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def outputs(
    model: nn.Module,
    data: ImageData,
    x_uint8: torch.Tensor,
    batch_size: int = INFERENCE_BATCH,
    *,
    progress: str | None = "evaluate",
) -> torch.Tensor:
    """``model``'s outputs (float32; logits of a classifier, features of a head) for uint8 images (N, C, H, W),
    batched, in eval mode (the model's mode is restored). Batches run channels-last (ResNet-20 inference
    is 1.3× faster so on a 2-core AVX2 CPU); the outputs come back in the default layout. ``progress`` describes
    the :func:`coinference.progress.phase` it runs in (one unit per image; None: none)."""
    nhwc = torch.channels_last
    out: list[torch.Tensor] = []
    with eval_mode(model), phase(progress, len(x_uint8), "image") as advance:
        for i in range(0, len(x_uint8), batch_size):
            batch = x_uint8[i : i + batch_size]
            out.append(model(data.normalize(batch).contiguous(memory_format=nhwc)).contiguous())
            advance(len(batch))
    return torch.cat(out)


def predict(
    model: nn.Module,
    data: ImageData,
    x_uint8: torch.Tensor,
    batch_size: int = INFERENCE_BATCH,
    *,
    progress: str | None = "evaluate",
) -> torch.Tensor:
    """Predicted class indices (int64, shape (N,)) for uint8 images (N, C, H, W); the model runs in eval mode."""
    if len(x_uint8) == 0:
        return torch.empty(0, dtype=torch.int64)
    return outputs(model, data, x_uint8, batch_size, progress=progress).argmax(1)


def accuracy(
    model: nn.Module,
    data: ImageData,
    split: str = "test",
    batch_size: int = INFERENCE_BATCH,
    *,
    progress: str | None = "evaluate",
) -> float:
    """Top-1 accuracy in [0, 1] on ``split`` ("test" or "train"); ``progress`` describes its phase."""
    x, y = (data.test_x, data.test_y) if split == "test" else (data.train_x, data.train_y)
    if len(y) == 0:
        return math.nan
    # an exact ratio of counts (a float32 mean would put 1720/2000 at 0.86000001, and a threshold 2 points below it
    # would then reject a variant at exactly 84.00 %)
    return int((predict(model, data, x, batch_size, progress=progress) == y).sum()) / len(y)
