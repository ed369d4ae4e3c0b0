"""Quantizers: a learned scalar codebook, a learned vector codebook, and uniform 8-bit quantization.

Learned quantizers (paper IV-B.2) use the hard nearest codeword in the forward pass and pass gradients
straight through (``"ste"``) or through a soft assignment whose temperature is annealed (``"soft"``,
soft-to-hard). The codebook is trained by the codebook loss ‖sg[z] − q‖² and the encoder pulled towards it by the
commitment loss ‖z − sg[q]‖² (VQ-VAE). There are exactly L = 2**bits levels (the authors' code had 2**bits + 1).
During a warm-up the quantizer is off (identity); on the first forward after it is switched on, the codebook is
initialised from the data it sees (quantiles for scalar, random vectors for vector quantization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    Args:
        bits: L = 2**bits levels.
        grad: "ste" or "soft".
        commitment: weight of the commitment loss.
    """

    def __init__(self, bits: int, grad: str = "ste", commitment: float = 0.25) -> None:
        super().__init__(2**bits, grad, commitment)
        self.codebook = nn.Parameter(torch.linspace(-1.0, 1.0, self.levels))

    def sorted_codebook(self) -> torch.Tensor:
        """The L levels in ascending order (the symbol of a level is its rank)."""
        return torch.sort(self.codebook)[0]

    def _init_from(self, z: torch.Tensor) -> None:
        flat = z.flatten()
        if flat.numel() > 200_000:
            flat = flat[torch.randperm(flat.numel())[:200_000]]
        qs = (torch.arange(self.levels, dtype=torch.float32) + 0.5) / self.levels
        levels = torch.quantile(flat, qs)
        # Spread coinciding quantiles (e.g. many exact zeros after a ReLU) so the L levels stay distinct.
        span = float(flat.max() - flat.min()) or 1.0
        levels = levels + torch.arange(self.levels) * 1e-3 * span
        self.codebook.copy_(levels)

    def symbols(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-level index (int64, z's shape)."""
        cb = self.sorted_codebook().detach()
        mids = (cb[1:] + cb[:-1]) / 2
        return torch.bucketize(z.detach().contiguous(), mids)

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        """Level values of symbols."""
        return self.sorted_codebook().detach()[symbols]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            self.aux_loss = torch.zeros(())
            return z
        self._maybe_init(z)
        cb = self.sorted_codebook()
        q = cb[self.symbols(z)]
        if not self.training:
            return q.detach()
        soft = None
        if self.grad == "soft":
            d = (z.unsqueeze(-1) - cb) ** 2
            scale = ((cb[1:] - cb[:-1]) ** 2).mean().detach().clamp_min(1e-12)
            soft = (torch.softmax(-d / (self.temperature * scale), -1) * cb).sum(-1)
        return self._finish(z, q, soft)


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
        return self.codebook.detach()[symbols].movedim(-1, 1)

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
    scale = torch.as_tensor(hi) - torch.as_tensor(lo)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    sym = torch.round((x - lo) / scale * levels).clamp(0, levels).to(torch.int64)
    return sym, sym.to(x.dtype) / levels * scale + lo


def uniform_ste(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Straight-through ``bits``-bit quantization of values in [0, 1] (BottleNet++)."""
    levels = 2**bits - 1
    return torch.round(x.clamp(0, 1) * levels).detach() / levels + (x - x.detach())
