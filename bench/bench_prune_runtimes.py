"""Does a CPU runtime turn pruning's MAC cut into speed? Shrunk vs dense ResNet-20 heads under six runtimes.

The shrunk heads come from the target mask applied in one shot (latency does not depend on the weights' values,
so no fine-tuning is needed here; ``bench_prune.py`` measures accuracy). For each split and sparsity, each runtime
times the dense and the shrunk head alternately (one thread, median of interleaved runs) and reports
speed-up ÷ MAC reduction — the figure issue 3 asks to be ≥ 0.7:

* ``eager``: PyTorch eager (oneDNN convolutions), the default;
* ``jit``: ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference`` on a trace (folds BN into the convs, fuses
  conv + ReLU / add);
* ``nhwc``: eager with channels-last tensors;
* ``no-onednn``: eager with oneDNN disabled (PyTorch's own im2col + GEMM convolution);
* ``onnxruntime``: the ONNX graph ``coinfer export`` writes for a device, run by onnxruntime (one intra-op
  thread, all graph optimisations: BN folding, conv + activation fusion, NCHWc layouts);
* ``inductor``: ``torch.compile`` (``max-autotune-no-cudagraphs``, static shapes) with inductor's freezing (BN
  folded, weights prepacked, pointwise ops fused into generated C++); compiled per model and batch size;
* ``fused``: our fused runtime (:mod:`coinference.fused`: BN folded, ReLU and residual adds in the convolutions'
  epilogue, kernels vectorised along image rows, one image through the whole head at a time);
* ``eager/fused``: the dense head in eager PyTorch (the default) against the shrunk head in the fused runtime.

The ``best`` columns time each head in the fastest of the runtimes asked for.

    .venv/bin/python bench/bench_prune_runtimes.py --data-dir ../shared/data/cifar10 \\
        --weights ../shared/data/weights/resnet20-12fca82f.th
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coinference.data import load_dataset
from coinference.export import OPSET, ort_session, to_onnx
from coinference.fused import FusedHead
from coinference.latency import add_timing_arguments, latency_pair
from coinference.prune import PruneConfig, Schedule, device_cost, prune_device
from coinference.zoo import MODELS, build_model, split_model


def private_copy(m: nn.Module) -> nn.Module:
    """A copy per runtime, so one runtime's conversion (channels-last, freezing) never leaks into the next."""
    return copy.deepcopy(m).eval()


def frozen(m: nn.Module, x: torch.Tensor) -> nn.Module:
    m.eval()
    with torch.no_grad():
        traced = torch.jit.trace(m, x)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


class OrtModule(nn.Module):
    """An onnxruntime session behind the nn.Module call interface the timing loop uses."""

    def __init__(self, m: nn.Module, x: torch.Tensor) -> None:
        super().__init__()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            to_onnx(m.eval(), x, path, ("x", "y"), OPSET)
            self.session = ort_session(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.numpy()})[0])


def compiled(m: nn.Module, x: torch.Tensor) -> nn.Module:
    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.freezing = True
    # every head is an nn.Sequential: one code object, recompiled per model and batch size, never left to eager
    torch._dynamo.config.recompile_limit = 1024
    c = torch.compile(m.eval(), mode="max-autotune-no-cudagraphs", dynamic=False)
    with torch.no_grad():
        c(x)
    return c


Prepare = Callable[[nn.Module, torch.Tensor], tuple[nn.Module, torch.Tensor]]
RUNTIMES: dict[str, tuple[Prepare, Callable[[], AbstractContextManager]]] = {
    "eager": (lambda m, x: (m, x), nullcontext),
    "jit": (lambda m, x: (frozen(m, x), x), nullcontext),
    "nhwc": (
        lambda m, x: (m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)),
        nullcontext,
    ),
    "no-onednn": (lambda m, x: (m, x), lambda: torch.backends.mkldnn.flags(enabled=False)),
    "onnxruntime": (lambda m, x: (OrtModule(m, x), x), nullcontext),
    "inductor": (lambda m, x: (compiled(m, x), x), torch.no_grad),
    "fused": (lambda m, x: (FusedHead(m, tuple(x.shape[1:])), x), torch.no_grad),
}
CROSS: dict[str, tuple[str, str]] = {"eager/fused": ("eager", "fused")}
"""Runtimes that time the dense head in one runtime and the shrunk head in another."""


DEFAULT_RUNTIMES = ["eager", "jit", "nhwc", "no-onednn", "onnxruntime", "fused", "eager/fused"]
"""The runtimes of the main table (``inductor`` compiles each head for a few seconds: ask for it by name)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--splits", nargs="+", default=["layer1.2", "layer2.2"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    add_timing_arguments(ap, runs_b1=200)
    ap.add_argument(
        "--residual",
        choices=["joint", "keep"],
        default="joint",
        help="residual groups pruned as units (joint, default) or left whole (keep: inner channels only)",
    )
    ap.add_argument("--runtimes", nargs="+", choices=[*RUNTIMES, *CROSS], default=DEFAULT_RUNTIMES)
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = MODELS.get("resnet20")
    assert info.checkpoint_normalization is not None
    data = load_dataset("cifar10", args.data_dir).with_normalization(*info.checkpoint_normalization)
    net = build_model("resnet20", args.weights)
    xs = {1: data.normalize(data.test_x[:1]), 64: data.normalize(data.test_x[:64])}
    rows = []
    runtimes = {name: CROSS.get(name, (name, name)) for name in args.runtimes}
    print("| split | S | ÷ MACs | " + " | ".join(f"{r} b1 | {r} b64" for r in [*runtimes, "best"]) + " |")
    print("|---|---:|---:|" + "---:|---:|" * (len(runtimes) + 1))
    for split in args.splits:
        dense, _ = split_model(net, split)
        dense.eval()
        d_macs, _ = device_cost(dense, data.input_shape)
        for s in args.sparsities:
            cfg = PruneConfig(s, 0.0, Schedule("cubic", iterations=4), None, args.residual)
            pd = prune_device(net, split, data, cfg)
            red = d_macs / pd.device_macs
            row: dict = {"split": split, "sparsity": s, "residual": args.residual, "mac_reduction": red}
            row["block"] = args.block
            for name, (dense_rt, shrunk_rt) in runtimes.items():
                for b, x in xs.items():
                    a, xa = RUNTIMES[dense_rt][0](private_copy(dense), x)
                    p, xp = RUNTIMES[shrunk_rt][0](private_copy(pd.head), x)
                    assert xp is xa or torch.equal(xp, xa)  # both runtimes take the same input here
                    with RUNTIMES[dense_rt][1](), RUNTIMES[shrunk_rt][1]():
                        ta, tp = latency_pair(a, p, xa, args.runs_b1 if b == 1 else args.runs_b64, args.block)
                    row[f"{name}_b{b}_ms"] = (1e3 * ta, 1e3 * tp)
                    row[f"{name}_b{b}_ratio"] = ta / tp / red
            for b in xs:  # each head in its own fastest runtime of this run
                best_dense = min(row[f"{n}_b{b}_ms"][0] for n in runtimes)
                best_shrunk = min(row[f"{n}_b{b}_ms"][1] for n in runtimes)
                row[f"best_b{b}_ms"] = (best_dense, best_shrunk)
                row[f"best_b{b}_ratio"] = best_dense / best_shrunk / red
            rows.append(row)
            cells = " | ".join(f"{row[f'{n}_b1_ratio']:.2f} | {row[f'{n}_b64_ratio']:.2f}" for n in [*runtimes, "best"])
            print(f"| {split} | {s:g} | {red:.2f} | {cells} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("prune-runtimes.json" if args.residual == "joint" else f"prune-runtimes-{args.residual}.json")
    path.write_text(json.dumps(rows, indent=1))
    print(
        f"cells: speed-up ÷ MAC reduction (1 thread, medians of turns of {args.block} calls; best: each head in its "
        f"fastest runtime); JSON: {path}"
    )


if __name__ == "__main__":
    main()
