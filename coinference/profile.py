"""Split-point profiling (the paper's Fig. 1): device/server compute, device memory and feature size per split.

Conventions (docs/ARCHITECTURE.md):
- MACs are multiply-accumulates of convolutions and linear layers for one input (batch 1), counted by forward
  hooks; FLOPs = 2 × MACs. BN, ReLU, pooling and residual adds are not counted (they fold or are negligible).
- Peak activation memory is the largest, over the device's layer calls at batch 1, of input bytes + output bytes
  + the inputs held by enclosing residual blocks for their shortcuts.
- Parameter bytes are the bytes of the parameters at their dtype (BN running statistics fold into the convs).
- Feature bits are the raw float32 size of the split output; data amplification = feature bits / input bits,
  against the raw input (8 bits per value) and against the PNG-compressed input.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from coinference.evaluate import eval_mode
from coinference.zoo.base import SplittableModel

FLOAT_BITS = 32
RAW_BITS_PER_VALUE = 8


@dataclass(frozen=True)
class SplitProfile:
    """Costs of cutting after one unit. MACs per image; bytes and bits per image (batch 1)."""

    index: int
    name: str
    stage_end: bool
    device_macs: int
    server_macs: int
    device_params: int
    device_param_bytes: int
    device_peak_activation_bytes: int
    feature_shape: tuple[int, ...]
    feature_bits: int
    amplification_raw: float
    amplification_png: float | None


@dataclass(frozen=True)
class ModelProfile:
    """The profile of every split point of one model for one input shape."""

    model: str
    input_shape: tuple[int, int, int]
    input_bits_raw: int
    input_bits_png: float | None
    png_sample_size: int
    total_macs: int
    total_params: int
    splits: tuple[SplitProfile, ...]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (tuples become lists)."""
        return asdict(self)

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Split point name → the shape of the feature sent there, in split order."""
        return {s.name: s.feature_shape for s in self.splits}


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    """MACs of one conv/linear call for batch 1."""
    per_sample = out.numel() // out.shape[0]
    if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d):
        k = int(np.prod(module.kernel_size))
        return per_sample * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def _nbytes(x: object) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, tuple | list):
        return sum(_nbytes(t) for t in x)
    return 0


@contextmanager
def count_macs(module: nn.Module) -> Iterator[list[int]]:
    """Context manager yielding a one-element list that accumulates the conv/linear MACs of forwards within.

    Counts are per image: run it with batch 1 (or divide by the batch).
    """
    total = [0]

    def hook(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        total[0] += _layer_macs(m, out)

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
    ]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def peak_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Peak live activation bytes while running ``module`` on ``x`` (see module docstring for the model)."""
    held: list[int] = []
    peak = [_nbytes(x)]
    handles = []

    def pre(m: nn.Module, inp: tuple[object, ...]) -> None:
        held.append(_nbytes(inp))

    def post(m: nn.Module, _inp: object, _out: object) -> None:
        held.pop()

    def leaf(m: nn.Module, inp: tuple[object, ...], out: object) -> None:
        peak[0] = max(peak[0], _nbytes(inp) + _nbytes(out) + sum(held))

    for m in module.modules():
        if getattr(m, "holds_input", False) and not isinstance(m, SplittableModel):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        elif not any(True for _ in m.children()):
            handles.append(m.register_forward_hook(leaf))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return peak[0]


def png_sizes(images: torch.Tensor, sample: int | None = 1000, seed: int = 0) -> np.ndarray:
    """PNG sizes in bits (Pillow, ``optimize=True``), one per image, of up to ``sample`` images of a uint8
    (N, C, H, W) set drawn with ``seed`` (None: all, in order)."""
    n = images.shape[0]
    idx = np.arange(n) if sample is None else np.random.default_rng(seed).permutation(n)[: min(sample, n)]
    sizes = np.empty(len(idx), dtype=np.int64)
    for j, i in enumerate(idx):
        arr = images[int(i)].permute(1, 2, 0).contiguous().numpy()
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        sizes[j] = len(buf.getvalue()) * 8
    return sizes


def png_bits(images: torch.Tensor, sample: int = 1000, seed: int = 0) -> float:
    """Mean PNG size in bits of up to ``sample`` images (see :func:`png_sizes`)."""
    return float(png_sizes(images, sample, seed).mean())


def profile_model(
    model: SplittableModel,
    input_shape: tuple[int, int, int],
    name: str = "model",
    png_images: torch.Tensor | None = None,
    png_sample: int = 1000,
) -> ModelProfile:
    """Profile every split point of ``model`` for inputs of shape ``input_shape`` (C, H, W).

    Args:
        model: a zoo model (in eval mode for the profile; its mode is restored).
        input_shape: (C, H, W).
        name: model name recorded in the profile.
        png_images: uint8 (N, C, H, W) images whose mean PNG size is the compressed-input reference; None
            leaves the PNG columns empty.
        png_sample: how many of them to compress.
    """
    with eval_mode(model):
        return _profile(model, input_shape, name, png_images, png_sample)


def _profile(
    model: SplittableModel,
    input_shape: tuple[int, int, int],
    name: str,
    png_images: torch.Tensor | None,
    png_sample: int,
) -> ModelProfile:
    units = model.units()
    x = torch.zeros(1, *input_shape)
    unit_macs, outputs = [], []
    with torch.no_grad():
        for _, unit in units:
            with count_macs(unit) as c:
                x = unit(x)
            unit_macs.append(c[0])
            outputs.append(x)
    total_macs = sum(unit_macs)
    total_params = sum(p.numel() for p in model.parameters())
    input_bits_raw = int(np.prod(input_shape)) * RAW_BITS_PER_VALUE
    in_png = png_bits(png_images, png_sample) if png_images is not None else None
    rows = []
    x0 = torch.zeros(1, *input_shape)
    for p in model.split_points():
        head = nn.Sequential(*[m for _, m in units[: p.index]])
        params = list(head.parameters())
        feat = outputs[p.index - 1]
        bits = feat.numel() * FLOAT_BITS
        dev = sum(unit_macs[: p.index])
        rows.append(
            SplitProfile(
                index=p.index,
                name=p.name,
                stage_end=p.stage_end,
                device_macs=dev,
                server_macs=total_macs - dev,
                device_params=sum(t.numel() for t in params),
                device_param_bytes=sum(t.numel() * t.element_size() for t in params),
                device_peak_activation_bytes=peak_activation_bytes(head, x0),
                feature_shape=tuple(feat.shape[1:]),
                feature_bits=bits,
                amplification_raw=bits / input_bits_raw,
                amplification_png=(bits / in_png) if in_png else None,
            )
        )
    return ModelProfile(
        name,
        (input_shape[0], input_shape[1], input_shape[2]),
        input_bits_raw,
        in_png,
        min(png_sample, png_images.shape[0]) if png_images is not None else 0,
        total_macs,
        total_params,
        tuple(rows),
    )


@dataclass(frozen=True)
class ModuleCost:
    """Per-image cost of running a module at batch 1."""

    macs: int
    params: int
    param_bytes: int
    peak_activation_bytes: int


def module_cost(module: nn.Module, input_shape: tuple[int, ...]) -> ModuleCost:
    """MACs, parameter count/bytes and peak activation bytes of ``module`` on one input of ``input_shape``."""
    x = torch.zeros(1, *input_shape)
    with eval_mode(module):
        with torch.no_grad(), count_macs(module) as c:
            module(x)
        peak = peak_activation_bytes(module, x)
    params = list(module.parameters())
    return ModuleCost(c[0], sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params), peak)
