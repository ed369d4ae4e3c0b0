"""The records every layer exchanges: what to build (:class:`VariantSpec`) and what was measured
(:class:`Measurement`). Both are frozen, plain-valued and round-trip through JSON; a spec's hash is the cache key
and the lookup table's natural key.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from coinference.errors import ConfigError

CODEBOOKS = ("channel", "shared")
"""Scalar-quantizer codebooks: one per latent channel, or one shared (the paper's)."""

CODEC_KINDS = ("none", "huffman", "sq", "vq", "jscc-awgn", "jscc-bsc", "bottlenetpp")
FIDELITIES = ("smoke", "screen", "fast", "full")
"""Training budget presets, cheapest first (the order a multi-fidelity ladder climbs)."""
SCHEDULES = ("cubic", "step")
PRUNING_METHODS = ("incremental", "two-step")
SPEC_VERSION = 1


@dataclass(frozen=True)
class CodecSpec:
    """How the split feature is coded for the link."""

    kind: str = "sq"
    """One of none, huffman, sq (scalar quantizer + entropy code), vq, jscc-awgn, jscc-bsc, bottlenetpp."""
    channels: int | None = None
    """Channels after the encoder's conv layer (None: no conv reduction)."""
    dim: int | None = None
    """Dimension after the encoder's FC layer (None: no FC reduction)."""
    kernel: int = 3
    """Kernel size of the encoder's conv layer when ``stride`` is 1 (odd; the decoder mirrors it)."""
    stride: int = 1
    """Stride of the encoder's conv layer; > 1 makes it a stride × stride patch conv (kernel = stride) that cuts
    the spatial size by stride² on the device (the decoder's transposed conv restores it)."""
    bits: int = 2
    """Quantizer bits per symbol (L = 2**bits levels); for bottlenetpp the quantizer bits (8)."""
    snr_db: float | None = None
    """AWGN SNR in dB per real symbol (jscc-awgn, bottlenetpp); None = train over the default range."""
    flip_p: float | None = None
    """BSC crossover probability (jscc-bsc)."""
    codebook: str = "shared"
    """Levels of the sq quantizer: "shared" (one codebook, as in the paper's code) or "channel" (one per latent
    channel); see :attr:`coinference.codec.CodecConfig.codebook`."""
    entropy_coded: bool = False
    """bottlenetpp only: range-code its 8-bit latent values instead of one byte each (the paper's count); see
    :attr:`coinference.codec.CodecConfig.entropy_coded`."""

    @property
    def label(self) -> str:
        """Short description: kind, conv channels, stride, FC dim, bits (e.g. ``sq/c8/s4/2b``)."""
        parts = [self.kind]
        if self.channels is not None:
            parts.append(f"c{self.channels}")
        if self.stride > 1:
            parts.append(f"s{self.stride}")
        if self.dim is not None:
            parts.append(f"d{self.dim}")
        if self.kind != "none":  # raw float32 (or, for a whole-model candidate, no feature at all): no bits
            parts.append(f"{self.bits}b")
        if self.kind == "sq" and self.codebook != "shared":
            parts.append(self.codebook)
        if self.entropy_coded:
            parts.append("ec")
        return "/".join(parts)

    def __post_init__(self) -> None:
        if self.kind not in CODEC_KINDS:
            raise ConfigError(f"codec kind {self.kind!r} unknown; valid: {', '.join(CODEC_KINDS)}")
        for name in ("channels", "dim"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"codec {name} must be ≥ 1, got {v}")
        if self.stride < 1:
            raise ConfigError(f"codec stride must be ≥ 1, got {self.stride}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"codec kernel must be odd and ≥ 1, got {self.kernel}")
        if self.bits < 1:
            raise ConfigError(f"codec bits must be ≥ 1, got {self.bits}")
        if self.codebook not in CODEBOOKS:
            raise ConfigError(f"codec codebook {self.codebook!r} unknown; valid: {', '.join(CODEBOOKS)}")
        if self.flip_p is not None and not 0 <= self.flip_p < 0.5:
            raise ConfigError(f"BSC flip probability must be in [0, 0.5), got {self.flip_p}")
        if self.entropy_coded and self.kind != "bottlenetpp":
            raise ConfigError(f"entropy_coded applies to codec kind bottlenetpp, not {self.kind!r}")


ON_DEVICE = "on-device"
"""The ``split`` of the whole model run on the device: only the predicted class index is sent."""
SERVER_PNG = "server-png"
"""The ``split`` of the whole model run on the server: the device sends the image as PNG."""
WHOLE_MODEL = (ON_DEVICE, SERVER_PNG)
"""Candidates that split nothing; every search adds them to its table, so a query answers "run it all on the
device" or "send the PNG" when that wins (their specs have no pruning and codec kind ``none``)."""

LATER_CODEC_FIELDS: dict[str, Any] = {"stride": 1, "codebook": "shared", "entropy_coded": False}
"""Codec fields added after spec format 1, with the default at which :meth:`VariantSpec.to_dict` omits them."""
LATER_SPEC_FIELDS: dict[str, Any] = {"val_size": None}
"""Spec fields added after spec format 1, with the default at which :meth:`VariantSpec.to_dict` omits them."""


@dataclass(frozen=True)
class VariantSpec:
    """One co-inference variant: base model, split, pruning, feature coding, budget, seed."""

    model: str
    """Zoo model name."""
    dataset: str
    """Data set name."""
    split: str
    """Split point name (the last unit on the device, e.g. "layer2.2")."""
    weights_sha256: str | None = None
    """sha256 of the base model's checkpoint (None: trained from scratch by the base phase)."""
    sparsity: float = 0.0
    """Target channel sparsity of the device part's conv layers, in [0, 1)."""
    schedule: str = "cubic"
    """Sparsity schedule: "cubic" (Zhu & Gupta) or "step"."""
    pruning: str = "incremental"
    """Pruning method: "incremental" (ours, the paper's) or "two-step" (the Shi et al. 2019 baseline)."""
    activation_sparsity: float = 0.0
    """Fraction of the split feature's channels pruned before transmission, in [0, 1)."""
    codec: CodecSpec = field(default_factory=CodecSpec)
    """Feature coding."""
    fidelity: str = "fast"
    """Training budget preset: smoke, screen, fast or full."""
    seed: int = 0
    """Seed of every random choice in building the variant."""
    val_size: int | None = None
    """Training images held out as the validation split (None: the data set's default, 10 %)."""

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0 <= self.activation_sparsity < 1:
            raise ConfigError(f"activation sparsity must be in [0, 1), got {self.activation_sparsity}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} unknown; valid: {', '.join(SCHEDULES)}")
        if self.pruning not in PRUNING_METHODS:
            raise ConfigError(f"pruning method {self.pruning!r} unknown; valid: {', '.join(PRUNING_METHODS)}")
        if self.fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity {self.fidelity!r} unknown; valid: {', '.join(FIDELITIES)}")
        if self.val_size is not None and (isinstance(self.val_size, bool) or self.val_size < 1):
            raise ConfigError(f"validation size must be ≥ 1, got {self.val_size}")
        if isinstance(self.codec, dict):  # tolerate a decoded dict
            object.__setattr__(self, "codec", CodecSpec(**self.codec))
        if self.split in WHOLE_MODEL and (self.sparsity or self.activation_sparsity or self.codec.kind != "none"):
            raise ConfigError(f"split {self.split!r} runs the whole model: no sparsity and codec kind 'none'")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (nested codec dict), with the spec format version.

        A field added after format 1 is left out while it has its default, so a spec that does not use it keeps
        its key (lookup tables and caches written before the field existed stay valid)."""
        d = {"version": SPEC_VERSION, **asdict(self)}
        for name, default in LATER_CODEC_FIELDS.items():
            if d["codec"][name] == default:
                del d["codec"][name]
        for name, default in LATER_SPEC_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces, so equal specs give equal strings."""
        return _canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantSpec:
        """Inverse of :meth:`to_dict`; unknown keys or a newer version are errors."""
        d = dict(d)
        version = d.pop("version", SPEC_VERSION)
        if version > SPEC_VERSION:
            raise ConfigError(f"variant spec version {version} is newer than this coinference ({SPEC_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown variant spec fields: {', '.join(sorted(unknown))}")
        codec = d.pop("codec", {})
        return cls(codec=CodecSpec(**codec) if isinstance(codec, dict) else codec, **d)

    @classmethod
    def whole(cls, split: str, model: str, dataset: str, **fields: Any) -> VariantSpec:
        """The :data:`ON_DEVICE` or :data:`SERVER_PNG` candidate of ``model`` on ``dataset`` (``fields``: weights,
        fidelity, seed, val_size)."""
        if split not in WHOLE_MODEL:
            raise ConfigError(f"whole-model split must be one of {', '.join(WHOLE_MODEL)}, got {split!r}")
        return cls(model, dataset, split, codec=CodecSpec("none"), **fields)

    @classmethod
    def from_json(cls, s: str) -> VariantSpec:
        """Inverse of :meth:`to_json`."""
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ConfigError(f"variant spec is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @property
    def key(self) -> str:
        """Stable hash (sha256 hex of the canonical JSON): the cache key, identical across processes."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def cell_key(self) -> str:
        """Stable hash of the spec without its fidelity: equal for the same variant trained at different budgets
        (the rungs of a multi-fidelity search), so tables can tell one variant's measurements apart from two
        variants'."""
        d = self.to_dict()
        del d["fidelity"]
        return hashlib.sha256(_canonical_json(d).encode()).hexdigest()

    @property
    def whole_model(self) -> bool:
        """True for :data:`ON_DEVICE` and :data:`SERVER_PNG`: the model is not split."""
        return self.split in WHOLE_MODEL

    def with_(self, **changes: Any) -> VariantSpec:
        """A copy with some fields changed (``codec`` may be given as a dict of codec fields to change)."""
        if isinstance(changes.get("codec"), dict):
            changes["codec"] = replace(self.codec, **changes["codec"])
        return replace(self, **changes)


def _canonical_json(d: dict[str, Any]) -> str:
    """Sorted keys, no spaces: equal dicts give equal strings (spec keys and cell keys hash it)."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Measurement:
    """What a built variant measured. MACs per image; bits per image at batch size 1; bytes; seconds."""

    val_accuracy: float
    """Top-1 accuracy on the validation split (held out of the training images, never trained on), in [0, 1]:
    the accuracy every selection reads (search objectives, thresholds, fronts, floors, queries)."""
    device_macs: int
    """Device MACs per image, including the encoder."""
    server_macs: int
    """Server MACs per image, including the decoder."""
    bits_mean: float
    """Mean payload bits per image, from the encoded bytes (header excluded); channel uses for analog JSCC."""
    bits_max: int
    """Largest payload in bits over the evaluated images."""
    test_accuracy: float | None = None
    """Top-1 accuracy on the test set, evaluated once per variant and stored beside it for reporting; nothing
    chooses by it (None: not evaluated)."""
    header_bits: int = 0
    """Bits of the per-message header, counted apart from the payload."""
    channel_uses: int | None = None
    """Real channel uses per image for analog (AWGN) JSCC; None for digital payloads."""
    encoder_macs: int = 0
    """MACs of the encoder alone (part of device_macs)."""
    decoder_macs: int = 0
    """MACs of the decoder alone (part of server_macs)."""
    device_param_bytes: int = 0
    """Bytes of the device part's parameters (incl. encoder)."""
    device_peak_activation_bytes: int = 0
    """Peak live activation bytes on the device at batch 1."""
    train_seconds: float = 0.0
    """Wall-clock of building the variant (training and measuring)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Library versions the variant was built with."""

    @property
    def accuracy(self) -> float:
        """The selection accuracy: :attr:`val_accuracy` (never the test accuracy)."""
        return self.val_accuracy

    @property
    def device_memory_bytes(self) -> int:
        """Parameters + peak activations: what the device must hold."""
        return self.device_param_bytes + self.device_peak_activation_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict`. A measurement from before the validation split (an ``accuracy`` measured
        on test images, no ``val_accuracy``) is refused: it cannot be selected on honestly."""
        if "val_accuracy" not in d:
            raise ConfigError(
                "measurement has no validation accuracy (written before the validation split, coinference < 0.2); "
                "rebuild it"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


MAX_RATIO_STRIDE = 4
"""Largest encoder stride :func:`codec_for_ratio` picks (the decoder's sub-pixel conv grows with stride²)."""


def codec_for_ratio(feature_shape: tuple[int, ...], ratio: float, bits: int = 2, kind: str = "sq") -> CodecSpec:
    """Codec settings that cut the raw float32 feature by about ``ratio`` before entropy coding.

    The nominal payload is ``symbols × bits`` with ``symbols = ceil(raw_bits / (ratio × bits))``. A spatial
    feature (C, H, W) is cut by the encoder conv: the largest stride s (a power of 2 up to
    :data:`MAX_RATIO_STRIDE` dividing H and W) whose ``ceil(symbols / (H/s × W/s))`` channels are at most C,
    then that many channels (no conv at all when that is the whole feature). Spatial reduction comes first
    because it keeps every channel's information where a stride-1 conv down to one or two channels starves the
    server (measured on CIFAR-10: layer1.2 at 512 symbols, 8 channels at stride 4 reach 79 % where 1 channel at
    stride 1 stays near chance). An FC layer then cuts the flattened dimension to exactly ``symbols`` when that
    is not a whole number of channels. A vector feature (D,) uses the FC layer only. Entropy coding then makes
    the real bits smaller still; the measured bits are what counts.

    Raises:
        ConfigError: ratio < 1 or a payload larger than the raw feature.
    """
    if not (ratio >= 1 and math.isfinite(ratio)):
        raise ConfigError(f"compression ratio must be a finite number ≥ 1, got {ratio}")
    if bits < 1:
        raise ConfigError(f"codec bits must be ≥ 1, got {bits}")
    raw_bits = math.prod(feature_shape) * 32
    symbols = max(1, math.ceil(raw_bits / (ratio * bits)))
    numel = math.prod(feature_shape)
    if symbols > numel:
        raise ConfigError(
            f"compression ratio {ratio} at {bits} bits keeps {symbols} symbols, more than the feature's {numel}"
        )
    if len(feature_shape) != 3:
        return CodecSpec(kind=kind, channels=None, dim=symbols, bits=bits)
    c, h, w = feature_shape
    stride = 1
    s = 2
    while s <= MAX_RATIO_STRIDE and h % s == 0 and w % s == 0:
        if math.ceil(symbols / ((h // s) * (w // s))) <= c:
            stride = s
        s *= 2
    positions = (h // stride) * (w // stride)
    ch = min(c, math.ceil(symbols / positions))
    dim = None if ch * positions == symbols else symbols
    if stride == 1 and ch == c and dim is None:
        return CodecSpec(kind=kind, channels=None, bits=bits)  # nothing to cut: quantize the feature as it is
    return CodecSpec(kind=kind, channels=ch, dim=dim, bits=bits, stride=stride)
