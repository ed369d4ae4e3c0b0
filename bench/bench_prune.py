"""Communication-aware pruning of ResNet-20 on CIFAR-10: accuracy, device MACs/params, feature bits, CPU latency.

Usage:
    .venv/bin/python bench/bench_prune.py --data-dir ../shared/data/cifar10 \
        --weights ../shared/data/weights/resnet20-12fca82f.th [--out runs/bench]

For each split (default: after stage 1 and stage 2) and channel sparsity (default 0.25/0.5/0.75): test accuracy
of the dense model, of the one-shot pruned model (target mask on the pretrained weights, no fine-tuning) and after
incremental pruning with a short fine-tune; device MACs and parameters and transmitted bits of the shrunk head; and
the measured CPU latency of the shrunk head against the dense one (batch 1 and 64, medians of interleaved turns,
one thread), in eager PyTorch and in the fused runtime (:mod:`coinference.fused`; skipped with a note when no C
compiler is found). Prints a table and writes JSON to ``<out>/prune-resnet20.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from coinference.data import load_dataset
from coinference.errors import ConfigError
from coinference.evaluate import accuracy
from coinference.fused import FusedHead
from coinference.latency import add_timing_arguments, latency_pair
from coinference.prune import PruneConfig, Schedule, device_cost, feature_bits, prune_device
from coinference.train import TrainConfig
from coinference.zoo import MODELS, build_model, split_model


def fused_cells(r: dict) -> str:
    """The fused runtime's four table cells of row ``r`` (n/a where it was not timed)."""
    if "fused_latency_b1_dense_ms" not in r:
        return " | ".join(["n/a"] * 4)
    return (
        f"{r['fused_latency_b1_dense_ms']:.3f} / {r['fused_latency_b1_pruned_ms']:.3f} "
        f"| {r['fused_latency_b64_dense_ms']:.2f} / {r['fused_latency_b64_pruned_ms']:.2f} "
        f"| {r['fused_speedup_b1_over_mac_reduction']:.2f} | {r['fused_speedup_b64_over_mac_reduction']:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--weights", required=True, help="ResNet-20 checkpoint (ImageNet-normalised, option A)")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--splits", nargs="+", default=["layer1.2", "layer2.2"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--activation-sparsity", type=float, default=0.0)
    ap.add_argument("--iterations", type=int, default=4, help="cubic schedule iterations")
    ap.add_argument("--steps", type=int, default=160, help="fine-tuning steps per variant, all iterations")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    add_timing_arguments(ap, runs_b1=300)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    info = MODELS.get("resnet20")
    assert info.checkpoint_normalization is not None
    data = load_dataset("cifar10", args.data_dir).with_normalization(*info.checkpoint_normalization)
    if args.test_limit:
        from dataclasses import replace

        data = replace(data, test_x=data.test_x[: args.test_limit], test_y=data.test_y[: args.test_limit])
    net = build_model("resnet20", args.weights)
    t0 = time.perf_counter()
    base_acc = accuracy(net, data)
    print(f"resnet20 dense: top-1 {100 * base_acc:.2f}% on {len(data.test_y):,} test images")
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=0)
    x1 = data.normalize(data.test_x[:1])
    x64 = data.normalize(data.test_x[:64])
    shape = (int(data.input_shape[0]), int(data.input_shape[1]), int(data.input_shape[2]))
    fused_note = ""
    rows = []
    for split in args.splits:
        dense_head, _ = split_model(net, split)
        dense_head.eval()
        d_macs, d_params = device_cost(dense_head, data.input_shape)
        with torch.no_grad():
            d_feat = dense_head(x1).shape[1:]
        d_bits = feature_bits(d_feat[0], tuple(d_feat))
        for s in args.sparsities:
            sched = Schedule("cubic", iterations=args.iterations)
            one = prune_device(net, split, data, PruneConfig(s, args.activation_sparsity, sched, None))
            acc_one = accuracy(one.end_to_end(), data)
            t1 = time.perf_counter()
            pd = prune_device(net, split, data, PruneConfig(s, args.activation_sparsity, sched, train))
            tune_s = time.perf_counter() - t1
            acc = accuracy(pd.end_to_end(), data)
            torch.set_num_threads(1)
            lat1 = latency_pair(dense_head, pd.head, x1, args.runs_b1, args.block)
            lat64 = latency_pair(dense_head, pd.head, x64, args.runs_b64, args.block)
            fused: dict[int, tuple[float, float]] = {}
            try:
                fd, fp = FusedHead(dense_head, shape), FusedHead(pd.head, shape)
            except ConfigError as e:  # e.g. no C compiler: the eager figures stand alone
                fused_note = f"fused runtime not timed: {e}"
            else:
                fused = {
                    b: latency_pair(fd, fp, x, runs, args.block)
                    for b, x, runs in ((1, x1, args.runs_b1), (64, x64, args.runs_b64))
                }
            torch.set_num_threads(2)
            mac_red = d_macs / pd.device_macs
            row = {
                "split": split,
                "sparsity": s,
                "activation_sparsity": args.activation_sparsity,
                "acc_dense": base_acc,
                "acc_one_shot": acc_one,
                "acc_finetuned": acc,
                "finetune_steps": sum(h.steps for h in pd.history),
                "finetune_images": sum(h.steps for h in pd.history) * args.batch_size,
                "finetune_seconds": tune_s,
                "device_macs_dense": d_macs,
                "device_macs": pd.device_macs,
                "mac_reduction": mac_red,
                "device_params_dense": d_params,
                "device_params": pd.device_params,
                "feature_bits_dense": d_bits,
                "feature_bits": pd.feature_bits,
                "latency_b1_dense_ms": 1e3 * lat1[0],
                "latency_b1_pruned_ms": 1e3 * lat1[1],
                "speedup_b1": lat1[0] / lat1[1],
                "latency_b64_dense_ms": 1e3 * lat64[0],
                "latency_b64_pruned_ms": 1e3 * lat64[1],
                "speedup_b64": lat64[0] / lat64[1],
            }
            row["speedup_b1_over_mac_reduction"] = row["speedup_b1"] / mac_red
            row["speedup_b64_over_mac_reduction"] = row["speedup_b64"] / mac_red
            for b, (ta, tp) in fused.items():
                row[f"fused_latency_b{b}_dense_ms"], row[f"fused_latency_b{b}_pruned_ms"] = 1e3 * ta, 1e3 * tp
                row[f"fused_speedup_b{b}_over_mac_reduction"] = ta / tp / mac_red
            rows.append(row)
            print(
                f"{split} s={s}: acc {100 * acc_one:.2f}% one-shot → {100 * acc:.2f}% fine-tuned ({tune_s:.0f} s); "
                f"MACs {d_macs:,} → {pd.device_macs:,} (÷{mac_red:.2f}); "
                f"b1 {1e3 * lat1[0]:.3f} → {1e3 * lat1[1]:.3f} ms (×{row['speedup_b1']:.2f}); "
                f"b64 {1e3 * lat64[0]:.2f} → {1e3 * lat64[1]:.2f} ms (×{row['speedup_b64']:.2f})",
                flush=True,
            )

    print(
        f"\nresnet20, CIFAR-10 (JPEG copy), dense top-1 {100 * base_acc:.2f}%; fine-tune {args.steps} steps × "
        f"{args.batch_size} images per variant; latency: 1 thread, medians of turns of {args.block} calls; "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    head = (
        "| split | S | acc one-shot | acc fine-tuned | device MACs | ÷ MACs | device params | feature bits "
        "| b1 dense / pruned ms | ×b1 | b64 dense / pruned ms | ×b64 | ×b1 / ÷MACs | ×b64 / ÷MACs "
        "| fused b1 dense / pruned ms | fused b64 dense / pruned ms | fused ×b1 / ÷MACs | fused ×b64 / ÷MACs |"
    )
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['split']} | {r['sparsity']:g} | {100 * r['acc_one_shot']:.2f} % | {100 * r['acc_finetuned']:.2f} % "
            f"| {r['device_macs_dense']:,} → {r['device_macs']:,} | {r['mac_reduction']:.2f} "
            f"| {r['device_params_dense']:,} → {r['device_params']:,} | {r['feature_bits_dense']:,} → "
            f"{r['feature_bits']:,} | {r['latency_b1_dense_ms']:.3f} / {r['latency_b1_pruned_ms']:.3f} "
            f"| {r['speedup_b1']:.2f} | {r['latency_b64_dense_ms']:.2f} / {r['latency_b64_pruned_ms']:.2f} "
            f"| {r['speedup_b64']:.2f} | {r['speedup_b1_over_mac_reduction']:.2f} "
            f"| {r['speedup_b64_over_mac_reduction']:.2f} | {fused_cells(r)} |"
        )
    if fused_note:
        print(fused_note)
    path = out / "prune-resnet20.json"
    path.write_text(json.dumps({"args": vars(args), "acc_dense": base_acc, "rows": rows}, indent=2))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
