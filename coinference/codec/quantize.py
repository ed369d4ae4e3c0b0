"""Quantizers: a learned scalar codebook, a learned vector codebook, and uniform 8-bit quantization.

Learned quantizers (paper IV-B.2) use the hard nearest codeword in the forward pass and pass gradients
straight through (``"ste"``) or through a soft assignment whose temperature is annealed (``"soft"``,
soft-to-hard). The codebook is trained by the codebook loss ‖sg[z] − q‖² and the encoder pulled towards it by the
commitment loss ‖z − sg[q]‖² (VQ-VAE). There are exactly L = 2**bits levels (the authors' code had 2**bits + 1).
During a warm-up the quantizer is off (identity); on the first forward after it is switched on, the codebook is
initialised from the data it sees (Lloyd-Max levels for scalar, random vectors for vector quantization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coinference.errors import ConfigError

COMPARE_LEVELS = 16
"""Per-channel symbols up to this many levels come from comparisons with every decision boundary; more levels
from one search per channel (``searchsorted`` with a row per channel has no ONNX export)."""
LLOYD_ITERATIONS = 100
"""At most this many Lloyd-Max iterations start a scalar codebook (they stop once no level moves by more than
1e-5 of the values' range; skewed values need tens)."""


class _Learned(nn.Module):
    """Shared state of the learned quantizers."""

    def __init__(self, levels: int, grad: str, commitment: float) -> None:
        super().__init__()
        self.levels = levels
        self.grad = grad
        self.commitment = commitment
        self.enabled = True
        self.temperature = 1.0
        """Soft-assignment temperature relative to the mean squared codebook spacing (annealed to ~0)."""
        self.initialized: torch.Tensor
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.aux_loss = torch.zeros(())

    def _maybe_init(self, z: torch.Tensor) -> None:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                self._init_from(z.detach())
                self.initialized.fill_(True)

    def _init_from(self, z: torch.Tensor) -> None:
        raise NotImplementedError

    def _finish(self, z: torch.Tensor, q: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        """Losses and the straight-through output of a training forward."""
        self.aux_loss = F.mse_loss(q, z.detach()) + self.commitment * F.mse_loss(z, q.detach())
        # Value exactly q (x − x is exactly 0 in IEEE arithmetic), gradient of z (STE) or of the soft assignment.
        if soft is None:
            return q + (z - z.detach())
        return q.detach() + (soft - soft.detach())


class ScalarQuantizer(_Learned):
    """Each latent value → the nearest of L learned levels. Symbols are ranks in the sorted codebook.

    One codebook is shared by all values, or with ``channels`` there is one per latent channel (dim 1: the
    channels of an (N, C, H, W) latent, the elements of an (N, D) one). When quantization switches on, each
    codebook starts at the Lloyd-Max quantizer (least squared error) of the values it sees, refined from their
    quantiles: a short schedule cannot win back a poor start (quantiles alone cost the `fast` preset 0.3–0.4 points at
    ResNet-20 layer1.2, ``docs/RESULTS.md``, issue 5; an FC latent at layer3.2 scored lower with this start, not yet
    understood). Per-channel codebooks were as accurate there and spent ~9 %
    more bits: a shared one leaves a weak channel on one or two levels, which the per-channel entropy model then
    codes in fewer bits (``bench/bench_variants.py --parts codebook``).

    Args:
        bits: L = 2**bits levels.
        grad: "ste" or "soft".
        commitment: weight of the commitment loss.
        channels: one codebook per channel of this many channels (None: one shared codebook).
    """

    INIT_VALUES = 200_000
    """At most this many latent values (in all channels together) start the codebooks."""

    def __init__(self, bits: int, grad: str = "ste", commitment: float = 0.25, channels: int | None = None) -> None:
        super().__init__(2**bits, grad, commitment)
        self.channels = channels
        levels = torch.linspace(-1.0, 1.0, self.levels)
        self.codebook = nn.Parameter(levels if channels is None else levels.repeat(channels, 1))

    def sorted_codebook(self) -> torch.Tensor:
        """The levels in ascending order, (L,) or (channels, L) (the symbol of a level is its rank)."""
        return torch.sort(self.codebook, dim=-1)[0]

    def _check(self, z: torch.Tensor) -> None:
        if self.channels is None or torch.jit.is_tracing():  # a trace has fixed shapes
            return
        if z.dim() < 2 or z.shape[1] != self.channels:
            raise ConfigError(f"latent of shape {tuple(z.shape)} for a quantizer of {self.channels} channels")

    def _table(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-channel rows (channels, k) of ``t`` shaped to broadcast against ``z.unsqueeze(-1)``."""
        if self.channels is None:
            return t
        return t.view(1, self.channels, *([1] * (z.dim() - 2)), t.shape[-1])

    def _rows(self, z: torch.Tensor) -> torch.Tensor:
        """The values of ``z`` as (channels or 1, M) rows."""
        if self.channels is None:
            return z.reshape(1, -1)
        return z.movedim(1, 0).reshape(self.channels, -1)

    def _init_from(self, z: torch.Tensor) -> None:
        self._check(z)
        v = self._rows(z)
        if v.shape[1] * len(v) > self.INIT_VALUES:
            v = v[:, torch.randperm(v.shape[1])[: max(1, self.INIT_VALUES // len(v))]]
        qs = (torch.arange(self.levels, dtype=v.dtype) + 0.5) / self.levels
        levels = torch.quantile(v, qs, dim=1).T.contiguous()  # (rows, L)
        # Spread coinciding quantiles (e.g. many exact zeros after a ReLU) so the L levels stay distinct.
        span = (v.amax(1) - v.amin(1)).clamp_min(1e-6)
        levels = lloyd_max(v, levels + torch.arange(self.levels, dtype=v.dtype) * 1e-3 * span[:, None])
        self.codebook.copy_(levels.view_as(self.codebook))

    def symbols(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-level index (int64, z's shape)."""
        cb = self.sorted_codebook().detach()
        mids = (cb[..., 1:] + cb[..., :-1]) / 2
        z = z.detach()
        if self.channels is None:
            return torch.bucketize(z.contiguous(), mids)
        self._check(z)
        if self.levels <= COMPARE_LEVELS:  # operators every ONNX runtime has (an export traces this)
            return (z.unsqueeze(-1) > self._table(mids, z)).sum(-1)
        return torch.stack([torch.bucketize(z[:, c].contiguous(), mids[c]) for c in range(self.channels)], 1)

    def _levels_of(self, cb: torch.Tensor, symbols: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            return cb[symbols]
        offset = torch.arange(self.channels, device=symbols.device) * self.levels
        return cb.flatten()[symbols + offset.view(1, -1, *([1] * (symbols.dim() - 2)))]

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        """Level values of symbols."""
        return self._levels_of(self.sorted_codebook().detach(), symbols)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            self.aux_loss = torch.zeros(())
            return z
        self._maybe_init(z)
        cb = self.sorted_codebook()
        q = self._levels_of(cb, self.symbols(z))
        if not self.training:
            return q.detach()
        soft = None
        if self.grad == "soft":
            table = self._table(cb, z)
            d = (z.unsqueeze(-1) - table) ** 2
            spacing = ((cb[..., 1:] - cb[..., :-1]) ** 2).mean(-1, keepdim=True).detach().clamp_min(1e-12)
            soft = (torch.softmax(-d / (self.temperature * self._table(spacing, z)), -1) * table).sum(-1)
        return self._finish(z, q, soft)


@torch.no_grad()
def lloyd_max(values: torch.Tensor, levels: torch.Tensor, iterations: int = LLOYD_ITERATIONS) -> torch.Tensor:
    """Lloyd-Max scalar quantizers of each row of ``values`` (R, M), started at ``levels`` (R, L): each level moves
    to the mean of the values nearest to it (a level no value is nearest keeps its place). Returns sorted (R, L)."""
    levels = torch.sort(levels, dim=1)[0]
    values = values.contiguous()
    tolerance = 1e-5 * (values.amax(1) - values.amin(1)).clamp_min(1e-12)
    for _ in range(iterations):
        mids = (levels[:, 1:] + levels[:, :-1]) / 2
        idx = torch.searchsorted(mids.contiguous(), values)
        sums = torch.zeros_like(levels).scatter_add_(1, idx, values)
        counts = torch.zeros_like(levels).scatter_add_(1, idx, torch.ones_like(values))
        moved = torch.sort(torch.where(counts > 0, sums / counts.clamp_min(1), levels), dim=1)[0]
        done = bool(((moved - levels).abs().amax(1) <= tolerance).all())
        levels = moved
        if done:
            break
    return levels


class VectorQuantizer(_Learned):
    """Each feature vector → the nearest of L learned codewords: along channels of an (N, C, H, W) latent (one
    symbol per position), or the whole (N, D) latent (one symbol per sample).

    Args:
        dim: codeword length (C or D).
        bits: L = 2**bits codewords.
        grad: "ste" or "soft".
        commitment: weight of the commitment loss.
    """

    def __init__(self, dim: int, bits: int, grad: str = "ste", commitment: float = 0.25) -> None:
        super().__init__(2**bits, grad, commitment)
        self.dim = dim
        self.codebook = nn.Parameter(torch.randn(self.levels, dim) * 0.1)

    @staticmethod
    def _vectors(z: torch.Tensor) -> torch.Tensor:
        return z.movedim(1, -1).reshape(-1, z.shape[1])

    @staticmethod
    def _unvectors(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        shape = (like.shape[0], *like.shape[2:], like.shape[1])
        return v.reshape(shape).movedim(-1, 1)

    def _init_from(self, z: torch.Tensor) -> None:
        v = self._vectors(z)
        idx = torch.randint(0, v.shape[0], (self.levels,))
        self.codebook.copy_(v[idx] + 1e-3 * torch.randn_like(v[idx]) * (v.std() + 1e-6))

    def symbols(self, z: torch.Tensor) -> torch.Tensor:
        """Codeword index per vector: (N,) for (N, D) latents, (N, H, W) for (N, C, H, W)."""
        v = self._vectors(z.detach())
        idx = torch.cdist(v, self.codebook.detach()).argmin(1)
        return idx.reshape((z.shape[0], *z.shape[2:]))

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        """Latent of symbols ((N,) → (N, D); (N, H, W) → (N, C, H, W))."""
        q = self.codebook.detach()[symbols]
        # permute with non-negative dims: the ONNX exporter writes movedim(-1, 1) as a Transpose perm with a -1
        return q.permute(0, q.dim() - 1, *range(1, q.dim() - 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            self.aux_loss = torch.zeros(())
            return z
        self._maybe_init(z)
        idx = self.symbols(z).flatten()
        q = self._unvectors(self.codebook[idx], z)
        if not self.training:
            return q.detach()
        soft = None
        if self.grad == "soft":
            v = self._vectors(z)
            d = torch.cdist(v, self.codebook) ** 2
            scale = d.detach().mean().clamp_min(1e-12)
            soft = self._unvectors(torch.softmax(-d / (self.temperature * scale), -1) @ self.codebook, z)
        return self._finish(z, q, soft)


def uniform_quantize(x: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float, bits: int = 8) -> tuple:
    """Uniform ``bits``-bit quantization of ``x`` on [lo, hi] → (symbols int64, dequantized values)."""
    levels = 2**bits - 1
    # a tensor bound stays a tensor (torch.as_tensor would make it a constant of an exported trace)
    scale = (hi if isinstance(hi, torch.Tensor) else torch.tensor(hi)) - lo
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    sym = torch.round((x - lo) / scale * levels).clamp(0, levels).to(torch.int64)
    return sym, sym.to(x.dtype) / levels * scale + lo


def uniform_ste(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Straight-through ``bits``-bit quantization of values in [0, 1] (BottleNet++)."""
    levels = 2**bits - 1
    return torch.round(x.clamp(0, 1) * levels).detach() / levels + (x - x.detach())
