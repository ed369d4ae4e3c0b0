"""Variants end to end on CIFAR-10 + ResNet-20: fast-preset timing and the levers of the preset, and the paper's
Fig. 3 (device MACs vs bits at accuracy ≥ threshold) and Fig. 4 (latency vs bandwidth) as fronts against fronts:
ours from a real `coinfer search` table, every baseline from a small grid of its own knobs per split, built in the
same harness at the same fidelity on the same base model.

Usage (the base checkpoint comes from `coinfer base`, see docs/RESULTS.md):
    .venv/bin/python bench/bench_variants.py --data-dir ../shared/data/cifar10 \
        --weights runs/base/resnet20-cifar10.pt \
        [--parts layout,inference,timing,ablation,temperature,codebook,phases,curve,rank] \
        [--out runs/bench/variants]
    # Fig. 3 / Fig. 4 against a search run (its model, data set, weights, fidelity and seed are the baselines'):
    .venv/bin/python bench/bench_variants.py --parts table --ours-db runs/<name> \
        [--weights <the search's --weights>] [--data-dir ...] [--baseline-splits stage|all|a,b] [--out ...]

Measurements are cached under --cache (by spec hash; for --parts table by default the search run's own cache, so
the baselines share its base model and teacher logits), so a re-run only builds what is new.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from coinference.base import recorded_accuracy
from coinference.baselines import BASELINES, baseline_specs
from coinference.build import Builder, phase_budget
from coinference.codec.train import evaluate_codec, head_features
from coinference.errors import CoinferenceError, ConfigError
from coinference.evaluate import outputs
from coinference.fidelity import FIDELITIES, Fidelity
from coinference.fused import library
from coinference.latency import DEVICES, SERVERS, Link, end_to_end, feasible, interleaved_medians
from coinference.plots import plot_latency_vs_bandwidth, plot_macs_vs_bits
from coinference.profile import profile_model
from coinference.prune import PruneConfig, prune_device
from coinference.train import TrainConfig
from coinference.variant import ON_DEVICE, WHOLE_MODEL, CodecSpec, Measurement, VariantSpec, codec_for_ratio
from coinference.zoo import file_sha256, split_model
from storage import VariantRecord
from storage.metrics import log_hypervolume


def scaled(f: Fidelity, k: float) -> Fidelity:
    """The same preset with k× the training steps in both phases."""

    def s(cfg: TrainConfig) -> TrainConfig:
        # a fixed training subset grows with the steps too, so the longer run does not just revisit it
        subset = None if cfg.subset is None else int(cfg.subset * k)
        if cfg.steps is None:
            return replace(cfg, epochs=cfg.epochs * k, subset=subset)
        return replace(cfg, steps=int(cfg.steps * k), subset=subset)

    return replace(f, name=f.name, prune=s(f.prune), codec=s(f.codec))


def warm_up() -> None:
    """One-off costs of a process and a machine, paid before the first timed build (like loading the base model),
    not by each variant: ``torch.optim`` imports ``torch._dynamo`` on first use (~3 s), and the fused runtime's C
    kernels are compiled once per machine into a cache folder."""
    t = time.perf_counter()
    import torch._dynamo  # noqa: F401

    t1 = time.perf_counter()
    try:
        library()
        compiled = f"fused runtime ready {time.perf_counter() - t1:.1f} s"
    except ConfigError as e:  # no C compiler: builds compute head features with eager PyTorch
        compiled = f"no fused runtime ({e})"
    print(f"warm-up (once per process): import torch._dynamo {t1 - t:.1f} s; {compiled}")


def timed_build(
    args: argparse.Namespace, spec: VariantSpec, label: str, fid: Fidelity, cache: Path | None = None
) -> dict:
    """Build ``spec`` under ``fid`` and time it (base model loading excluded), from a fresh temporary cache unless
    ``cache`` is given (a cache kept from an earlier run would skip the pruning phase). The built variant
    is then evaluated on the whole test set too, outside the timed part: with 2,000 images the accuracy of one
    build has a sampling error of ~0.8 points, too coarse for a 1-point comparison. The base model's logits
    (computed once per base model, like the base model itself) are shared through ``--cache``'s ``teacher``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = cache or Path(tmp)
        shared = args.cache / "teacher"
        if shared.is_dir() and not (root / "teacher").exists():
            shutil.copytree(shared, root / "teacher")
        out = _timed_build(args, spec, label, Builder(args.weights, args.data_dir, root, False, {"fast": fid}))
        if (root / "teacher").is_dir() and root / "teacher" != shared:
            shutil.copytree(root / "teacher", shared, dirs_exist_ok=True)
        return out


def _timed_build(args: argparse.Namespace, spec: VariantSpec, label: str, b: Builder) -> dict:
    fid = b.fidelity(spec)
    b.base(spec)  # base model loading is not part of a variant's cost
    if fid.base_teacher:  # nor are the base model's logits: computed once per base model, shared by every variant
        tb = time.perf_counter()
        b.teacher_logits(spec)
        print(f"{label:>8}: base model's logits on the training set (once per base model): "
              f"{time.perf_counter() - tb:.1f} s")  # fmt: skip
    t0 = time.perf_counter()
    b.prune(spec, fid)  # phase 1 alone (timed apart; build reuses it)
    t1 = time.perf_counter()
    built = b.build(spec)
    wall, pruning = time.perf_counter() - t0, t1 - t0
    m = built.measurement
    whole = evaluate_codec(built.codec, built.pruned.head, built.data.first_test(None), bits_samples=0).accuracy
    print(f"{label:>8}: {wall:6.1f} s (pruning {pruning:.1f} s)  accuracy {100 * m.accuracy:.2f}% "
          f"(whole test set {100 * whole:.2f}%)  bits {m.bits_mean:,.0f}", flush=True)  # fmt: skip
    return {"seconds": wall, "pruning_seconds": pruning, "accuracy": m.accuracy, "accuracy_whole_test": whole,
            "bits_mean": m.bits_mean}  # fmt: skip


def timing(args: argparse.Namespace, spec: VariantSpec) -> dict:
    """One fast variant, and the same spec with a 5× longer schedule, built side by side (fresh caches), for each
    of ``--seeds`` (a build's accuracy moves by a few tenths of a point with the seed: the subset, the order and
    the codec's start)."""
    fast = FIDELITIES.get("fast")
    runs = []
    for seed in args.seeds:
        s = spec.with_(seed=seed)
        one = timed_build(args, s, f"fast s{seed}", fast)
        five = timed_build(args, s, f"5× s{seed}", scaled(fast, 5))
        gap = five["accuracy_whole_test"] - one["accuracy_whole_test"]
        print(f"seed {seed}: accuracy gap (5× − 1×) {100 * (five['accuracy'] - one['accuracy']):+.2f} points on the "
              f"preset's test images, {100 * gap:+.2f} on all of them", flush=True)  # fmt: skip
        runs.append({"seed": seed, "fast": one, "fast×5": five, "gap_whole_test": gap})

    def mean(key: str, part: str) -> float:
        return statistics.mean(r[part][key] for r in runs)

    out = {
        "runs": runs,
        "fast_seconds_max": max(r["fast"]["seconds"] for r in runs),
        "fast_accuracy_whole_test_mean": mean("accuracy_whole_test", "fast"),
        "fast×5_accuracy_whole_test_mean": mean("accuracy_whole_test", "fast×5"),
        "gap_whole_test_mean": statistics.mean(r["gap_whole_test"] for r in runs),
    }
    print(
        f"over seeds {args.seeds}: fast {100 * out['fast_accuracy_whole_test_mean']:.2f}%, "
        f"5× {100 * out['fast×5_accuracy_whole_test_mean']:.2f}%, mean gap "
        f"{100 * out['gap_whole_test_mean']:+.2f} points; slowest fast build {out['fast_seconds_max']:.1f} s"
    )
    return out


def ablation(args: argparse.Namespace, spec: VariantSpec) -> dict:
    """The `fast` preset with its levers added one at a time, from the labels-only preset it replaced: pruning
    distilled from the base model (unaugmented, so its logits are computed once), then the codec phase distilled
    from the base model instead of the pruned one, then 19,200 cached training images instead of 6,400, then the
    codec phase's distillation temperature 8 instead of 2."""
    fast = FIDELITIES.get("fast")
    t2 = replace(fast, codec_temperature=2.0)
    labels = replace(t2, prune=replace(fast.prune, augment="auto"), codec=replace(fast.codec, subset=6400),
                     prune_distill=0.0, base_teacher=False)  # fmt: skip
    steps = [
        ("labels", labels),
        # the same targets as `fast`'s pruning, with the base model run on each batch: the codec phase keeps
        # distilling from the pruned model
        ("+prune KD", replace(labels, prune=fast.prune, prune_distill=fast.prune_distill)),
        ("+codec KD", replace(t2, codec=replace(fast.codec, subset=6400))),
        ("+19,200 images", t2),
        ("fast", fast),
    ]
    return {label: timed_build(args, spec, label, fid) for label, fid in steps}


TEMPERATURE_SPECS: dict[str, tuple[str, float, CodecSpec] | None] = {
    "timing": None,  # the timing spec (layer1.2, s = 0.25, r = 64)
    # server part = the classifier alone: the pooled 64-value feature coded, then one linear layer
    "layer3.2-bottlenetpp": ("layer3.2", 0.0, CodecSpec("bottlenetpp", dim=8, bits=8)),
    "layer3.2-sq": ("layer3.2", 0.0, CodecSpec("sq", bits=2)),
}
"""Variants of --parts temperature (--temperature-specs)."""


def temperature(args: argparse.Namespace, timed: VariantSpec) -> dict:
    """The codec phase's distillation temperature at the `fast` budget: per spec of --temperature-specs and seed,
    one pruned head (built once, in a cache of that seed's own) under codecs trained at each of --temperatures, so
    only the temperature differs."""
    fast = FIDELITIES.get("fast")
    out: dict[str, dict] = {}
    for name in args.temperature_specs:
        entry = TEMPERATURE_SPECS[name]
        spec = timed if entry is None else timed.with_(split=entry[0], sparsity=entry[1], codec=entry[2])
        runs: dict[str, dict] = {}
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                for t in args.temperatures:
                    # every variant at t, also one whose server part has no convolution
                    fid = replace(fast, codec_temperature=t, classifier_temperature=None)
                    label = f"T{t:g} s{seed}"
                    runs[f"s{seed} T{t:g}"] = timed_build(args, spec.with_(seed=seed), label, fid, Path(tmp))
        means = {
            f"T{t:g}": statistics.mean(runs[f"s{s} T{t:g}"]["accuracy_whole_test"] for s in args.seeds)
            for t in args.temperatures
        }
        print(f"{name}: mean accuracy on the whole test set over seeds", args.seeds, ":",
              ", ".join(f"{k} {100 * v:.2f}%" for k, v in means.items()))  # fmt: skip
        out[name] = {"runs": runs, "mean_accuracy_whole_test": means}
    return out


def codebook(args: argparse.Namespace, spec: VariantSpec) -> dict:
    """The sq quantizer's levels at the `fast` budget: per seed, one pruned head (built once, in a cache of that
    seed's own) under the codec with one codebook shared by every latent value (the default, as in the paper's
    code) and with one per latent channel, so only the codebook differs."""
    fast = FIDELITIES.get("fast")
    books = ("shared", "channel")
    runs: dict[str, dict] = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            for book in books:
                s = spec.with_(seed=seed, codec=replace(spec.codec, codebook=book))
                runs[f"s{seed} {book}"] = timed_build(args, s, f"{book} s{seed}", fast, Path(tmp))

    def mean(book: str, key: str) -> float:
        return statistics.mean(runs[f"s{s} {book}"][key] for s in args.seeds)

    out = {
        "runs": runs,
        "mean_accuracy_whole_test": {b: mean(b, "accuracy_whole_test") for b in books},
        "mean_bits": {b: mean(b, "bits_mean") for b in books},
    }
    acc, bits = out["mean_accuracy_whole_test"], out["mean_bits"]
    each = ", ".join(f"{b} {100 * acc[b]:.2f}% ({bits[b]:,.0f} bits)" for b in books)
    print(f"codebooks over seeds {args.seeds}: {each}")
    return out


def phases(args: argparse.Namespace, spec: VariantSpec) -> dict:
    """Which phase's budget is the gap to the 5× schedule: 5× pruning only, then 5× codec training only."""
    fast, longer = FIDELITIES.get("fast"), scaled(FIDELITIES.get("fast"), 5)
    return {
        label: timed_build(args, spec, label, fid)
        for label, fid in (
            ("prune×5", replace(fast, prune=longer.prune)),
            ("codec×5", replace(fast, codec=longer.codec)),
        )
    }


def layout(args: argparse.Namespace, base_spec: VariantSpec) -> dict:
    """Channels-last (the training loop's default) against the default layout, side by side: medians of
    interleaved training steps of the whole base model (batch 64, SGD: the pruning phase) and of its server part
    after layer1.2 (batch 128, Adam: the codec phase), and of batch-500 inference of the whole model (the base
    model's logits, head features, evaluation)."""
    model, data = Builder(args.weights, args.data_dir, args.cache).base(base_spec)
    _, tail = split_model(model, "layer1.2")
    cases = [
        ("train, whole model, b64 SGD", model, 64, data.input_shape, "sgd"),
        ("train, server part, b128 Adam", tail, 128, (16, 32, 32), "adam"),
        ("inference, whole model, b500", model, 500, data.input_shape, None),
    ]
    out = {}
    for name, net, bs, shape, opt in cases:
        steps = []
        for fmt in (torch.contiguous_format, torch.channels_last):
            m = copy.deepcopy(net).to(memory_format=fmt).train(opt is not None)
            x = torch.randn(bs, *shape).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (bs,))
            if opt is None:
                steps.append(lambda m=m, x=x: m(x))
                continue
            o = (torch.optim.SGD(m.parameters(), 0.01, momentum=0.9) if opt == "sgd"
                 else torch.optim.Adam(m.parameters(), 1e-3))  # fmt: skip

            def step(m=m, x=x, y=y, o=o) -> None:
                o.zero_grad()
                F.cross_entropy(m(x), y).backward()
                o.step()

            steps.append(step)
        with torch.set_grad_enabled(opt is not None):
            nchw, nhwc = interleaved_medians(steps[0], steps[1], args.layout_runs, warmup=2)
        out[name] = {"nchw_s": nchw, "nhwc_s": nhwc, "speedup": nchw / nhwc}
        print(f"{name:>32}: NCHW {1e3 * nchw:7.1f} ms, channels-last {1e3 * nhwc:7.1f} ms → {nchw / nhwc:.2f}×",
              flush=True)  # fmt: skip
    return out


INFERENCE_BATCHES = (500, 256, 128, 64)


def inference(args: argparse.Namespace, base_spec: VariantSpec) -> dict:
    """Batched inference at several batch sizes, side by side: medians of interleaved passes of 2,000 training
    images through the whole base model, and through a pruned layer1.2 head (s = 0.25, one-shot masks: speed does
    not depend on the weights), with :func:`coinference.evaluate.outputs` (channels-last) as every evaluation runs;
    then that head's outputs on the `fast` codec phase's training images, eager against ``head_features`` (the
    fused runtime where it supports the head), medians of three interleaved passes after one."""
    model, data = Builder(args.weights, args.data_dir, args.cache).base(base_spec)
    head = prune_device(model, "layer1.2", data, PruneConfig(sparsity=0.25, train=None)).head
    x = data.train_x[:2000]
    out = {}
    for name, net in (("whole model", model), ("pruned layer1.2 head, s=0.25", head)):
        calls = {bs: (lambda bs=bs, net=net: outputs(net, data, x, bs)) for bs in INFERENCE_BATCHES}
        times: dict[int, list[float]] = {bs: [] for bs in INFERENCE_BATCHES}
        for r in range(args.layout_runs // 2 + 1):
            for bs, call in calls.items():
                t0 = time.perf_counter()
                call()
                if r:  # the first round warms up
                    times[bs].append(time.perf_counter() - t0)
        med = {bs: statistics.median(ts) for bs, ts in times.items()}
        ref = med[INFERENCE_BATCHES[0]]
        out[name] = {str(bs): {"seconds_per_2000": t, "speedup_vs_500": ref / t} for bs, t in med.items()}
        print(f"{name:>30}: " + ", ".join(f"b{bs} {t:.3f} s ({ref / t:.2f}×)" for bs, t in med.items()), flush=True)
    # a `fast` build's codec-phase head features: eager PyTorch against the fused runtime with a replica per
    # thread (what head_features runs), interleaved passes over as many images as the preset caches
    many = data.train_x[: FIDELITIES.get("fast").codec.subset]
    eager_s, features_s = interleaved_medians(
        lambda: outputs(head, data, many), lambda: head_features(head, data, many), runs=3, warmup=1
    )
    med = {"eager": eager_s, "head_features": features_s}
    out["head features, pruned layer1.2 head"] = {"images": len(many), **{f"{k}_seconds": v for k, v in med.items()}}
    print(f"head features of {len(many):,} images: eager {med['eager']:.2f} s, head_features "
          f"{med['head_features']:.2f} s ({med['eager'] / med['head_features']:.2f}×)", flush=True)  # fmt: skip
    return out


CURVE = [(150, 19200), (300, 38400), (750, 19200), (750, 50000)]
"""(codec steps, training images) budgets of --parts curve; the first is `fast`'s, the last its 5× (all 50,000
images: augmented live batches where their features exceed the 2 GiB feature cache)."""


def curve(args: argparse.Namespace, spec: VariantSpec) -> list[dict]:
    """The codec phase alone at growing budgets, on one pruned head (`fast` pruning, built once), each evaluated
    on the whole test set: does the gap to the 5× schedule come from the number of steps or of distinct images?"""
    fast = FIDELITIES.get("fast")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # pruned in the first row, reused from this cache by the others
        for steps, subset in CURVE:
            fid = replace(fast, codec=replace(fast.codec, steps=steps, subset=subset))
            r = timed_build(args, spec, f"{steps}×{subset}", fid, Path(tmp))
            rows.append({"steps": steps, "subset": subset, **r})
    return rows


RANK: list[tuple[str, float, float | CodecSpec]] = [
    ("stem", 0.5, 16),
    ("layer1.2", 0.1, 64),
    ("layer3.2", 0.0, CodecSpec("sq", bits=2)),
    ("layer3.2", 0.05, 32),
]
"""Variants of --parts rank: different splits, pruning and codecs, each built at `fast` and at 5×."""


def our_spec(
    base_spec: VariantSpec, shapes: dict, split: str, sparsity: float, ratio: float | CodecSpec
) -> VariantSpec:
    """One row of OURS / RANK as a spec (a ratio goes through codec_for_ratio at 2 bits)."""
    codec = ratio if isinstance(ratio, CodecSpec) else codec_for_ratio(shapes[split], ratio, 2)
    return base_spec.with_(split=split, sparsity=sparsity, codec=codec)


def rank(args: argparse.Namespace, base_spec: VariantSpec, shapes: dict) -> dict:
    """Is the `fast` preset's gap to the 5× schedule the same for every variant (so that a search on `fast`
    accuracies ranks variants as the longer schedule would)? Whole-test-set accuracies of both, side by side."""
    fast = FIDELITIES.get("fast")
    rows = []
    for split, sparsity, ratio in RANK:
        spec = our_spec(base_spec, shapes, split, sparsity, ratio)
        label = f"{split} s={sparsity} {spec.codec.label}"
        one, five = timed_build(args, spec, "fast", fast), timed_build(args, spec, "fast×5", scaled(fast, 5))
        rows.append({"variant": label, "fast": one, "fast×5": five,
                     "gap": five["accuracy_whole_test"] - one["accuracy_whole_test"]})  # fmt: skip
        print(f"{label}: gap {100 * rows[-1]['gap']:+.2f} points (whole test set)", flush=True)
    a = [r["fast"]["accuracy_whole_test"] for r in rows]
    b = [r["fast×5"]["accuracy_whole_test"] for r in rows]
    tau = float(kendalltau(a, b).statistic)
    print(f"Kendall tau between fast and 5× accuracies over {len(rows)} variants: {tau:+.2f}")
    return {"rows": rows, "kendall_tau": tau}


METHODS = ("ours", *BASELINES, *WHOLE_MODEL)
"""Rows of --parts table, in order: ours (a search's table), each baseline's grid, the whole-model candidates."""


def _identity(spec: VariantSpec) -> tuple:
    """What ours and the baselines must share: model, data set, base weights, fidelity, seed, validation split."""
    return (spec.model, spec.dataset, spec.weights_sha256, spec.fidelity, spec.seed, spec.val_size)


def read_ours(text: str, fidelity: str | None) -> tuple[VariantSpec, list[VariantRecord], dict[str, VariantRecord]]:
    """(base spec, our split variants, whole-model candidates by split) from the lookup table of a real ``coinfer
    search`` run (--ours-db: URL, SQLite file or run folder): its ``ok`` variants of one base (model, data set,
    weights, fidelity, seed, validation split; --fidelity picks one when the table mixes them)."""
    from search.runs import db_url
    from storage import open_table

    url = db_url(text)[0]
    with open_table(url, create=False) as t:
        records = [r for r in t.variants(status="ok") if fidelity is None or r.spec.fidelity == fidelity]
    split = [r for r in records if not r.spec.whole_model]
    bases = sorted({_identity(r.spec) for r in split}, key=str)
    if len(bases) != 1:
        what = "no measured split variant" if not bases else f"{len(bases)} bases: {bases}"
        raise ConfigError(f"--ours-db {text}: {what}" + (" (pick one with --fidelity)" if bases else ""))
    model, dataset, sha, fid, seed, val_size = bases[0]
    base = VariantSpec(model, dataset, split[0].spec.split, weights_sha256=sha, fidelity=fid, seed=seed,
                       val_size=val_size)  # fmt: skip
    whole = {r.spec.split: r for r in records if r.spec.whole_model and _identity(r.spec) == bases[0]}
    return base, split, whole


def _front(rows: list[dict], threshold: float) -> None:
    """Mark each row's ``front``: at val accuracy ≥ ``threshold``, not dominated in (device MACs, payload bits) by
    another such row of the same method (the paper's Fig. 3, per method)."""
    ok = [r for r in rows if r.get("val_accuracy") is not None and r["val_accuracy"] >= threshold]
    for r in rows:
        r["front"] = r in ok and not any(
            o["device_macs"] <= r["device_macs"] and o["bits_mean"] <= r["bits_mean"]
            and (o["device_macs"], o["bits_mean"]) != (r["device_macs"], r["bits_mean"])
            for o in ok
        )  # fmt: skip


def table(args: argparse.Namespace) -> tuple[dict[str, list[dict]], float, dict]:
    """Fronts against fronts, validation-selected: ours = the variants of a real search (--ours-db), each baseline
    = its grid at every --baseline-splits split (coinference.baselines.baseline_specs), built in the same harness at
    the search's fidelity on the same base model; the whole-model candidates. The threshold is the base model's
    validation accuracy (the on-device row) − --margin; fronts and thresholds read validation accuracy, the test
    accuracy is only reported."""
    base, ours, whole = read_ours(args.ours_db, args.fidelity)
    if base.weights_sha256 is not None and (args.weights is None or file_sha256(args.weights) != base.weights_sha256):
        raise ConfigError(f"--ours-db was built on base weights {base.weights_sha256[:12]}…: pass them as --weights")
    weights = args.weights if base.weights_sha256 is not None else None
    cache = args.cache
    if cache is None:  # the search's own cache: the same base model (trained from scratch) and teacher logits
        from search.runs import db_url

        file = db_url(args.ours_db)[1]
        run_cache = file.parent / "cache" if file is not None else None
        cache = run_cache if run_cache is not None and run_cache.is_dir() else Path("runs/cache-bench")
    print(f"ours: {len(ours)} variants of {args.ours_db}; baselines built in {cache}")
    b = Builder(weights, args.data_dir, cache)
    model, data = b.base(base)
    fid = b.fidelity(base)
    n_train = len(data.train_x)
    prof = profile_model(model, data.input_shape, base.model)
    shapes = prof.feature_shapes()
    if args.baseline_splits == "stage":
        splits = [sp.name for sp in prof.splits if sp.stage_end]
    elif args.baseline_splits == "all":
        splits = list(shapes)
    else:
        splits = args.baseline_splits.split(",")
        unknown = [sp for sp in splits if sp not in shapes]
        if unknown:
            raise ConfigError(f"--baseline-splits: {unknown} are not split points of {base.model}: {list(shapes)}")
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}

    def add(method: str, spec: VariantSpec, m: Measurement | None, label: str, error: str = "") -> None:
        row = {"label": label, "spec": spec.to_dict(), "budget": phase_budget(spec, fid, n_train).describe(),
               "error": error or None, "val_accuracy": None}  # fmt: skip
        if m is not None:
            row.update(m.to_dict())
        rows[method].append(row)

    for split in WHOLE_MODEL:  # as the search measured them, else measured here (evaluation only)
        spec = VariantSpec.whole(split, base.model, base.dataset, weights_sha256=base.weights_sha256,
                                 fidelity=base.fidelity, seed=base.seed, val_size=base.val_size)  # fmt: skip
        rec = whole.get(split)
        add(split, spec, rec.measurement if rec is not None else b.measure(spec), split)
    threshold = rows[ON_DEVICE][0]["val_accuracy"] - args.margin
    for r in ours:
        add("ours", r.spec, r.measurement, f"{r.spec.split} s={r.spec.sparsity:g} a={r.spec.activation_sparsity:g} "
            f"{r.spec.codec.label}")  # fmt: skip
    t0 = time.perf_counter()
    for method, by_split in baseline_specs(base, {sp: shapes[sp] for sp in splits}).items():
        for split, specs in by_split.items():
            for spec in specs:
                two_step = f" a={spec.activation_sparsity:g}" if spec.pruning == "two-step" else ""
                label = f"{split}{two_step} {spec.codec.label}"
                try:
                    add(method, spec, b.measure(spec), label)
                except CoinferenceError as e:  # a failed baseline is reported, not fatal
                    add(method, spec, None, label, str(e).splitlines()[0])
                r = rows[method][-1]
                print(f"{method:>15} {label:<40} " + (f"FAILED: {r['error']}" if r["error"] else
                      f"val {100 * r['val_accuracy']:6.2f}% test {100 * r['test_accuracy']:6.2f}% "
                      f"{r['train_seconds']:6.1f} s"), flush=True)  # fmt: skip
    print(f"baselines: {time.perf_counter() - t0:.0f} s (measurements already cached cost nothing)")
    for rs in rows.values():
        _front(rs, threshold)
    summary = _print_table(rows, threshold, args.margin, fid, base, splits)
    return rows, threshold, summary


def _print_table(rows: dict[str, list[dict]], threshold: float, margin: float, fid: Fidelity, base: VariantSpec,
                 splits: list[str]) -> dict:  # fmt: skip
    """The rows of every method (✓ = val accuracy ≥ threshold, ★ = on the method's front), then one line per method
    with its budget, its front and its log hypervolume (storage.metrics: val error, device MACs, bits)."""
    print(f"\n{base.model} on {base.dataset}, fidelity {fid.name}, seed {base.seed}; baselines at {', '.join(splits)}")
    print(
        f"threshold {100 * threshold:.2f}% = the base model's val accuracy (on-device row) − {100 * margin:g} points; "
        "fronts and ✓ read val accuracy, test accuracy is only reported; bits = payload per image (a split variant's "
        "80-bit header counts in the latencies and the log HV)"
    )
    head = f"{'method':>15} {'variant':<40} {'val acc':>8} {'test acc':>8} {'device MACs':>12} {'bits':>10}"
    print(head + "  front")
    summary: dict[str, dict] = {}
    for method in METHODS:
        for r in rows[method]:
            if r["error"]:
                print(f"{method:>15} {r['label']:<40} FAILED: {r['error']}")
                continue
            ok = "✓" if r["val_accuracy"] >= threshold else " "
            print(f"{method:>15} {r['label']:<40} {100 * r['val_accuracy']:7.2f}%{ok} "
                  f"{100 * (r['test_accuracy'] or 0):7.2f}% {r['device_macs'] / 1e6:10.2f} M {r['bits_mean']:>10,.0f}"
                  f"  {'★' if r['front'] else ''}")  # fmt: skip
    print(f"\n{'method':>15} {'built':>5} {'≥thr':>5} {'front':>5} {'log HV':>7} {'train s':>8}  budget per variant")
    for method in METHODS:
        rs = [r for r in rows[method] if not r["error"]]
        ms = [Measurement.from_dict({k: v for k, v in r.items() if k in MEASUREMENT_FIELDS}) for r in rs]
        budgets = sorted({r["budget"] for r in rs})
        summary[method] = {
            "built": len(rs), "failed": len(rows[method]) - len(rs),
            "at_threshold": sum(r["val_accuracy"] >= threshold for r in rs), "front": sum(r["front"] for r in rs),
            "log_hypervolume": log_hypervolume(ms), "train_seconds": sum(r["train_seconds"] for r in rs),
            "budgets": budgets,
        }  # fmt: skip
        s = summary[method]
        print(f"{method:>15} {s['built']:>5} {s['at_threshold']:>5} {s['front']:>5} {s['log_hypervolume']:7.4f} "
              f"{s['train_seconds']:8.0f}  {' | '.join(budgets) or '-'}")  # fmt: skip
    return summary


MEASUREMENT_FIELDS = {f.name for f in dataclasses.fields(Measurement)}


def figures(rows: dict[str, list[dict]], threshold: float, out: Path) -> dict:
    """Fig. 3 (device MACs vs bits: each method's front at the threshold) and Fig. 4 (latency vs bandwidth: each
    method's fastest variant at the threshold that fits the device), and which baseline front points ours' front
    does not dominate."""
    ok = {k: [r for r in v if not r["error"] and r["val_accuracy"] >= threshold] for k, v in rows.items()}
    fronts = {k: [r for r in v if r["front"]] for k, v in rows.items()}
    plot_macs_vs_bits(fronts, out / "fig3-macs-vs-bits.png", f"fronts at val accuracy ≥ {100 * threshold:.2f}%")
    bws = np.logspace(3, 7, 41)
    server = SERVERS.get("rtx2080ti")
    lat: dict[str, dict[str, list[float]]] = {}
    for dev_name in ("rpi3", "mcu"):
        dev = DEVICES.get(dev_name)
        lat[dev_name] = {}
        for method, rs in ok.items():
            ms = [Measurement.from_dict({k: v for k, v in r.items() if k in MEASUREMENT_FIELDS}) for r in rs]
            best = []
            for bw in bws:
                cands = [end_to_end(m, dev, server, Link(float(bw))).total_s for m in ms if feasible(m, dev)]
                best.append(min(cands) if cands else math.nan)
            lat[dev_name][method] = best
        plot_latency_vs_bandwidth(bws, lat[dev_name], out / f"fig4-latency-{dev_name}.png", f"{dev_name} + rtx2080ti")
        each = "; ".join(
            f"{k} " + "/".join("-" if math.isnan(v[i]) else f"{1e3 * v[i]:,.1f}" for i in (0, 20, 40))
            for k, v in lat[dev_name].items()
        )
        print(f"Fig. 4 {dev_name}: latency (ms) of each method's best variant at 1 KB/s / 100 KB/s / 10 MB/s: {each}")
    ours = [(r["device_macs"], r["bits_mean"]) for r in fronts["ours"]]
    undominated = [
        (k, r["label"]) for k, v in fronts.items() if k != "ours" for r in v
        if not any(m <= r["device_macs"] and b <= r["bits_mean"] for m, b in ours)
    ]  # fmt: skip
    return {"bandwidths": bws.tolist(), "latency": lat, "baseline_front_points_not_dominated": undominated}


def _weights(text: str) -> Path | None:
    return None if text.lower() == "none" else Path(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="folder of a file-backed data set (cifar10)")
    ap.add_argument(
        "--weights",
        type=_weights,
        default=Path("runs/base/resnet20-cifar10.pt"),
        help="base checkpoint ('none': a base trained from scratch, as a search without --weights)",
    )
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--margin", type=float, default=0.02, help="threshold = base accuracy (same images) − margin")
    ap.add_argument("--parts", default="timing")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="builder cache (default runs/cache-bench; --parts table: the --ours-db run's cache)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench/variants"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--ours-db",
        default=None,
        help="--parts table: the lookup table of a coinfer search run (URL, SQLite file or run folder)",
    )
    ap.add_argument("--fidelity", default=None, help="--parts table: the fidelity of --ours-db's variants to use")
    ap.add_argument(
        "--baseline-splits",
        default="stage",
        help="--parts table: baselines at the stage-end splits (stage), every split (all) or a,b,c",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="seeds of --parts timing (each: fast and 5×), temperature and codebook")  # fmt: skip
    ap.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0, 8.0],
                    help="codec distillation temperatures of --parts temperature")  # fmt: skip
    ap.add_argument("--temperature-specs", nargs="+", choices=list(TEMPERATURE_SPECS), default=["timing"],
                    help="variants of --parts temperature")  # fmt: skip
    ap.add_argument("--layout-runs", type=int, default=20, help="timed steps per layout in --parts layout")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "table" in parts and args.ours_db is None:
        ap.error("--parts table compares fronts with ours: give --ours-db (the lookup table of a coinfer search)")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    warm_up()
    result: dict = {}
    if args.weights is not None and args.weights.is_file():
        result["base_accuracy"] = base_acc = recorded_accuracy(args.weights)  # validation: the threshold's base
        result["base_test_accuracy"] = test_acc = recorded_accuracy(args.weights, split="test")
        print(f"base {args.model} (recorded by coinfer base): validation {100 * base_acc:.2f}%, "
              f"test {100 * test_acc:.2f}%")  # fmt: skip
    table_cache, args.cache = args.cache, args.cache or Path("runs/cache-bench")
    if [p for p in parts if p != "table"]:
        base_spec = VariantSpec(
            args.model,
            "cifar10",
            "layer1.2",
            weights_sha256=file_sha256(args.weights) if args.weights is not None else None,
            codec=CodecSpec("sq"),
            fidelity="fast",
        )
        timed = base_spec.with_(sparsity=0.25, codec=codec_for_ratio((16, 32, 32), 64, 2))
    if "layout" in parts:
        result["layout"] = layout(args, base_spec)
    if "inference" in parts:
        result["inference"] = inference(args, base_spec)
    if "timing" in parts:
        result["timing"] = timing(args, timed)
    if "ablation" in parts:
        result["ablation"] = ablation(args, timed)
    if "temperature" in parts:
        result["temperature"] = temperature(args, timed)
    if "codebook" in parts:
        result["codebook"] = codebook(args, timed)
    if "phases" in parts:
        result["phases"] = phases(args, timed)
    if "curve" in parts:
        result["curve"] = curve(args, timed)
    if "rank" in parts:
        model, data = Builder(args.weights, args.data_dir, args.cache).base(base_spec)
        result["rank"] = rank(args, base_spec, profile_model(model, data.input_shape, args.model).feature_shapes())
    if "table" in parts:
        args.cache = table_cache
        rows, threshold, summary = table(args)
        result.update(rows=rows, threshold=threshold, summary=summary)
        result.update(figures(rows, threshold, args.out))
        print("baseline front points not dominated by ours' front:",
              result["baseline_front_points_not_dominated"] or "none")  # fmt: skip
    (args.out / "variants.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}/variants.json and figures")


if __name__ == "__main__":
    main()
