"""The typed configuration of a feature codec (what a variant records about its step-3 coding)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from coinference.errors import ConfigError
from coinference.train import KD_TEMPERATURE
from coinference.variant import CODEBOOKS

KINDS = ("sq", "vq", "jscc-awgn", "jscc-bsc", "bottlenetpp", "huffman", "none")
BOTTLENETPP_CHANNELS = ("none", "awgn", "erasure")
SNR_RANGE_DB = (-10.0, 40.0)
"""SNRs (dB, per real channel symbol) accepted anywhere; outside it the message names the bad value."""
P_RANGE = (0.0, 0.5)
"""Flip / erasure probabilities accepted (a BSC with p > 0.5 is a BSC with 1 - p and inverted bits)."""


def check_snr(snr_db: float, what: str = "SNR") -> float:
    """``snr_db`` if it lies in :data:`SNR_RANGE_DB`, else :class:`ConfigError`."""
    lo, hi = SNR_RANGE_DB
    if not lo <= snr_db <= hi:
        raise ConfigError(f"{what} {snr_db} dB out of range [{lo:g}, {hi:g}] dB")
    return float(snr_db)


def check_p(p: float, what: str = "p") -> float:
    """``p`` if it lies in :data:`P_RANGE`, else :class:`ConfigError`."""
    lo, hi = P_RANGE
    if not lo <= p <= hi:
        raise ConfigError(f"{what} {p} out of range [{lo:g}, {hi:g}]")
    return float(p)


@dataclass(frozen=True)
class CodecConfig:
    """How the split feature is coded (paper Sec. IV-B): bottleneck sizes, quantizer, channel, training levers."""

    kind: str = "sq"
    """"sq" (learned scalar quantizer + entropy code), "vq" (one learned codeword per feature vector + entropy
    code), "jscc-awgn", "jscc-bsc" (learned joint source-channel coding), "bottlenetpp" (baseline), "huffman"
    (8-bit uniform + Huffman baseline, no learned parts) or "none" (raw float32)."""
    channels: int | None = None
    """Output channels of the encoder's conv layer (spatial features only); None skips the conv."""
    dim: int | None = None
    """Output size of the encoder's fully-connected layer; None skips it."""
    stride: int = 1
    """Stride (= kernel size when > 1) of the encoder conv: a spatial reduction by stride² on the device."""
    kernel: int = 1
    """Kernel size of the encoder conv when ``stride`` is 1 (odd; padded to keep the size)."""
    bits: int = 2
    """Quantizer bits: L = 2**bits levels (sq), codewords (vq); bits per channel use are 1 for jscc-bsc."""
    codebook: str = "shared"
    """Scalar quantizer (sq) levels: "shared" (one codebook for every latent value, as in the paper's code) or
    "channel" (one per latent channel, or per element of a flat latent)."""
    grad: str = "ste"
    """Gradient through the quantizer: "ste" (straight-through) or "soft" (soft-to-hard, annealed)."""
    snr_db: float = 10.0
    """Evaluation SNR in dB per real channel symbol (jscc-awgn, bottlenetpp over awgn)."""
    snr_train_db: tuple[float, float] = (0.0, 20.0)
    """Training SNRs: drawn uniformly per sample from this dB range."""
    p: float = 0.01
    """Evaluation flip (jscc-bsc) or erasure (bottlenetpp over erasure) probability."""
    p_train: tuple[float, float] = (0.0, 0.1)
    """Training flip / erasure probabilities: drawn uniformly per sample from this range."""
    channel: str = "none"
    """Channel of the bottlenetpp baseline: "none", "awgn" or "erasure" (the jscc kinds imply theirs)."""
    warmup: float = 0.2
    """Fraction of the training steps run without quantization/channel before they are switched on."""
    distill: float = 0.5
    """Weight of distillation from the uncoded model's logits, or from a given teacher's (e.g. the unpruned base
    model); 1 - distill weighs the labels."""
    distill_temperature: float = KD_TEMPERATURE
    """Temperature of that distillation (the KL term is weighed by its square, as usual)."""
    init: str = "pca"
    """Start of a spatial conv bottleneck without FC (sq, vq): "pca" (principal components of the training
    feature patches) or "random"."""
    recon: float = 0.0
    """Weight of the feature-reconstruction loss ‖decoded − feature‖² / Var(feature) (helps a frozen deep tail)."""
    commitment: float = 0.25
    """Weight of the commitment loss (sq, vq); the codebook loss has weight 1."""
    finetune_tail: bool = False
    """Also train the server tail end to end (the device head always stays frozen, BN statistics included)."""
    tail_lr: float = 0.3
    """Learning rate of a fine-tuned tail as a multiple of the codec's (a pretrained tail needs smaller steps)."""
    entropy_coded: bool = False
    """bottlenetpp only: range-code its 8-bit latent values (one categorical model per latent channel, fitted on
    training symbols) instead of sending one byte each, the paper's count (sq and vq are always range-coded)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"codec kind {self.kind!r} unknown; valid: {', '.join(sorted(KINDS))}")
        if self.channels is not None and self.channels < 1:
            raise ConfigError(f"conv channels must be >= 1, got {self.channels}")
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"fc dim must be >= 1, got {self.dim}")
        if self.stride < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"stride must be >= 1 and kernel odd >= 1, got stride={self.stride} kernel={self.kernel}")
        if not 1 <= self.bits <= 16:
            raise ConfigError(f"bits must be in [1, 16], got {self.bits}")
        if self.codebook not in CODEBOOKS:
            raise ConfigError(f"codebook {self.codebook!r} unknown; valid: {', '.join(CODEBOOKS)}")
        if self.grad not in ("ste", "soft"):
            raise ConfigError(f"quantizer gradient {self.grad!r} unknown; valid: soft, ste")
        if self.init not in ("pca", "random"):
            raise ConfigError(f"init {self.init!r} unknown; valid: pca, random")
        if self.channel not in BOTTLENETPP_CHANNELS:
            raise ConfigError(f"channel {self.channel!r} unknown; valid: {', '.join(BOTTLENETPP_CHANNELS)}")
        check_snr(self.snr_db)
        lo, hi = self.snr_train_db
        check_snr(lo, "training SNR")
        check_snr(hi, "training SNR")
        check_p(self.p)
        plo, phi = self.p_train
        check_p(plo, "training p")
        check_p(phi, "training p")
        if lo > hi or plo > phi:
            raise ConfigError(f"training ranges must be (low, high): snr {self.snr_train_db}, p {self.p_train}")
        if self.entropy_coded and self.kind != "bottlenetpp":
            raise ConfigError(f"entropy_coded applies to codec kind bottlenetpp, not {self.kind!r}")
        if not self.tail_lr > 0:
            raise ConfigError(f"tail_lr must be > 0, got {self.tail_lr}")
        if not self.distill_temperature > 0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if not 0.0 <= self.warmup < 1.0 or not 0.0 <= self.distill <= 1.0 or min(self.commitment, self.recon) < 0:
            raise ConfigError(
                f"need 0 <= warmup < 1, 0 <= distill <= 1, commitment >= 0, recon >= 0; "
                f"got {self.warmup}, {self.distill}, {self.commitment}, {self.recon}"
            )

    @property
    def levels(self) -> int:
        """L = 2**bits quantizer levels (scalar) or codewords (vector)."""
        return 2**self.bits

    @property
    def trainable(self) -> bool:
        """Whether the kind has learned parts (huffman and none only fit statistics)."""
        return self.kind not in ("huffman", "none")

    @property
    def learns(self) -> bool:
        """Whether the codec phase trains anything: the codec's learned parts, or only a fine-tuned tail (e.g. the
        2-Step baseline's server part behind its Huffman code)."""
        return self.trainable or self.finetune_tail

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return asdict(self)
