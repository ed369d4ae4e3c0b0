"""Learned JSCC on CIFAR-10 + pretrained ResNet-20: accuracy vs SNR (AWGN) and vs p (BSC), and communication
latency against separate source coding at Shannon capacity (the paper's Fig. 5 comparison).

Usage:
    .venv/bin/python bench/bench_jscc.py --data-dir ../shared/data/cifar10 \
        --weights ../shared/data/weights/resnet20-12fca82f.th [--split layer3.2] [--out runs/bench]

Separate coding = a learned scalar-quantizer codec (noiseless training; bits per image measured from its bytes)
sent with an ideal channel code at capacity: AWGN latency = bits / (W·log2(1 + SNR)), BSC channel uses =
bits / (1 − H2(p)); its accuracy is the noiseless one (capacity-achieving codes are error-free). JSCC latency over
AWGN = real symbols / (2W); over the BSC, channel uses = bits sent. W = 1 MHz. The 80-bit header is left out of
both, as it would be sent once per stream in a deployment.
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

from coinference.codec import (
    CodecConfig,
    awgn_latency_s,
    bsc_capacity,
    evaluate_codec,
    head_features,
    separate_latency_s,
    train_codec,
)
from coinference.codec.train import training_features
from coinference.data import load_dataset
from coinference.evaluate import accuracy
from coinference.train import TrainConfig
from coinference.zoo import MODELS, build_model, split_model

SNRS = (0.0, 5.0, 10.0, 15.0, 20.0)
PS = (0.001, 0.01, 0.03, 0.05, 0.1)
W = 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--split", default="layer3.2")
    ap.add_argument("--awgn-dims", default="8,16", help="real channel symbols per image of the JSCC-AWGN codecs")
    ap.add_argument("--bsc-dims", default="16,32", help="bits per image of the JSCC-BSC codecs")
    ap.add_argument("--sq-dim", type=int, default=16)
    ap.add_argument("--sq-bits", type=int, default=2)
    ap.add_argument("--subset", type=int, default=20_000)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_dataset("cifar10", args.data_dir).with_normalization(*MODELS.get("resnet20").checkpoint_normalization)
    net = build_model("resnet20", args.weights).eval()
    base = accuracy(net, data)
    head, tail = split_model(net, args.split)
    tcfg = TrainConfig(optimizer="adam", lr=args.lr, weight_decay=0.0, epochs=args.epochs, subset=args.subset)
    test_f = head_features(head, data, data.test_x)
    train_f = training_features(head, data, tcfg)
    print(f"resnet20 base {100 * base:.2f}%; split {args.split}, feature {tuple(test_f.shape[1:])}")

    def train(cfg: CodecConfig):
        t0 = time.perf_counter()
        tc = train_codec(head, tail, data, cfg, tcfg, train_features=train_f)
        return tc, time.perf_counter() - t0

    sq, secs = train(CodecConfig("sq", dim=args.sq_dim, bits=args.sq_bits))
    sq_ev = evaluate_codec(sq, head, data, features=test_f)
    bits = float(sq_ev.bits_mean or 0.0)
    print(
        f"separate: sq d{args.sq_dim} {args.sq_bits}b: {bits:.1f} bits/image (max {sq_ev.bits_max}), "
        f"accuracy {100 * sq_ev.accuracy:.2f}% ({secs:.0f} s)"
    )
    result: dict[str, object] = {"base_accuracy": base, "split": args.split, "separate": sq_ev.to_dict()}

    awgn_rows = []
    print(f"\nAWGN (SNR per real symbol, W = {W / 1e6:g} MHz); latency in µs")
    print(f"{'codec':>16} {'uses':>5} " + " ".join(f"{s:>5.0f}dB" for s in SNRS))
    for k in map(int, args.awgn_dims.split(",")):
        tc, secs = train(CodecConfig("jscc-awgn", dim=k, snr_train_db=(0.0, 20.0)))
        accs = [evaluate_codec(tc, head, data, features=test_f, level=s).accuracy for s in SNRS]
        lat = awgn_latency_s(k, W)
        awgn_rows.append({"real_symbols": k, "accuracy": accs, "latency_s": lat, "train_seconds": secs})
        print(f"{'jscc-awgn d' + str(k):>16} {k:>5} " + " ".join(f"{100 * a:>6.2f}%" for a in accs))
        print(f"{'  latency':>16} {'':>5} " + " ".join(f"{1e6 * lat:>7.2f}" for _ in SNRS))
    sep_lat = [separate_latency_s(bits, s, W) for s in SNRS]
    print(f"{'separate sq':>16} {'':>5} " + " ".join(f"{100 * sq_ev.accuracy:>6.2f}%" for _ in SNRS))
    print(f"{'  latency':>16} {'':>5} " + " ".join(f"{1e6 * x:>7.2f}" for x in sep_lat))
    result["awgn"] = {"snr_db": SNRS, "jscc": awgn_rows, "separate_latency_s": sep_lat}

    bsc_rows = []
    print("\nBSC; channel uses per image (JSCC: bits sent; separate: bits / (1 − H2(p)))")
    print(f"{'codec':>16} {'uses':>5} " + " ".join(f"{p:>7g}" for p in PS))
    for n in map(int, args.bsc_dims.split(",")):
        tc, secs = train(CodecConfig("jscc-bsc", dim=n, p_train=(0.0, 0.1)))
        accs = [evaluate_codec(tc, head, data, features=test_f, level=p, bits_samples=100).accuracy for p in PS]
        bsc_rows.append({"bits": n, "accuracy": accs, "train_seconds": secs})
        print(f"{'jscc-bsc d' + str(n):>16} {n:>5} " + " ".join(f"{100 * a:>6.2f}%" for a in accs))
    sep_uses = [bits / bsc_capacity(p) for p in PS]
    print(f"{'separate sq':>16} {'':>5} " + " ".join(f"{100 * sq_ev.accuracy:>6.2f}%" for _ in PS))
    print(f"{'  uses':>16} {'':>5} " + " ".join(f"{u:>7.1f}" for u in sep_uses))
    result["bsc"] = {"p": PS, "jscc": bsc_rows, "separate_channel_uses": sep_uses}

    (out / "jscc.json").write_text(json.dumps(result, indent=2))
    plot(result, sq_ev.accuracy, out / "jscc.png")
    print(f"wrote {out / 'jscc.json'} and {out / 'jscc.png'}")


def plot(r: dict, sep_acc: float, path: Path) -> None:
    """Three panels: accuracy vs SNR, latency vs SNR (AWGN), accuracy vs p (BSC)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    awgn, bsc = r["awgn"], r["bsc"]
    for row in awgn["jscc"]:
        axes[0].plot(awgn["snr_db"], [100 * a for a in row["accuracy"]], "o-", label=f"JSCC {row['real_symbols']} sym")
        axes[1].plot(awgn["snr_db"], [1e6 * row["latency_s"]] * len(awgn["snr_db"]), "o-", label="JSCC")
    axes[0].axhline(100 * sep_acc, color="k", ls="--", label="separate (capacity)")
    axes[1].plot(awgn["snr_db"], [1e6 * x for x in awgn["separate_latency_s"]], "k--", label="separate (capacity)")
    axes[0].set(xlabel="SNR (dB per real symbol)", ylabel="accuracy (%)", title="AWGN: accuracy")
    axes[1].set(xlabel="SNR (dB)", ylabel="latency (µs, W = 1 MHz)", title="AWGN: communication latency")
    for row in bsc["jscc"]:
        axes[2].plot(bsc["p"], [100 * a for a in row["accuracy"]], "o-", label=f"JSCC {row['bits']} bits")
    axes[2].axhline(100 * sep_acc, color="k", ls="--", label="separate (capacity)")
    axes[2].set(xscale="log", xlabel="flip probability p", ylabel="accuracy (%)", title="BSC: accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
