from __future__ import annotations

import torch

from coinference.baselines import baseline_specs, on_device_only, server_png
from coinference.evaluate import accuracy
from coinference.profile import module_cost, png_sizes
from coinference.variant import CodecSpec, VariantSpec
from coinference.zoo import build_model


def test_on_device_and_png(synthetic) -> None:
    torch.manual_seed(0)
    m = build_model("tiny-cnn")
    total = module_cost(m, synthetic.input_shape)
    dev = on_device_only(m, synthetic)
    assert dev.device_macs == total.macs and dev.server_macs == 0 and dev.bits_mean == 2  # 4 classes
    val = synthetic.evaluated_on("val")
    assert dev.val_accuracy == accuracy(m, val) and dev.test_accuracy == accuracy(m, synthetic)
    png = server_png(m, synthetic, bits_limit=10)
    sizes = png_sizes(synthetic.val_x[:10], sample=None)  # bits select: counted on validation images
    assert png.device_macs == 0 and png.server_macs == total.macs
    assert png.bits_mean == sizes.mean() and png.bits_max == sizes.max()
    five = server_png(m, synthetic, eval_limit=5)
    assert five.val_accuracy == accuracy(m, val.first_test(5))
    assert five.test_accuracy == accuracy(m, synthetic.first_test(5))


def test_baseline_specs_cover_every_split() -> None:
    base = VariantSpec("tiny-cnn", "synthetic", "stem", sparsity=0.5)
    specs = baseline_specs(base, {"stem": (8, 8, 8), "block2": (16,)})
    assert set(specs) == {"split+huffman", "2-step+huffman", "bottlenet++"}
    assert [s.split for s in specs["split+huffman"]] == ["stem", "block2"]
    assert all(s.sparsity == 0 and s.codec.kind == "huffman" for s in specs["split+huffman"])
    assert all(s.pruning == "two-step" and s.activation_sparsity == 0.5 for s in specs["2-step+huffman"])
    assert [s.codec for s in specs["bottlenet++"]] == [
        CodecSpec("bottlenetpp", channels=1, bits=8),
        CodecSpec("bottlenetpp", dim=2, bits=8),
    ]
