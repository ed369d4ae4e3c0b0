from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import coinference.build as build
from coinference.build import Builder, build_and_measure, load_codec
from coinference.codec import CodecConfig
from coinference.errors import ConfigError, TrainingError
from coinference.fidelity import FIDELITIES
from coinference.prune import load_pruned
from coinference.variant import CodecSpec, Measurement, VariantSpec

SPEC = VariantSpec(
    "tiny-cnn", "synthetic", "block1", sparsity=0.5, codec=CodecSpec("sq", channels=2, bits=2), fidelity="smoke"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_build_measures_and_caches(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = build_and_measure(SPEC, cache_dir=cache)
    assert 0 <= m.accuracy <= 1
    assert m.device_macs > m.encoder_macs > 0 and m.server_macs > m.decoder_macs > 0
    assert m.bits_mean > 0 and m.bits_max >= m.bits_mean and m.header_bits > 0
    assert m.device_param_bytes > 0 and m.device_peak_activation_bytes > 0
    [path] = (cache / "measurements").glob(f"{SPEC.key}-*.json")
    stored = json.loads(path.read_text())
    assert Measurement.from_dict(stored) == m

    def boom(*a, **k):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(build, "train_codec", boom)
    monkeypatch.setattr(build, "prune_device", boom)
    assert build_and_measure(SPEC, cache_dir=cache) == m


@pytest.mark.parametrize("damage", ['{"accuracy": 0.5', '{"accuracy": 0.5}', "[1, 2]"])
def test_damaged_measurement_is_rebuilt_not_trusted(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = build_and_measure(SPEC, cache_dir=tmp_path)
    [path] = (tmp_path / "measurements").glob(f"{SPEC.key}-*.json")
    path.write_text(damage)  # truncated, fields missing, not a Measurement at all
    builds: list[VariantSpec] = []
    real = Builder.build
    monkeypatch.setattr(Builder, "build", lambda self, spec: builds.append(spec) or real(self, spec))
    again = build_and_measure(SPEC, cache_dir=tmp_path)
    assert builds == [SPEC]  # rebuilt, from the pruned backbone on disk
    assert again.bits_mean > 0 and again.device_macs == m.device_macs
    assert Measurement.from_dict(json.loads(path.read_text())) == again  # and written back whole
    assert build_and_measure(SPEC, cache_dir=tmp_path) == again and builds == [SPEC]  # now a plain cache hit


def test_pruned_backbone_reused_across_codecs(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = build.prune_device
    monkeypatch.setattr(build, "prune_device", lambda *a, **k: calls.append("p") or real(*a, **k))
    b = Builder(cache_dir=cache / "fresh")
    for bits in (1, 2, 3):
        b.measure(SPEC.with_(codec={"bits": bits}))
    assert calls == ["p"]
    # a new process (new Builder) reuses the pruned backbone from disk
    Builder(cache_dir=cache / "fresh").measure(SPEC.with_(codec={"bits": 4}))
    assert calls == ["p"]


def test_artifacts_reload_bit_exact(cache: Path) -> None:
    b = Builder(cache_dir=cache)
    built = b.build(SPEC)
    paths = build.save_variant(built, cache / "artifact")
    pruned = load_pruned(paths["device"])
    codec, _ = load_codec(paths["codec"])
    x = built.data.normalize(built.data.test_x[:1])
    with torch.no_grad():
        f1 = built.pruned.head(x)
        f2 = pruned.head(x)
    torch.testing.assert_close(f1, f2)
    assert codec.compress(f2) == built.codec.compress(f1)


def test_codebook_of_the_spec_and_of_checkpoints_written_before_it(cache: Path) -> None:
    b = Builder(cache_dir=cache)
    assert b.build(SPEC.with_(codec={"codebook": "channel"})).codec.codec.quantizer.codebook.shape == (2, 4)
    shared = b.build(SPEC)  # one codebook by default
    assert shared.codec.codec.quantizer.codebook.shape == (4,)
    paths = build.save_variant(shared, cache / "artifact-shared")
    blob = torch.load(paths["codec"], weights_only=True)
    del blob["config"]["codebook"]  # as written before the field existed: those codecs had one shared codebook
    torch.save(blob, paths["codec"])
    codec, _ = load_codec(paths["codec"])
    f = torch.randn(1, *shared.codec.feature_shape).relu()
    assert codec.cfg.codebook == "shared" and codec.compress(f) == shared.codec.compress(f)


def test_failing_variant_raises_typed_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = FIDELITIES.get("smoke")
    exploding = replace(smoke, prune=replace(smoke.prune, lr=1e30, steps=8))
    monkeypatch.setattr(build.FIDELITIES, "get", lambda name: exploding)
    with pytest.raises(TrainingError, match="loss became"):
        Builder(cache_dir=cache / "nan").measure(SPEC.with_(seed=7))
    assert not list((cache / "nan").glob("measurements/*.json"))


def test_bad_specs(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split point 'layer9' does not exist"):
        build_and_measure(SPEC.with_(split="layer9"), cache_dir=cache)
    w = tmp_path / "w.pt"
    w.write_bytes(b"x")
    with pytest.raises(ConfigError, match="spec wants base weights None"):
        build_and_measure(SPEC, weights=w, cache_dir=cache)


def test_codec_channels_capped_by_pruned_feature(cache: Path) -> None:
    """block1 of tiny-cnn has 8 channels; at sparsity 0.5 only 4 are sent, so a 6-channel conv keeps 4."""
    spec = SPEC.with_(codec={"channels": 6})
    built = Builder(cache_dir=cache).build(spec)
    assert len(built.pruned.kept_channels) == 4
    assert built.codec.codec.cfg.channels == 4


def test_changed_preset_is_not_answered_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_and_measure(SPEC, cache_dir=cache)
    smoke = FIDELITIES.get(SPEC.fidelity)
    longer = replace(smoke, codec=replace(smoke.codec, steps=smoke.codec.steps + 1))
    calls: list[int] = []
    real = build.train_codec

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(build, "train_codec", counting)
    Builder(cache_dir=cache, fidelities={SPEC.fidelity: longer}).measure(SPEC)
    assert calls == [1]


def test_strided_codec_with_tail_fine_tuning_builds_and_reloads(cache: Path) -> None:
    # a fidelity that fine-tunes the tail: the saved tail differs from the base's and reloads with the codec
    smoke = FIDELITIES.get("smoke")
    spec = SPEC.with_(codec={"channels": 2, "stride": 2})
    b = Builder(cache_dir=cache / "strided", fidelities={"smoke": replace(smoke, codec_tail=True)})
    built = b.build(spec)
    assert built.codec.config.stride == 2 and built.codec.config.finetune_tail
    assert built.codec.codec.latent_shape[-2:] == (4, 4)  # 8×8 feature, stride 2
    base_tail = {f"1.{k}": v for k, v in built.pruned.tail.state_dict().items()}  # server = (expand, tail)
    tuned = built.codec.tail.state_dict()
    assert any(not torch.equal(tuned[k], base_tail[k]) for k in base_tail if tuned[k].is_floating_point())
    paths = build.save_variant(built, cache / "strided-artifact")
    codec, tail_state = load_codec(paths["codec"])
    assert codec.cfg.stride == 2
    for k, v in tuned.items():
        torch.testing.assert_close(tail_state[k], v)


@pytest.mark.parametrize(
    ("shape", "sent", "codec", "expect"),
    [
        ((32,), 3, CodecConfig("sq", dim=16), CodecConfig("sq")),  # FC to 16 of 3 pooled values: dropped
        ((32,), 20, CodecConfig("sq", dim=16), CodecConfig("sq", dim=16)),
        ((8, 4, 4), 2, CodecConfig("sq", channels=6, dim=40), CodecConfig("sq", channels=2)),  # 2 × 16 = 32 ≤ 40
        ((8, 4, 4), 8, CodecConfig("sq", channels=6, stride=2, dim=8), CodecConfig("sq", channels=6, stride=2, dim=8)),
    ],
)
def test_codec_fitted_to_the_pruned_feature(shape, sent, codec, expect) -> None:
    assert build.fit_codec_to_pruned(codec, shape, sent) == expect


def test_codec_without_conv_or_fc_builds(cache: Path) -> None:
    # the whole feature quantized: nothing to warm up, the quantizer trains from step 0 (used to raise in backward)
    m = Builder(cache_dir=cache).measure(SPEC.with_(codec={"channels": None}))
    assert m.bits_mean > 0 and m.encoder_macs == 0


def test_base_teacher_logits_cached_on_disk(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = FIDELITIES.get("smoke")
    distilled = replace(smoke, prune_distill=0.9, base_teacher=True)
    folder = cache / "teacher-run"
    b = Builder(cache_dir=folder, fidelities={"smoke": distilled})
    seen: list[torch.Tensor | None] = []
    real = build.train_codec

    def spy(*a, **k):
        seen.append(k.get("teacher_logits"))
        return real(*a, **k)

    monkeypatch.setattr(build, "train_codec", spy)
    m = b.measure(SPEC)
    b.measure(SPEC.with_(sparsity=0.0))  # nothing to prune: no training, so no distillation targets either
    model, data = b.base(SPEC)
    [path] = (folder / "teacher").glob("*.pt")
    logits = torch.load(path, weights_only=True)["logits"]
    assert logits.shape == (len(data.train_x), 4) and seen[0] is not None and torch.equal(seen[0], logits)
    with torch.no_grad():
        torch.testing.assert_close(logits[:8], model.eval()(data.normalize(data.train_x[:8])))
    # a new builder reads them from disk; a damaged file is recomputed, never trusted
    monkeypatch.setattr(build, "outputs", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert torch.equal(Builder(cache_dir=folder, fidelities={"smoke": distilled}).teacher_logits(SPEC), logits)
    path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(build, "outputs", lambda *a, **k: logits + 1)
    assert torch.equal(Builder(cache_dir=folder).teacher_logits(SPEC), logits + 1)
    # the presets' budgets are in the cache key: the labels-only preset is measured apart
    assert b.measure(SPEC) == m
    Builder(cache_dir=folder).measure(SPEC)
    assert len(list((folder / "measurements").glob(f"{SPEC.key}-*.json"))) == 2


def test_parallel_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    import threading

    target = tmp_path / "teacher" / "key.pt"
    names: list[Path] = []
    both_alive = threading.Barrier(2)  # thread ids are unique only among live threads, as are the writers

    def writer() -> None:
        names.append(build._tmp_name(target))
        both_alive.wait()

    workers = [threading.Thread(target=writer) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    names.append(build._tmp_name(target))
    assert len(set(names)) == 3 and all(n.parent == target.parent and n.name.endswith(".tmp") for n in names)
    assert target.parent.is_dir()


def test_classifier_only_server_part_gets_its_own_temperature(cache: Path) -> None:
    # a server part without convolutions (tiny-cnn cut after block2: only the linear classifier) distills at the
    # preset's classifier temperature; one with convolutions at its codec temperature
    smoke = FIDELITIES.get("smoke")
    fid = replace(smoke, codec_temperature=8.0, classifier_temperature=3.0)
    b = Builder(cache_dir=cache / "temperature", fidelities={"smoke": fid})
    late = b.build(SPEC.with_(split="block2", sparsity=0.0, codec=CodecSpec("sq", bits=2)))
    early = b.build(SPEC)
    assert late.codec.config.distill_temperature == 3.0
    assert early.codec.config.distill_temperature == 8.0
    assert replace(fid, classifier_temperature=None).codec_temperature_for(late.pruned.tail) == 8.0
    assert FIDELITIES.get("fast").codec_temperature_for(torch.nn.Linear(4, 2)) == 2.0
