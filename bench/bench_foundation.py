"""Foundation figures: ResNet-20 accuracy on the CIFAR-10 JPEG copy, PNG input size, split-point profiles.

Usage:
    .venv/bin/python bench/bench_foundation.py --data-dir ../shared/data/cifar10 \
        --weights ../shared/data/weights/resnet20-12fca82f.th [--out runs/bench]

Prints the figures and writes the profiles (JSON) and Fig.-1-style plots under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from coinference.data import load_dataset
from coinference.evaluate import accuracy
from coinference.plots import plot_profile
from coinference.profile import png_bits, profile_model
from coinference.zoo import MODELS, build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--weights", required=True, help="ResNet-20 checkpoint (ImageNet-normalised, option A)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--png-sample", type=int, default=10_000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    data = load_dataset("cifar10", args.data_dir).with_normalization(*MODELS.get("resnet20").checkpoint_normalization)
    t0 = time.perf_counter()
    net = build_model("resnet20", args.weights)
    acc = accuracy(net, data)
    print(
        f"resnet20 + {Path(args.weights).name} on {len(data.test_y):,} test images: "
        f"top-1 {100 * acc:.2f}% ({time.perf_counter() - t0:.1f} s)"
    )

    t0 = time.perf_counter()
    bits = png_bits(data.test_x, sample=args.png_sample)
    print(
        f"mean PNG size of {min(args.png_sample, len(data.test_x)):,} test images: {bits:,.0f} bits "
        f"= {bits / 8:,.0f} bytes ({time.perf_counter() - t0:.1f} s); raw {3 * 32 * 32 * 8:,} bits"
    )

    for name in ("resnet20", "resnet18-cifar"):
        p = profile_model(build_model(name), (3, 32, 32), name, data.test_x, png_sample=1000)
        (out / f"profile-{name}.json").write_text(json.dumps(p.to_dict(), indent=2))
        plot_profile(p, out / f"profile-{name}.png")
        print(
            f"\n{name}: total {p.total_macs:,} MACs, {p.total_params:,} params; PNG input {p.input_bits_png:,.0f} bits"
        )
        print(f"{'split':>10} {'device MACs':>14} {'feature bits':>13} {'÷raw':>6} {'÷PNG':>6}")
        for s in p.splits:
            mark = "*" if s.stage_end else " "
            print(
                f"{s.name:>9}{mark} {s.device_macs:>14,} {s.feature_bits:>13,} "
                f"{s.amplification_raw:>6.2f} {s.amplification_png:>6.2f}"
            )


if __name__ == "__main__":
    main()
