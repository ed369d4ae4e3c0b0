"""One spec → a trained, measured co-inference variant.

``build_and_measure(spec)`` runs: base model (given weights, or trained from scratch and cached) → split and
prune the device part (phase 1; cached per (model, weights, split, sparsity, schedule, method, activation
sparsity, fidelity, seed, validation split) and so reused across codec settings) → train the codec on the frozen
pruned head (phase 2) → evaluate accuracy and count bits from real bytes at batch 1 on the validation images
(what selects), and accuracy on the test images (reported only). Every phase trains on the training images minus
the validation split. Measurements are cached on disk by spec hash: a repeated spec costs nothing.

Cache layout under ``cache_dir`` (default ``runs/cache``)::

    base/<model>-<dataset>-scratch-<fidelity>-s<seed>[-val<n>].v2.pt   base models trained from scratch
    teacher/<hash>.pt                                         a base model's logits on every training image
    pruned/<hash>.pt                                          phase-1 results (coinference.pruned/1 format)
    measurements/<spec key>-<preset>.m2.json                  Measurement of a spec
    variants/<spec key>/{spec.json,device.pt,codec.pt}        artifacts for export (when kept)
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from coinference.base import load_base, prepare_base
from coinference.codec import CodecConfig, TrainedCodec, evaluate_codec, train_codec
from coinference.codec.base import build_codec
from coinference.codec.state import coder_state, load_coder_state
from coinference.data import ImageData
from coinference.errors import CheckpointError, ConfigError
from coinference.evaluate import outputs
from coinference.fidelity import FIDELITIES, Fidelity
from coinference.profile import module_cost
from coinference.progress import phase
from coinference.prune import PruneConfig, PrunedDevice, TwoStepConfig, load_pruned, prune_device, save_pruned
from coinference.prune.activation import Expand
from coinference.variant import ON_DEVICE, Measurement, VariantSpec
from coinference.zoo import SplittableModel, file_sha256

DEFAULT_CACHE = Path("runs/cache")
T = TypeVar("T")


@dataclass(eq=False)
class BuiltVariant:
    """A built variant's modules: device = head → codec encoder; server = codec decoder → expand → tail."""

    spec: VariantSpec
    pruned: PrunedDevice
    codec: TrainedCodec
    data: ImageData
    measurement: Measurement

    def server_tail(self) -> nn.Module:
        """Decoded transmitted feature → logits (the codec's tail already starts with the channel expand)."""
        return self.codec.tail.eval()


def _versions() -> dict[str, str]:
    import numpy

    import coinference

    # the intra-op thread count is part of a build's identity: batch-norm statistics are summed across threads, so
    # 1 and 2 threads train to different last bits (the same count gives identical numbers: tests/test_determinism)
    return {
        "coinference": coinference.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "threads": str(torch.get_num_threads()),
    }


def _disk_cached(
    path: Path,
    load: Callable[[Path], T | None],
    compute: Callable[[], T],
    save: Callable[[T, Path], object],
    damaged: tuple[type[BaseException], ...],
) -> T:
    """The cache entry at ``path``: ``load``ed when present and sound (``load`` returns None or raises one of
    ``damaged`` for an entry that must not be trusted), else ``compute``d and saved, whole, under a private
    temporary name renamed into place."""
    value = None
    if path.is_file():
        try:
            value = load(path)
        except damaged:  # a damaged cache entry is rebuilt, never trusted
            value = None
    if value is None:
        value = compute()
        tmp = _tmp_name(path)
        save(value, tmp)
        tmp.replace(path)
    return value


def _tmp_name(path: Path) -> Path:
    """A temporary name beside ``path``, private to this process (parallel search workers write the same cache
    entries, e.g. the base model's logits, at once; each renames its own complete file into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


BUILD_REVISIONS = {"two-step": 2, "bottlenetpp": 2}
"""Baselines whose build changed while their spec keys stayed (2-Step: ours' budget and distillation, tail
fine-tuned; BottleNet++: the authors' BatchNorm and bit-erasure channel). Their revision joins the cache keys of
their pruned parts and measurements, so a cache never answers with a result of the old build; other specs keep
their cache entries."""


def _revision(spec: VariantSpec, codec: bool = True) -> tuple[str, ...]:
    """The :data:`BUILD_REVISIONS` tags that apply to ``spec`` (none for ours): its pruning method's, and its codec
    kind's unless ``codec`` is False (a pruned part does not depend on the codec)."""
    used = [spec.pruning, spec.codec.kind] if codec else [spec.pruning]
    return tuple(f"{name}/{BUILD_REVISIONS[name]}" for name in used if name in BUILD_REVISIONS)


def codec_config(spec: VariantSpec) -> CodecConfig:
    """The codec configuration of a spec (kind, sizes, bits, channel levels)."""
    c = spec.codec
    kw: dict[str, Any] = {
        "kind": c.kind,
        "channels": c.channels,
        "dim": c.dim,
        "bits": c.bits,
        "kernel": c.kernel,
        "stride": c.stride,
        "codebook": c.codebook,
    }
    if c.kind == "huffman":
        kw.update(channels=None, dim=None, bits=8)
    if c.snr_db is not None:
        kw["snr_db"] = c.snr_db
    if c.flip_p is not None:
        kw["p"] = c.flip_p
    if c.kind == "bottlenetpp":
        kw["channel"] = "awgn" if c.snr_db is not None else "none"
        kw["entropy_coded"] = c.entropy_coded
    return CodecConfig(**kw)


def finetunes_tail(spec: VariantSpec, fid: Fidelity) -> bool:
    """Whether ``spec``'s codec phase trains the server tail: behind every learned codec at a preset with
    ``codec_tail``, and behind 2-Step's Huffman code (2-Step fine-tunes its network after pruning; with no learned
    codec the codec phase's budget goes to the tail alone); never split-only Huffman or raw features (nothing
    trained: the base model cut as it is)."""
    return fid.codec_tail and (spec.codec.kind not in ("none", "huffman") or spec.pruning == "two-step")


@dataclass(frozen=True)
class PhaseBudget:
    """What building a spec trains: optimizer steps and distillation of each phase."""

    prune_steps: int
    """Optimizer steps of phase 1 (2-Step: its rounds and step 2 together; 0: nothing pruned or trained)."""
    prune_distill: float
    """Weight of distillation from the base model's logits in phase 1."""
    codec_steps: int
    """Optimizer steps of the codec phase (0: nothing learned)."""
    codec_distill: float
    """Weight of distillation in the codec phase (from the base model's logits at presets with ``base_teacher``)."""
    tail: bool
    """Whether the codec phase also fine-tunes the server tail."""
    learned: bool = True
    """Whether the codec has learned parts (False: only a fine-tuned tail, or nothing)."""

    def describe(self) -> str:
        """One line, e.g. ``prune 100 steps (KD 0.9) + codec 150 steps (tail too, KD 0.5)``."""
        if not self.prune_steps and not self.codec_steps:
            return "no training"
        prune = f"prune {self.prune_steps} steps" + (f" (KD {self.prune_distill:g})" if self.prune_distill else "")
        what = "tail only" if self.tail and not self.learned else "tail too" if self.tail else "codec only"
        codec = f"codec {self.codec_steps} steps ({what}, KD {self.codec_distill:g})" if self.codec_steps else ""
        return " + ".join(p for p in (prune if self.prune_steps else "", codec) if p)


def phase_budget(spec: VariantSpec, fid: Fidelity, n_train: int) -> PhaseBudget:
    """The training budget :meth:`Builder.build` spends on ``spec`` at ``fid`` with ``n_train`` training images
    (the nominal totals: ours' pruning iterations share theirs evenly, rounding down)."""
    if spec.whole_model:
        return PhaseBudget(0, 0.0, 0, 0.0, False, learned=False)
    nothing = spec.pruning == "incremental" and spec.sparsity == 0 and spec.activation_sparsity == 0
    prune = 0 if nothing else fid.prune.total_steps(n_train)
    ccfg = replace(codec_config(spec), finetune_tail=finetunes_tail(spec, fid))
    codec = fid.codec.total_steps(n_train) if ccfg.learns else 0
    return PhaseBudget(
        prune, fid.prune_distill if prune else 0.0, codec, ccfg.distill if codec else 0.0, ccfg.finetune_tail,
        learned=ccfg.trainable,
    )  # fmt: skip


def fit_codec_to_pruned(ccfg: CodecConfig, feature_shape: tuple[int, ...], sent: int) -> CodecConfig:
    """The codec for a split feature that pruning left with ``sent`` channels: a conv never keeps more channels
    than are sent, and an FC layer that would keep as many values as it gets (or more) is dropped."""
    if len(feature_shape) == 3:
        if ccfg.channels is not None and ccfg.channels > sent:
            ccfg = replace(ccfg, channels=sent)
        _, h, w = feature_shape
        values = (ccfg.channels or sent) * (h // ccfg.stride) * (w // ccfg.stride)
    else:
        values = sent
    if ccfg.dim is not None and ccfg.dim >= values:
        ccfg = replace(ccfg, dim=None)
    return ccfg


class Builder:
    """Builds variants with shared caches (in memory and on disk).

    Args:
        weights: the base checkpoint the specs refer to (its sha256 must equal ``spec.weights_sha256``); None
            trains the base from scratch per fidelity (specs then carry ``weights_sha256=None``).
        data_dir: folder of a file-backed data set.
        cache_dir: on-disk cache root.
        keep_artifacts: also save each variant's device/codec checkpoints for export.
        fidelities: fidelity presets by name, overriding the built-in ones (e.g. a longer schedule for a
            comparison; give it its own ``cache_dir``, since measurements are cached by spec hash).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        keep_artifacts: bool = True,
        fidelities: dict[str, Fidelity] | None = None,
    ) -> None:
        self.weights = Path(weights) if weights is not None else None
        self.weights_sha = file_sha256(self.weights) if self.weights is not None else None
        self.data_dir = data_dir
        self.cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
        self.keep_artifacts = keep_artifacts
        self.fidelities = fidelities or {}
        self._bases: dict[tuple[str, str, str, int, int | None], tuple[SplittableModel, ImageData]] = {}
        self._pruned: dict[str, PrunedDevice] = {}
        self._teacher: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------ phases
    def fidelity(self, spec: VariantSpec) -> Fidelity:
        """The training budgets of ``spec``'s fidelity (an override, else the built-in preset)."""
        return self.fidelities.get(spec.fidelity) or FIDELITIES.get(spec.fidelity)

    def _check_weights(self, spec: VariantSpec) -> None:
        if spec.weights_sha256 != self.weights_sha:
            raise ConfigError(
                f"spec wants base weights {spec.weights_sha256!r} but the builder has {self.weights_sha!r}"
            )

    def base(self, spec: VariantSpec) -> tuple[SplittableModel, ImageData]:
        """The base model and its data for ``spec`` (cached)."""
        self._check_weights(spec)
        key = (spec.model, spec.dataset, spec.fidelity, spec.seed, spec.val_size)
        if key not in self._bases:
            weights = self.weights
            if weights is None:
                fid = self.fidelity(spec)
                val = "" if spec.val_size is None else f"-val{spec.val_size}"
                name = f"{spec.model}-{spec.dataset}-scratch-{spec.fidelity}-s{spec.seed}{val}.v2.pt"
                weights = self.cache / "base" / name
                if not weights.is_file():
                    with phase("base"):
                        train = replace(fid.base, seed=spec.seed)
                        prepare_base(spec.model, spec.dataset, train, None, self.data_dir, weights, spec.val_size)
            self._bases[key] = load_base(spec.model, spec.dataset, weights, self.data_dir, spec.val_size)
        return self._bases[key]

    def teacher_logits(self, spec: VariantSpec) -> torch.Tensor:
        """The base model's logits on every (unaugmented) training image, (N, classes): distillation targets of
        the codec phase. Computed once per base model and cached on disk, like the base model itself."""
        model, data = self.base(spec)
        scratch = self.weights is None  # a base trained from scratch depends on the preset and the seed
        key = _digest([spec.model, spec.dataset, self.weights_sha, spec.fidelity if scratch else "",
                       spec.seed if scratch else 0, len(data.train_x), data.split_id])  # fmt: skip
        if key in self._teacher:
            return self._teacher[key]

        def load(path: Path) -> torch.Tensor | None:
            logits = torch.load(path, weights_only=True)["logits"]
            ok = isinstance(logits, torch.Tensor) and logits.shape[0] == len(data.train_x)
            return logits if ok else None

        logits = _disk_cached(
            self.cache / "teacher" / f"{key}.pt",
            load,
            lambda: outputs(model, data, data.train_x, progress="teacher logits"),
            lambda logits, tmp: torch.save({"logits": logits}, tmp),
            damaged=(Exception,),
        )
        self._teacher[key] = logits
        return logits

    def prune(self, spec: VariantSpec, fid: Fidelity) -> PrunedDevice:
        """Phase 1 for ``spec`` (cached in memory and on disk)."""
        _, data = self.base(spec)  # a spec for other base weights fails here, even on a cache hit
        key = _digest(
            [spec.model, spec.dataset, spec.weights_sha256, spec.split, spec.sparsity, spec.schedule, spec.pruning,
             spec.activation_sparsity, fid.prune, spec.seed, data.split_id]
            + ([fid.prune_distill] if fid.prune_distill else [])
            + list(_revision(spec, codec=False))
        )  # fmt: skip
        if key in self._pruned:
            return self._pruned[key]
        pruned = _disk_cached(
            self.cache / "pruned" / f"{key}.pt",
            load_pruned,
            lambda: self._prune_now(spec, fid),
            lambda pruned, tmp: save_pruned(pruned, tmp, spec.model),
            damaged=(CheckpointError,),
        )
        self._pruned[key] = pruned
        return pruned

    def _prune_now(self, spec: VariantSpec, fid: Fidelity) -> PrunedDevice:
        with phase("prune"):
            return self._prune_in_phase(spec, fid)

    def _prune_in_phase(self, spec: VariantSpec, fid: Fidelity) -> PrunedDevice:
        model, data = self.base(spec)
        train = replace(fid.prune, seed=spec.seed)
        if spec.pruning == "two-step":
            # ours' budget and distillation: fid.prune's steps over all rounds + step 2, the same targets and weight
            cfg2 = TwoStepConfig(
                activation_sparsity=spec.activation_sparsity,
                train=train,
                distill=fid.prune_distill,
                eval_images=min(1000, len(data.val_x)),
            )
            logits = self.teacher_logits(spec) if fid.base_teacher and cfg2.takes_teacher_logits(data) else None
            return prune_two_step(model, spec.split, data, cfg2, logits)
        nothing = spec.sparsity == 0 and spec.activation_sparsity == 0
        cfg = PruneConfig(
            sparsity=spec.sparsity,
            activation_sparsity=spec.activation_sparsity,
            schedule=spec.schedule,
            train=None if nothing else train,
            distill=fid.prune_distill,
        )
        cached = fid.base_teacher and cfg.takes_teacher_logits(data)
        return prune_device(model, spec.split, data, cfg, self.teacher_logits(spec) if cached else None)

    def build(self, spec: VariantSpec) -> BuiltVariant:
        """Build and measure ``spec`` (no measurement cache; see :meth:`measure`) in a progress phase of its own,
        holding those of the parts that are computed (base, teacher logits, prune, codec, evaluate)."""
        with phase(f"build {spec.split} s={spec.sparsity:g} {spec.codec.label}"):
            return self._build(spec)

    def _build(self, spec: VariantSpec) -> BuiltVariant:
        if spec.whole_model:
            raise ConfigError(f"{spec.split!r} splits nothing: measure it (Builder.measure), there is nothing to build")
        t0 = time.perf_counter()
        fid = self.fidelity(spec)
        model, data = self.base(spec)
        pruned = self.prune(spec, fid)
        server_in = nn.Sequential(Expand(pruned.kept_channels, pruned.feature_shape[0]), pruned.tail)
        ccfg = codec_config(spec)
        if finetunes_tail(spec, fid):
            ccfg = replace(ccfg, finetune_tail=True)
        ccfg = replace(ccfg, distill_temperature=fid.codec_temperature_for(pruned.tail))
        ccfg = fit_codec_to_pruned(ccfg, pruned.feature_shape, len(pruned.kept_channels))
        base = fid.base_teacher and ccfg.learns  # nothing trained (split-only huffman, none): no distillation
        teacher_logits = self.teacher_logits(spec) if base else None
        with phase("codec"):
            codec = train_codec(
                pruned.head,
                server_in,
                data,
                ccfg,
                replace(fid.codec, seed=spec.seed),
                teacher=model if base else None,
                teacher_logits=teacher_logits,
            )
        with phase("evaluate"):
            # validation images: the accuracy and bits that select; test images: an accuracy only reported
            val = data.evaluated_on("val").first_test(fid.eval_limit)
            ev = evaluate_codec(codec, pruned.head, val, bits_samples=fid.bits_limit, seed=spec.seed)
            test = data.first_test(fid.eval_limit)
            test_acc = evaluate_codec(codec, pruned.head, test, bits_samples=0, verify=0, seed=spec.seed).accuracy
        head_cost = module_cost(nn.Sequential(pruned.head, codec.encoder), pruned.input_shape)
        tail_macs = module_cost(pruned.tail, pruned.feature_shape).macs
        uses = ev.channel_uses if codec.codec.kind == "jscc-awgn" else None
        bits_mean = float(ev.bits_mean) if ev.bits_mean is not None else float(ev.channel_uses or 0)
        bits_max = int(ev.bits_max) if ev.bits_max is not None else int(ev.channel_uses or 0)
        m = Measurement(
            val_accuracy=ev.accuracy,
            test_accuracy=test_acc,
            device_macs=head_cost.macs,
            server_macs=tail_macs + ev.decoder_macs,
            bits_mean=bits_mean,
            bits_max=bits_max,
            header_bits=0 if uses is not None else ev.header_bits,
            channel_uses=uses,
            encoder_macs=ev.encoder_macs,
            decoder_macs=ev.decoder_macs,
            device_param_bytes=head_cost.param_bytes,
            device_peak_activation_bytes=head_cost.peak_activation_bytes,
            train_seconds=time.perf_counter() - t0,
            versions=_versions(),
        )
        return BuiltVariant(spec, pruned, codec, data, m)

    def artifacts(self, spec: VariantSpec) -> dict[str, Path]:
        """The export artifacts saved for ``spec`` (``device``, ``codec``, ``spec``), those that exist."""
        folder = self.cache / "variants" / spec.key
        files = {"spec": folder / "spec.json", "device": folder / "device.pt", "codec": folder / "codec.pt"}
        return {k: v for k, v in files.items() if v.is_file()}

    def measure_whole(self, spec: VariantSpec) -> Measurement:
        """The measurement of a whole-model candidate (:data:`~coinference.variant.ON_DEVICE`: everything on the
        device, the class index sent; :data:`~coinference.variant.SERVER_PNG`: the PNG image sent): the base
        model's validation and test accuracy at the fidelity's evaluation limit, no training."""
        from coinference.baselines import on_device_only, server_png

        t0 = time.perf_counter()
        fid = self.fidelity(spec)
        model, data = self.base(spec)
        with phase(f"evaluate {spec.split}"):
            if spec.split == ON_DEVICE:
                m = on_device_only(model, data, fid.eval_limit)
            else:
                m = server_png(model, data, fid.eval_limit, fid.bits_limit)
        return replace(m, train_seconds=time.perf_counter() - t0, versions=_versions())

    def measure(self, spec: VariantSpec) -> Measurement:
        """The Measurement of ``spec``: from the disk cache when present, else built (and cached)."""
        self._check_weights(spec)
        # the preset's budgets are part of the cache key: a changed preset never answers with stale results
        # m2: measurements with validation and test accuracy (m1 files, test accuracy only, are never read)
        budget: Any = asdict(self.fidelity(spec))
        if _revision(spec):  # a method whose build changed since its spec key was made
            budget = [budget, *_revision(spec)]
        path = self.cache / "measurements" / f"{spec.key}-{_digest(budget)[:12]}.m2.json"

        def compute() -> Measurement:
            if spec.whole_model:
                return self.measure_whole(spec)
            built = self.build(spec)
            if self.keep_artifacts:
                save_variant(built, self.cache / "variants" / spec.key)
            return built.measurement

        return _disk_cached(
            path,
            lambda p: Measurement.from_dict(json.loads(p.read_text())),
            compute,
            lambda m, tmp: tmp.write_text(json.dumps(m.to_dict(), indent=1)),
            damaged=(ValueError, KeyError, TypeError, AttributeError),  # truncated or foreign: rebuilt
        )


def prune_two_step(
    model: SplittableModel,
    split: str,
    data: ImageData,
    cfg: TwoStepConfig,
    teacher_logits: torch.Tensor | None = None,
) -> PrunedDevice:
    """The 2-Step Pruning baseline (imported lazily: only baseline specs need it)."""
    from coinference.prune import two_step_prune

    return two_step_prune(model, split, data, cfg, teacher_logits)


def build_and_measure(
    spec: VariantSpec,
    *,
    weights: str | Path | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Measurement:
    """Build, train and measure one variant (cached by spec hash under ``cache_dir``).

    Raises:
        ConfigError: the spec does not fit the model/data (e.g. a split point that does not exist, codec sizes
            larger than the feature) or names other base weights than ``weights``.
        TrainingError: a phase diverged (a search records it as a failed variant).
    """
    return Builder(weights, data_dir, cache_dir).measure(spec)


# ------------------------------------------------------------------------------------------ artifacts
def save_variant(built: BuiltVariant, folder: str | Path) -> dict[str, Path]:
    """Write a built variant's artifacts: ``spec.json``, ``device.pt`` (pruned model, coinference.pruned/1) and
    ``codec.pt`` (codec config, feature shape and state dict). Returns name → path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(built.spec.to_json())
    device = save_pruned(built.pruned, out / "device.pt", built.spec.model)
    c = built.codec
    torch.save(
        {
            "format": "coinference.codec/1",
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.config.__dict__.items()},
            "feature_shape": list(c.feature_shape),
            "nonneg": bool(c.codec.nonneg),
            "state_dict": c.codec.state_dict(),
            "coder": coder_state(c.codec),
            "tail_state_dict": c.tail.state_dict(),
        },
        out / "codec.pt",
    )
    return {"spec": out / "spec.json", "device": device, "codec": out / "codec.pt"}


def load_codec(path: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(codec module with its trained state, tail state dict) from a ``codec.pt`` written by save_variant."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "coinference.codec/1":
        raise CheckpointError(f"{path} is not a codec checkpoint (coinference.codec/1)")
    fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in blob["config"].items()}
    codec = build_codec(CodecConfig(**fields), tuple(blob["feature_shape"]), bool(blob["nonneg"]))
    codec.load_state_dict(blob["state_dict"])
    load_coder_state(codec, blob.get("coder", {}))
    return codec.eval(), blob["tail_state_dict"]
