"""Feature coding on CIFAR-10 + pretrained ResNet-20: bits per sample (from real bytes) and accuracy per split.

Usage:
    .venv/bin/python bench/bench_codec.py --data-dir ../shared/data/cifar10 \
        --weights ../shared/data/weights/resnet20-12fca82f.th [--subset 10000 --epochs 2] [--out runs/bench]

For each split point it trains a few learned codecs (sq/vq: conv/FC bottleneck + learned quantizer + ANS) on
cached head features, and compares them with the raw float32 feature, the Huffman baseline (8-bit uniform +
Huffman) and BottleNet++ (8 bits per latent value), against the PNG input size. Bits are payload bits per test
image from ``compress`` at batch 1 (the 80-bit header is reported apart). Prints a table, writes
``codec.json`` and ``codec.png`` under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from coinference.codec import HEADER_BITS, CodecConfig, evaluate_codec, head_features, train_codec
from coinference.codec.train import training_features
from coinference.data import load_dataset
from coinference.evaluate import accuracy
from coinference.profile import png_bits, profile_model
from coinference.train import TrainConfig
from coinference.zoo import MODELS, build_model, split_model

# (split, label, config): a few settings per stage boundary of ResNet-20 (features: layer1.2 16×32×32,
# layer2.2 32×16×16, layer3.2 64 after pooling). layer1.2 is the last stage end with ≤ 40 % of the MACs on the device.
SETTINGS: list[tuple[str, str, CodecConfig]] = [
    ("layer1.2", "sq c8 s4 2b", CodecConfig("sq", channels=8, stride=4, bits=2)),
    ("layer1.2", "sq c4 s4 2b", CodecConfig("sq", channels=4, stride=4, bits=2)),
    ("layer1.2", "sq c8 s4 2b +tail", CodecConfig("sq", channels=8, stride=4, bits=2, finetune_tail=True)),
    ("layer1.2", "sq c4 s4 2b +tail", CodecConfig("sq", channels=4, stride=4, bits=2, finetune_tail=True)),
    ("layer1.2", "sq c6 s4 2b +tail", CodecConfig("sq", channels=6, stride=4, bits=2, finetune_tail=True)),
    ("layer1.2", "sq c7 s4 2b +tail", CodecConfig("sq", channels=7, stride=4, bits=2, finetune_tail=True)),
    ("layer1.2", "bottlenet++ c8 s4", CodecConfig("bottlenetpp", channels=8, stride=4)),
    ("layer2.2", "sq c8 s2 2b", CodecConfig("sq", channels=8, stride=2, bits=2)),
    ("layer2.2", "sq c4 s2 2b", CodecConfig("sq", channels=4, stride=2, bits=2)),
    ("layer2.2", "bottlenet++ c8 s2", CodecConfig("bottlenetpp", channels=8, stride=2)),
    ("layer3.2", "sq d16 2b", CodecConfig("sq", dim=16, bits=2)),
    ("layer3.2", "sq d8 3b", CodecConfig("sq", dim=8, bits=3)),
    ("layer3.2", "vq d16 6b", CodecConfig("vq", dim=16, bits=6)),
    ("layer3.2", "bottlenet++ d16", CodecConfig("bottlenetpp", dim=16)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--subset", type=int, default=10_000, help="training images for the codec phase")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--huffman-samples", type=int, default=2000, help="test images Huffman-coded (slow coder)")
    ap.add_argument("--only", default=None, help="comma-separated splits to run (default: all)")
    ap.add_argument("--labels", default=None, help="comma-separated codec labels to run (default: all)")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_dataset("cifar10", args.data_dir).with_normalization(*MODELS.get("resnet20").checkpoint_normalization)
    net = build_model("resnet20", args.weights).eval()
    base = accuracy(net, data)
    png = png_bits(data.test_x, sample=10_000)
    prof = {s.name: s for s in profile_model(net, data.input_shape, "resnet20").splits}
    total = prof["layer1.0"].device_macs + prof["layer1.0"].server_macs
    print(f"resnet20 base top-1 {100 * base:.2f}%, PNG input {png:,.0f} bits, {total:,} MACs")
    tcfg = TrainConfig(optimizer="adam", lr=args.lr, weight_decay=0.0, epochs=args.epochs, subset=args.subset)
    splits = args.only.split(",") if args.only else ["layer1.2", "layer2.2", "layer3.2"]
    rows: list[dict[str, object]] = []
    header = (
        f"{'split':>9} {'dev MACs':>8} {'codec':>20} {'enc MACs':>9} {'enc %':>6} {'bits mean':>10} "
        f"{'bits max':>9} {'÷PNG':>6} {'acc %':>6} {'Δ pts':>6} {'train s':>7}"
    )
    print(header)
    for split in splits:
        sp = prof[split]
        head, tail = split_model(net, split)
        test_f = head_features(head, data, data.test_x)
        train_f = training_features(head, data, tcfg)
        cases = [(split, "raw float32", CodecConfig("none")), (split, "huffman 8b", CodecConfig("huffman"))]
        cases += [s for s in SETTINGS if s[0] == split]
        if args.labels:
            cases = [c for c in cases if c[1] in args.labels.split(",")]
        for _, label, cfg in cases:
            t0 = time.perf_counter()
            tc = train_codec(head, tail, data, cfg, tcfg, train_features=train_f)
            secs = time.perf_counter() - t0
            n_bits = args.huffman_samples if cfg.kind == "huffman" else None
            ev = evaluate_codec(tc, head, data, features=test_f, bits_samples=n_bits)
            row = {
                "split": split,
                "device_macs": sp.device_macs,
                "device_macs_frac": sp.device_macs / total,
                "codec": label,
                "config": cfg.to_dict(),
                "train_seconds": secs,
                "base_accuracy": base,
                "png_bits": png,
                **ev.to_dict(),
            }
            rows.append(row)
            bm = ev.bits_mean or 0.0
            print(
                f"{split:>9} {100 * sp.device_macs / total:>7.1f}% {label:>20} {tc.encoder_macs:>9,} "
                f"{100 * tc.encoder_macs / total:>5.2f}% {bm:>10,.1f} {ev.bits_max or 0:>9,} {bm / png:>6.3f} "
                f"{100 * ev.accuracy:>6.2f} {100 * (ev.accuracy - base):>+6.2f} {secs:>7.1f}",
                flush=True,
            )
    print(f"header: {HEADER_BITS} bits per bitstream, not included above; PNG input {png:,.0f} bits")
    (out / "codec.json").write_text(json.dumps({"base_accuracy": base, "png_bits": png, "rows": rows}, indent=2))
    plot(rows, base, png, out / "codec.png")
    print(f"wrote {out / 'codec.json'} and {out / 'codec.png'}")


def plot(rows: list[dict], base: float, png: float, path: Path) -> None:
    """Accuracy vs bits per image (log x), one marker per codec, colour per split."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    splits = sorted({r["split"] for r in rows})
    colors = dict(zip(splits, ("#1f77b4", "#d62728", "#2ca02c", "#9467bd"), strict=False))
    for r in rows:
        if r["bits_mean"]:
            ax.scatter(r["bits_mean"], 100 * r["accuracy"], color=colors[r["split"]], s=25)
            ax.annotate(r["codec"], (r["bits_mean"], 100 * r["accuracy"]), fontsize=6)
    for s in splits:
        ax.scatter([], [], color=colors[s], label=s)
    ax.axvline(png, color="#ff7f0e", ls=":", label=f"PNG input ({png:,.0f} bits)")
    ax.axvline(png / 20, color="#7f7f7f", ls="--", label="PNG / 20")
    ax.axhline(100 * base - 2, color="#7f7f7f", ls="-.", label="base − 2 points")
    ax.set_xscale("log")
    ax.set_xlabel("bits per image (payload, from bytes)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("ResNet-20 / CIFAR-10 (JPEG copy): feature coding per split")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
