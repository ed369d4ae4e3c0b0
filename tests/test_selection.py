"""Select on validation, report on test: nothing that chooses may read the test labels.

The same variants are built twice in fresh caches: once on the real data, once with every test label replaced by
garbage. Everything that selects — validation accuracy, bits, the Pareto front, the default floor, queries and the
bandwidth table, the base model's threshold, the 2-Step stopping rule — must come out identical; the test accuracy
must not (which proves the garbage reached the builder).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import coinference.base as base_module
from coinference.base import prepare_base
from coinference.build import Builder
from coinference.data import load_dataset
from coinference.latency import DEVICES, SERVERS, Link
from coinference.train import TrainConfig
from coinference.variant import CodecSpec, Measurement, VariantSpec
from storage import open_table
from storage.pareto import pareto_front
from storage.query import bandwidth_table, query, resolve_floor

SPECS = [
    VariantSpec("tiny-cnn", "synthetic", split, sparsity=s, codec=codec, fidelity="smoke", pruning=pruning)
    for split, s, codec, pruning in (
        ("stem", 0.0, CodecSpec("sq", channels=2, bits=2), "incremental"),
        ("stem", 0.5, CodecSpec("sq", channels=4, bits=2), "incremental"),
        ("block1", 0.5, CodecSpec("sq", channels=2, bits=4), "incremental"),
        ("block1", 0.0, CodecSpec("huffman", bits=8), "two-step"),
    )
]


def _garbage_test_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    real = base_module.load_dataset

    def load(*args, **kwargs):
        data = real(*args, **kwargs)
        shift = 1 + torch.arange(len(data.test_y)) % (data.num_classes - 1)  # 1 .. classes − 1
        garbage = (data.test_y + shift) % data.num_classes  # never the true label
        return replace(data, test_y=garbage)

    monkeypatch.setattr(base_module, "load_dataset", load)


def _chosen(ms: dict[str, Measurement], tmp: Path, name: str) -> dict[str, object]:
    table = open_table(f"sqlite:///{tmp / name}.db")
    for spec in SPECS:
        table.mark_running(spec, "r")
        table.record_ok(spec, ms[spec.key], "r")
    records = table.variants()
    device, server = DEVICES.get("rpi3"), SERVERS.get(SERVERS.names()[0])
    floor = resolve_floor(records, None, device)
    return {
        "front": [r.key for r in pareto_front(records)],
        "floor": floor,
        "queries": [query(records, Link(bw), device, server, floor).best.record.key for bw in (1e3, 1e5, 1e7)],
        "table": [c.to_dict() for c in bandwidth_table(records, device, server, accuracy_floor=floor)],
    }


def _selecting(m: Measurement) -> dict[str, object]:
    d = m.to_dict()
    for field in ("test_accuracy", "train_seconds", "versions"):
        d.pop(field)
    return d


def test_garbage_test_labels_change_no_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = {s.key: Builder(cache_dir=tmp_path / "real").measure(s) for s in SPECS}
    with monkeypatch.context() as m:
        _garbage_test_labels(m)
        assert not torch.equal(load_dataset("synthetic").test_y, base_module.load_dataset("synthetic").test_y)
        garbage = {s.key: Builder(cache_dir=tmp_path / "garbage").measure(s) for s in SPECS}
    for key in real:
        assert _selecting(garbage[key]) == _selecting(real[key])  # validation accuracy, bits, MACs, memory
    assert [garbage[k].test_accuracy for k in real] != [real[k].test_accuracy for k in real]
    # the garbage arrived: the variant that classifies well on real labels scores near zero on wrong ones
    best = max(real, key=lambda k: real[k].test_accuracy or 0.0)
    assert (real[best].test_accuracy or 0.0) > 0.9 > 0.1 > (garbage[best].test_accuracy or 1.0)
    assert _chosen(garbage, tmp_path, "garbage") == _chosen(real, tmp_path, "real")


def test_base_threshold_does_not_read_test_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=32)
    real = prepare_base("tiny-cnn", "synthetic", cfg, out=tmp_path / "real.pt")
    _garbage_test_labels(monkeypatch)
    garbage = prepare_base("tiny-cnn", "synthetic", cfg, out=tmp_path / "garbage.pt")
    assert garbage.threshold() == real.threshold() and garbage.accuracy == real.accuracy
    assert garbage.test_accuracy < 0.2 < 0.6 < real.test_accuracy  # the garbage arrived


def test_whole_model_candidates_are_measured_queried_and_not_exported(tmp_path: Path) -> None:
    from coinference.export import ExportError
    from coinference.variant import ON_DEVICE, SERVER_PNG
    from search.run import SearchConfig, make_space, whole_model_specs
    from storage.export import export_record

    specs = whole_model_specs(make_space(SearchConfig(model="tiny-cnn", fidelity="smoke")))
    assert [s.split for s in specs] == [ON_DEVICE, SERVER_PNG] and all(s.whole_model for s in specs)
    builder = Builder(cache_dir=tmp_path / "c")
    on_device, png = (builder.measure(s) for s in specs)
    assert on_device.server_macs == 0 and on_device.bits_mean == 2  # the class index of 4 classes
    assert png.device_macs == 0 and png.bits_mean > 8 * 8 * 8  # a PNG of an 8 × 8 RGB image
    assert on_device.val_accuracy == png.val_accuracy and on_device.device_macs == png.server_macs
    table = open_table(f"sqlite:///{tmp_path / 't.db'}")
    for spec, m in zip(specs, (on_device, png), strict=True):
        table.mark_running(spec, "r")
        table.record_ok(spec, m, "r")
    split = SPECS[0]
    table.mark_running(split, "r")
    table.record_ok(split, builder.measure(split), "r")
    records = table.variants()
    device, server = DEVICES.get("rpi3"), SERVERS.get(SERVERS.names()[0])
    # a 69 k-MAC model on a 12 GMAC/s device beats sending anything at 1 KB/s
    best = query(records, Link(1e3), device, server).best.record
    assert best.spec.split == ON_DEVICE
    with pytest.raises(ExportError, match="runs the whole tiny-cnn on the device"):
        export_record(best, tmp_path / "out", None, (3, 8, 8), None)
    assert not (tmp_path / "out").exists()
