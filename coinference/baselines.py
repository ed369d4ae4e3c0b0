"""Baselines that are not split variants: everything on the device, or the PNG image sent to the server.

The split baselines (split-only + Huffman at every split, 2-Step Pruning + Huffman, BottleNet++) are ordinary
:class:`~coinference.variant.VariantSpec` s (codec ``huffman`` / ``bottlenetpp``, pruning ``two-step``) built by
:func:`coinference.build.build_and_measure`; :func:`baseline_specs` lists them.
"""

from __future__ import annotations

import math

import torch

from coinference.data import ImageData
from coinference.evaluate import accuracy
from coinference.profile import module_cost, png_sizes
from coinference.variant import CodecSpec, Measurement, VariantSpec
from coinference.zoo import SplittableModel


def on_device_only(model: SplittableModel, data: ImageData, eval_limit: int | None = None) -> Measurement:
    """The whole model on the device; only the predicted class index (ceil(log2 classes) bits) is sent.
    Accuracy on the first ``eval_limit`` validation images (selection) and test images (reported)."""
    val = data.evaluated_on("val").first_test(eval_limit)
    test = data.first_test(eval_limit)
    cost = module_cost(model, data.input_shape)
    bits = max(1, math.ceil(math.log2(data.num_classes)))
    return Measurement(
        accuracy(model, val), cost.macs, 0, float(bits), bits, test_accuracy=accuracy(model, test),
        device_param_bytes=cost.param_bytes, device_peak_activation_bytes=cost.peak_activation_bytes,
        versions={"torch": torch.__version__},
    )  # fmt: skip


def server_png(
    model: SplittableModel, data: ImageData, eval_limit: int | None = None, bits_limit: int | None = None
) -> Measurement:
    """The device sends the PNG-compressed image (lossless, so accuracy is the base model's); the server runs
    the whole model. Bits are the PNG sizes at batch 1 (mean, max) over ``bits_limit`` validation images;
    accuracy on the first ``eval_limit`` validation images (selection) and test images (reported)."""
    val = data.evaluated_on("val").first_test(eval_limit)
    test = data.first_test(eval_limit)
    sizes = png_sizes(val.test_x[:bits_limit], sample=None)
    cost = module_cost(model, data.input_shape)
    return Measurement(
        accuracy(model, val), 0, cost.macs, float(sizes.mean()), int(sizes.max()), test_accuracy=accuracy(model, test),
        versions={"torch": torch.__version__},
    )  # fmt: skip


def baseline_specs(
    base: VariantSpec,
    feature_shapes: dict[str, tuple[int, ...]],
    two_step_activation: float = 0.5,
    bottlenet_reduction: int = 8,
) -> dict[str, list[VariantSpec]]:
    """The paper's split baselines for a base spec at every split of ``feature_shapes`` (split name → feature
    shape): split-only + Huffman, 2-Step Pruning + Huffman (step 2 prunes ``two_step_activation`` of the split
    layer's channels), and BottleNet++ (its conv keeps C / ``bottlenet_reduction`` channels of a spatial feature,
    its FC D / ``bottlenet_reduction`` of a flat one; 8-bit latent)."""
    plain = base.with_(sparsity=0.0, activation_sparsity=0.0, pruning="incremental")
    huffman = CodecSpec("huffman", bits=8)

    def bottlenet(shape: tuple[int, ...]) -> CodecSpec:
        reduced = max(1, shape[0] // bottlenet_reduction)
        if len(shape) == 3:
            return CodecSpec("bottlenetpp", channels=reduced, bits=8)
        return CodecSpec("bottlenetpp", dim=reduced, bits=8)

    return {
        "split+huffman": [plain.with_(split=s, codec=huffman) for s in feature_shapes],
        "2-step+huffman": [
            plain.with_(split=s, pruning="two-step", activation_sparsity=two_step_activation, codec=huffman)
            for s in feature_shapes
        ],
        "bottlenet++": [plain.with_(split=s, codec=bottlenet(shape)) for s, shape in feature_shapes.items()],
    }
