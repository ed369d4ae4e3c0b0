"""A spec built with one seed, fidelity and thread count measures the same numbers in every process, from a cold
build or from cached phases, whatever the machine's load (issue 19)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from coinference.build import Builder
from coinference.fidelity import FIDELITIES, Fidelity
from coinference.variant import CodecSpec, VariantSpec

SPEC = VariantSpec(
    "tiny-cnn", "synthetic", "block1", sparsity=0.5, codec=CodecSpec("sq", channels=4, bits=2), fidelity="smoke"
)
"""A learned scalar quantizer: the gradient of its codebook (``codebook[symbols]``) is where threads raced."""
OTHER_CODEC = SPEC.with_(codec={"bits": 3})
"""The same pruned head and base model as SPEC (a cache hit of those phases), another codec."""
THREADS = 2
"""Intra-op threads of every build here: races between threads need more than one."""
UNSTORED = ("train_seconds", "versions")
"""Measurement fields that may differ between builds: the wall-clock and the library versions."""


def _fidelity() -> Fidelity:
    """`smoke`'s budgets with every cached phase of the `fast` preset: a distilled pruning phase on unaugmented
    images and a codec phase distilled from the base model's cached logits, fine-tuning the server tail. The codec
    phase's 24 steps take every training image: 4 × 8 × 8 latent values of ~230 images are enough for PyTorch to
    split a sum over them between threads (from 32,768 values on)."""
    smoke = FIDELITIES.get("smoke")
    return replace(
        smoke,
        prune=replace(smoke.prune, augment="none"),
        codec=replace(smoke.codec, steps=24, batch_size=256),
        prune_distill=0.9,
        base_teacher=True,
        codec_tail=True,
    )


def _digest(obj: object, h: Any) -> None:
    """Feed every tensor (its bits) and every other value of a checkpoint to the hash ``h``, in key order."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _digest(v, h)
    elif isinstance(obj, torch.Tensor):
        h.update(obj.detach().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(obj).encode())


def builder(cache: str | Path) -> Builder:
    """A builder of :func:`_fidelity` on ``cache``."""
    return Builder(cache_dir=cache, fidelities={"smoke": _fidelity()})


def measure(b: Builder, spec: VariantSpec = SPEC) -> dict[str, object]:
    """The stored fields of ``spec``'s measurement by ``b`` with :data:`THREADS` threads, and a digest of the
    weights it saved (the pruned device part, the codec and the fine-tuned tail): a measurement's few numbers can
    hide weights that differ in their last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        m = b.measure(spec).to_dict()
    finally:
        torch.set_num_threads(threads)
    h = hashlib.sha256()
    for name in ("device", "codec"):
        _digest(torch.load(b.artifacts(spec)[name], weights_only=True), h)
    return {**{k: v for k, v in m.items() if k not in UNSTORED}, "weights": h.hexdigest()}


CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from test_determinism import builder, measure
print(json.dumps(measure(builder({cache!r}))))
"""


def test_two_processes_measure_the_same_numbers(tmp_path: Path) -> None:
    # two processes at once on caches of their own, each building everything (base model, teacher logits, pruned
    # head, codec), each loading the machine for the other
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent), cache=str(tmp_path / f"cache{i}"))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]


def test_cached_phases_measure_what_a_cold_build_measures(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    warm = builder(cache)
    first = measure(warm, SPEC)  # cold
    other = measure(warm, OTHER_CODEC)  # base model, teacher logits and pruned head held in memory
    assert len(list((cache / "pruned").iterdir())) == 1  # one pruned head for both
    assert measure(builder(tmp_path / "alone"), OTHER_CODEC) == other  # cold, on a cache of its own
    # both again in a new builder on the first cache: the base model, teacher logits and pruned head read from disk
    for path in (cache / "measurements").iterdir():
        path.unlink()
    again = builder(cache)
    assert measure(again, SPEC) == first
    assert measure(again, OTHER_CODEC) == other
