"""Baselines that are not split variants: everything on the device, or the PNG image sent to the server.

The split baselines (split-only + Huffman, 2-Step Pruning + Huffman, BottleNet++ with raw or entropy-coded bits) are
ordinary :class:`~coinference.variant.VariantSpec` s (codec ``huffman`` / ``bottlenetpp``, pruning ``two-step``)
built by :func:`coinference.build.build_and_measure` in the same harness and at the same fidelity as ours;
:func:`baseline_specs` lists a small grid of each one's own knobs per split, so that fronts are compared with
fronts. What each build trains is :func:`coinference.build.phase_budget`.
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


TWO_STEP_ACTIVATIONS = (0.25, 0.5, 0.75)
"""2-Step's grid: the fraction of the split layer's channels its step 2 prunes (its communication knob)."""
BOTTLENET_REDUCTIONS = (4, 8, 16)
"""BottleNet++'s grid, channel mode: its encoder keeps C / r channels (a flat feature: D / r values)."""
BOTTLENET_SPATIAL_REDUCTIONS = (4,)
"""BottleNet++'s grid, spatial mode (2×2 conv of stride 2, for features of even height and width): C / r channels
at half the height and width, 4·r fewer values (r = 4 matches the channel mode's r = 16 in size)."""
BASELINES = ("split+huffman", "2-step+huffman", "bottlenet++", "bottlenet++ ec")
"""Baseline names, as :func:`baseline_specs` keys them."""


def baseline_specs(
    base: VariantSpec,
    feature_shapes: dict[str, tuple[int, ...]],
    two_step_activations: tuple[float, ...] = TWO_STEP_ACTIVATIONS,
    bottlenet_reductions: tuple[int, ...] = BOTTLENET_REDUCTIONS,
    bottlenet_spatial_reductions: tuple[int, ...] = BOTTLENET_SPATIAL_REDUCTIONS,
) -> dict[str, dict[str, list[VariantSpec]]]:
    """The paper's split baselines for a base spec (model, data set, weights, fidelity, seed, validation split) at
    every split of ``feature_shapes`` (split name → feature shape): baseline name → split → its grid there.

    - ``split+huffman``: the base model cut as it is, 8-bit uniform quantization + Huffman (the method has no knob
      but the split: its quantizer is fixed at 8 bits); 1 spec per split.
    - ``2-step+huffman``: 2-Step Pruning (Shi et al. 2019), step 2 pruning each of ``two_step_activations`` of the
      split layer's channels, + Huffman; one spec each.
    - ``bottlenet++``: the authors' encoder/decoder in channel mode at each of ``bottlenet_reductions`` and, on a
      feature of even height and width, in spatial mode (2×2, stride 2) at each of ``bottlenet_spatial_reductions``;
      bits as the paper counts them, one byte per 8-bit latent value. Sizes that round to the same spec count once.
    - ``bottlenet++ ec``: the same grid with the 8-bit values range-coded (``CodecSpec.entropy_coded``).
    """
    plain = base.with_(sparsity=0.0, activation_sparsity=0.0, pruning="incremental", schedule="cubic")
    huffman = CodecSpec("huffman", bits=8)

    def bottlenet(shape: tuple[int, ...], coded: bool) -> list[CodecSpec]:
        out: list[CodecSpec] = []
        for r in bottlenet_reductions:
            reduced = max(1, shape[0] // r)
            if len(shape) == 3:
                out.append(CodecSpec("bottlenetpp", channels=reduced, bits=8, entropy_coded=coded))
            else:
                out.append(CodecSpec("bottlenetpp", dim=reduced, bits=8, entropy_coded=coded))
        if len(shape) == 3 and shape[1] % 2 == 0 and shape[2] % 2 == 0:
            for r in bottlenet_spatial_reductions:
                reduced = max(1, shape[0] // r)
                out.append(CodecSpec("bottlenetpp", channels=reduced, stride=2, bits=8, entropy_coded=coded))
        return list(dict.fromkeys(out))  # sizes that coincide (few channels) once

    grids: dict[str, dict[str, list[VariantSpec]]] = {name: {} for name in BASELINES}
    for split, shape in feature_shapes.items():
        at = plain.with_(split=split)
        grids["split+huffman"][split] = [at.with_(codec=huffman)]
        grids["2-step+huffman"][split] = [
            at.with_(pruning="two-step", activation_sparsity=a, codec=huffman) for a in two_step_activations
        ]
        grids["bottlenet++"][split] = [at.with_(codec=c) for c in bottlenet(shape, False)]
        grids["bottlenet++ ec"][split] = [at.with_(codec=c) for c in bottlenet(shape, True)]
    return grids
