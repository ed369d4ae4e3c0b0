"""The search space: one definition of the variants worth trying, convertible to every searcher's own form.

A cell is one index per dimension (``split``, ``sparsity``, ``ratio``, and ``bits`` / ``activation_sparsity`` /
``codec_kind`` when they have more than one level). Every dimension is ordinal (splits from shallow to deep, levels
sorted, codec kinds in the order of :data:`SEARCH_CODEC_KINDS`), so the integer index is also what Optuna, Ray Tune
and Gymnasium see: ordered integers give model-based samplers a neighbourhood to exploit, where categoricals would
not. A dimension of one level is no dimension, so a space keeps the cells (and specs) it had before a dimension
existed as long as that dimension has its one default level.

The compression ratio is raw float32 feature bits ÷ nominal transmitted bits, and :data:`SYMBOL_BITS` says what a
transmitted symbol counts: the quantizer's bits for ``sq`` and ``vq``, 1 for JSCC — a BSC use is one bit, and one
real AWGN channel use counts as one bit, as the Pareto front and the searchers count an analog variant's channel
uses as its bits. So at the same ratio ``jscc-bsc`` and ``jscc-awgn`` get the same number of channel uses (ratio 32:
one per feature value, through a learned conv that keeps every channel: a JSCC code always has an encoder), and the
``bits`` dimension does not change a JSCC variant (its cells alias). ``vq`` gets the
bottleneck ``sq`` gets at the same ratio and bits, then sends one ``bits``-bit codeword per latent vector, so its
nominal payload is smaller than raw ÷ ratio by the vector length; the measured bits are what the front compares.

A cell is *valid* when its codec exists: :func:`coinference.variant.codec_for_ratio` refuses a ratio that would
keep more symbols than the split feature has (ratio × symbol bits < 32; for JSCC, ratio < 32). Distinct cells can
map to the same :class:`VariantSpec` (at a small pooled feature every large ratio keeps one symbol);
:meth:`SearchSpace.grid` lists each spec once and the evaluator's cache answers the aliases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import product
from typing import Any

import numpy as np

from coinference.errors import ConfigError
from coinference.variant import CodecSpec, VariantSpec, codec_for_ratio

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_RATIOS = (4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
DEFAULT_BITS = (2, 4, 8)
SEARCH_CODEC_KINDS = ("sq", "vq", "jscc-bsc", "jscc-awgn")
"""Codec kinds a search can try, in their ordinal order: separate source coding (scalar, then vector
quantization + entropy code), then joint source-channel coding (digital over a BSC, then analog over AWGN)."""
SYMBOL_BITS: dict[str, int | None] = {"sq": None, "vq": None, "jscc-bsc": 1, "jscc-awgn": 1}
"""Nominal bits per transmitted symbol of each search codec kind (None: the quantizer's bits)."""


@dataclass(frozen=True)
class SearchSpace:
    """Split points × device sparsity × compression ratio (× quantizer bits × activation sparsity × codec kind).

    Compression ratio is raw float32 feature bits ÷ nominal payload bits (before entropy coding; a JSCC channel use
    counts as one bit, see the module docstring); see :func:`coinference.variant.codec_for_ratio`.
    """

    model: str
    """Zoo model name."""
    dataset: str
    """Data set name."""
    splits: tuple[str, ...]
    """Split point names, shallow to deep."""
    feature_shapes: tuple[tuple[int, ...], ...]
    """Split feature shape (C, H, W) or (D,) per split, from :func:`coinference.profile.profile_model`."""
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    """Channel sparsity levels of the device part, each in [0, 1)."""
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    """Compression ratios, each ≥ 1."""
    bits: tuple[int, ...] = DEFAULT_BITS
    """Quantizer bits per symbol."""
    activation_sparsities: tuple[float, ...] = (0.0,)
    """Fractions of split-feature channels dropped before coding, each in [0, 1)."""
    codec_kinds: tuple[str, ...] = ("sq",)
    """Codec kinds, of :data:`SEARCH_CODEC_KINDS` (kept in that order)."""
    snr_db: float | None = None
    """SNR in dB per real symbol that ``jscc-awgn`` variants are evaluated at (their recorded accuracy holds on a
    link of this SNR or more); None: the codec's default, 10 dB. Training draws SNRs from 0–20 dB either way."""
    flip_p: float | None = None
    """BSC flip probability that ``jscc-bsc`` variants are evaluated at, in [0, 0.5); None: the codec's default,
    0.01. Training draws p from 0–0.1 either way."""
    fidelity: str = "fast"
    """Training budget preset of every variant."""
    weights_sha256: str | None = None
    """Base checkpoint hash recorded in every spec."""
    seed: int = 0
    """Seed recorded in every spec."""
    val_size: int | None = None
    """Validation images recorded in every spec (None: the data set's default split)."""
    total_macs: int | None = None
    """MACs of the whole model per image (normalises latency in the env); set by :meth:`for_model`."""
    _levels: dict[str, tuple[Any, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.splits or len(self.splits) != len(self.feature_shapes):
            raise ConfigError(f"need one feature shape per split; got {len(self.splits)} splits")
        for name in ("sparsities", "ratios", "bits", "activation_sparsities"):
            given = getattr(self, name)
            if not given:
                raise ConfigError(f"search space dimension {name} is empty")
            object.__setattr__(self, name, tuple(sorted(given)))
        for name in ("sparsities", "activation_sparsities"):
            bad = [v for v in getattr(self, name) if not 0 <= v < 1]
            if bad:
                raise ConfigError(f"{name} levels must be in [0, 1), got {bad}")
        if not self.codec_kinds:
            raise ConfigError("search space dimension codec_kinds is empty")
        unknown = [k for k in self.codec_kinds if k not in SEARCH_CODEC_KINDS]
        if unknown:
            raise ConfigError(f"unknown search codec kind {unknown[0]!r}; valid: {', '.join(SEARCH_CODEC_KINDS)}")
        object.__setattr__(self, "codec_kinds", tuple(k for k in SEARCH_CODEC_KINDS if k in self.codec_kinds))
        for what, value, kind in (("snr_db", self.snr_db, "jscc-awgn"), ("flip_p", self.flip_p, "jscc-bsc")):
            if value is not None and kind not in self.codec_kinds:
                raise ConfigError(f"{what} {value} is set but the space has no {kind} variant")
        if self.snr_db is not None:
            from coinference.codec.config import check_snr

            check_snr(self.snr_db, "jscc-awgn evaluation SNR")
        if self.flip_p is not None and not 0 <= self.flip_p < 0.5:
            raise ConfigError(f"jscc-bsc flip probability must be in [0, 0.5), got {self.flip_p}")
        levels: dict[str, tuple[Any, ...]] = {
            "split": self.splits,
            "sparsity": self.sparsities,
            "ratio": self.ratios,
        }
        if len(self.bits) > 1:
            levels["bits"] = self.bits
        if len(self.activation_sparsities) > 1:
            levels["activation_sparsity"] = self.activation_sparsities
        if len(self.codec_kinds) > 1:
            levels["codec_kind"] = self.codec_kinds
        object.__setattr__(self, "_levels", levels)
        first = next(iter(self.cells()), None)
        if first is None:
            raise ConfigError(
                f"search space of {self.model} has no valid cell (ratio × bits must be ≥ 32; ratio ≥ 32 for JSCC)"
            )
        self.spec(first)  # fail early on bad levels (sparsity ≥ 1, unknown fidelity, ...)

    @classmethod
    def for_model(
        cls,
        model: str,
        dataset: str | None = None,
        input_shape: tuple[int, int, int] | None = None,
        splits: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> SearchSpace:
        """The space of ``model``'s split points (profiled on a zero input of the model's input shape).

        Args:
            model: zoo model name.
            dataset: data set name (default: the model's).
            input_shape: (C, H, W) (default: the model's).
            splits: a subset of split point names (default: all).
            **kwargs: other :class:`SearchSpace` fields.
        """
        from coinference.profile import profile_model
        from coinference.zoo import MODELS, build_model

        info = MODELS.get(model)
        shape = input_shape or info.input_shape
        prof = profile_model(build_model(model, in_channels=shape[0]), shape, model)
        by_name = prof.feature_shapes()
        names = list(splits) if splits is not None else list(by_name)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"split points {unknown} do not exist in {model}; valid: {', '.join(by_name)}")
        kwargs.setdefault("total_macs", prof.total_macs)
        return cls(model, dataset or info.dataset, tuple(names), tuple(by_name[n] for n in names), **kwargs)

    # ------------------------------------------------------------------------------------------ cells
    @property
    def names(self) -> tuple[str, ...]:
        """Dimension names, in action / index order."""
        return tuple(self._levels)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of levels per dimension."""
        return tuple(len(v) for v in self._levels.values())

    @property
    def n_cells(self) -> int:
        """Cells in the full product (valid or not)."""
        return math.prod(self.sizes)

    def levels(self, name: str) -> tuple[Any, ...]:
        """The levels of one dimension."""
        return self._levels[name]

    def params(self, index: Sequence[int]) -> dict[str, Any]:
        """Dimension name → level value of a cell."""
        levels = self._levels
        if len(index) != len(levels) or any(
            not 0 <= int(i) < len(lv) for i, lv in zip(index, levels.values(), strict=False)
        ):
            raise ConfigError(f"cell {tuple(index)} is outside the space of sizes {self.sizes}")
        return {n: lv[int(i)] for (n, lv), i in zip(levels.items(), index, strict=True)}

    def _codec(self, params: dict[str, Any]) -> CodecSpec:
        shape = self.feature_shapes[self.splits.index(params["split"])]
        kind = params.get("codec_kind", self.codec_kinds[0])
        bits = SYMBOL_BITS[kind] or params.get("bits", self.bits[0])
        codec = codec_for_ratio(shape, float(params["ratio"]), bits=bits, kind=kind)
        if SYMBOL_BITS[kind] is not None and codec.channels is None and codec.dim is None:
            # JSCC sends the whole feature: a learned conv keeps every channel, since a channel code needs an encoder
            # (without one a BSC would send the signs of post-ReLU values, all +1, and nothing would be trained)
            codec = replace(codec, channels=shape[0])
        if kind == "jscc-awgn" and self.snr_db is not None:
            codec = replace(codec, snr_db=float(self.snr_db))
        if kind == "jscc-bsc" and self.flip_p is not None:
            codec = replace(codec, flip_p=float(self.flip_p))
        return codec

    def spec(self, index: Sequence[int]) -> VariantSpec:
        """The variant of a cell.

        Raises:
            ConfigError: the cell is outside the space or invalid (no codec for its ratio and bits).
        """
        p = self.params(index)
        return VariantSpec(
            model=self.model,
            dataset=self.dataset,
            split=p["split"],
            weights_sha256=self.weights_sha256,
            sparsity=float(p["sparsity"]),
            activation_sparsity=float(p.get("activation_sparsity", self.activation_sparsities[0])),
            codec=self._codec(p),
            fidelity=self.fidelity,
            seed=self.seed,
            val_size=self.val_size,
        )

    def valid(self, index: Sequence[int]) -> bool:
        """True when the cell has a variant."""
        try:
            self._codec(self.params(index))
        except ConfigError:
            return False
        return True

    def cells(self) -> Iterator[tuple[int, ...]]:
        """Every valid cell, in row-major order (split slowest)."""
        for index in product(*(range(n) for n in self.sizes)):
            if self.valid(index):
                yield index

    def grid(self) -> list[tuple[tuple[int, ...], VariantSpec]]:
        """(first cell, spec) for every distinct valid spec, in row-major order: the exhaustive search."""
        return list(self._grid)

    @cached_property
    def _grid(self) -> tuple[tuple[tuple[int, ...], VariantSpec], ...]:
        seen: set[str] = set()
        out = []
        for index in self.cells():
            s = self.spec(index)
            if s.key not in seen:
                seen.add(s.key)
                out.append((index, s))
        return tuple(out)

    def index_of(self, params: dict[str, Any]) -> tuple[int, ...]:
        """The cell of a dict of level *indices* per dimension (what Optuna and Ray Tune report)."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ConfigError(f"parameters {missing} missing; the space has {', '.join(self.names)}")
        return tuple(int(params[n]) for n in self.names)

    # ----------------------------------------------------------------------------------- conversions
    def optuna_distributions(self) -> dict[str, Any]:
        """Optuna ``IntDistribution(0, n - 1)`` per dimension (ordinal level indices)."""
        from optuna.distributions import IntDistribution

        return {n: IntDistribution(0, k - 1) for n, k in zip(self.names, self.sizes, strict=True)}

    def ray_param_space(self) -> dict[str, Any]:
        """Ray Tune ``param_space``: ``tune.randint(0, n)`` per dimension (IntDistribution under OptunaSearch)."""
        from ray import tune

        return {n: tune.randint(0, k) for n, k in zip(self.names, self.sizes, strict=True)}

    def gym_action_space(self) -> Any:
        """Gymnasium ``MultiDiscrete(sizes)``."""
        from gymnasium import spaces

        return spaces.MultiDiscrete(list(self.sizes))

    def action_mask(self) -> np.ndarray:
        """Per-dimension level masks, concatenated (MaskablePPO's MultiDiscrete layout).

        A level is allowed when some valid cell uses it; combinations are checked by :meth:`valid`, since a
        MultiDiscrete mask cannot express joint constraints.
        """
        used = [np.zeros(n, dtype=bool) for n in self.sizes]
        for index in self.cells():
            for d, i in enumerate(index):
                used[d][i] = True
        return np.concatenate(used)

    def describe(self) -> str:
        """One line: dimensions, levels and cell counts."""
        dims = " × ".join(f"{n} {k}" for n, k in zip(self.names, self.sizes, strict=True))
        return f"{self.model}/{self.dataset}: {dims} = {self.n_cells} cells, {len(self.grid())} distinct variants"

    def identity(self) -> str:
        """One line that differs between spaces a run name must not mix: :meth:`describe`, the codec kinds and
        their channel settings, the activation sparsities when not the default (0), and the base checkpoint."""
        coding = ",".join(self.codec_kinds)
        if self.snr_db is not None:
            coding += f" (jscc-awgn at {self.snr_db:g} dB)"
        if self.flip_p is not None:
            coding += f" (jscc-bsc at p {self.flip_p:g})"
        text = f"{self.describe()}; codec {coding}"
        if self.activation_sparsities != (0.0,):
            text += f"; activation sparsity {','.join(f'{a:g}' for a in self.activation_sparsities)}"
        if self.val_size is not None:
            text += f"; validation images {self.val_size}"
        return f"{text}; weights {self.weights_sha256 or 'trained here'}"
