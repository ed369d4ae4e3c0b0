"""``coinfer build``: build, train and measure one variant from its (split, sparsity, ratio, codec) settings."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from coinference.build import Builder
from coinference.data import DATASETS
from coinference.profile import profile_model
from coinference.variant import CODEC_KINDS, CodecSpec, VariantSpec, codec_for_ratio
from coinference.zoo import DEFAULT_MODEL, MODELS, build_model, file_sha256
from search.cli import app
from search.cli.common import DataDirOpt, DatasetOpt, ModelOpt, WeightsOpt, console


@app.command()
def build(
    split: Annotated[str, typer.Option(help="Split point (name or index; see `coinfer profile`).")],
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    sparsity: Annotated[float, typer.Option(help="Channel sparsity of the device part, in [0, 1).")] = 0.0,
    activation_sparsity: Annotated[float, typer.Option(help="Pruned fraction of the sent channels.")] = 0.0,
    schedule: Annotated[str, typer.Option(help="Sparsity schedule: cubic or step.")] = "cubic",
    pruning: Annotated[str, typer.Option(help="incremental (ours) or two-step (baseline).")] = "incremental",
    codec: Annotated[str, typer.Option(help=f"Codec kind: {', '.join(CODEC_KINDS)}.")] = "sq",
    ratio: Annotated[float | None, typer.Option(help="Compression ratio (raw float bits / sent bits).")] = None,
    channels: Annotated[int | None, typer.Option(help="Encoder conv channels (instead of --ratio).")] = None,
    dim: Annotated[int | None, typer.Option(help="Encoder FC dimension (instead of --ratio).")] = None,
    stride: Annotated[
        int, typer.Option(help="Encoder conv stride, a spatial cut by stride² (instead of --ratio).")
    ] = 1,
    bits: Annotated[int, typer.Option(help="Quantizer bits per symbol.")] = 2,
    snr: Annotated[float | None, typer.Option(help="AWGN SNR in dB (jscc-awgn, bottlenetpp).")] = None,
    p: Annotated[float | None, typer.Option(help="BSC flip probability (jscc-bsc).")] = None,
    fidelity: Annotated[str, typer.Option(help="Budget preset: smoke, fast or full.")] = "fast",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    cache_dir: Annotated[Path, typer.Option(help="Cache of pruned parts, measurements, artifacts.")] = Path(
        "runs/cache"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print spec and measurement as JSON.")] = False,
) -> None:
    """Build one variant (prune → codec → measure) and print its Measurement (cached by spec hash)."""
    name = dataset or MODELS.get(model).dataset
    DATASETS.get(name)
    net = build_model(model)
    point = net.split_point(split)
    if ratio is not None:
        shape = next(s.feature_shape for s in profile_model(net, MODELS.get(model).input_shape).splits
                     if s.index == point.index)  # fmt: skip
        cspec = codec_for_ratio(shape, ratio, bits, codec)
    else:
        cspec = CodecSpec(codec, channels=channels, dim=dim, bits=bits, stride=stride)
    cspec = replace(cspec, snr_db=snr, flip_p=p)
    spec = VariantSpec(
        model, name, point.name, file_sha256(weights) if weights else None, sparsity, schedule, pruning,
        activation_sparsity, cspec, fidelity, seed,
    )  # fmt: skip
    m = Builder(weights, data_dir, cache_dir).measure(spec)
    if as_json:
        typer.echo(json.dumps({"key": spec.key, "spec": spec.to_dict(), "measurement": m.to_dict()}, indent=2))
        return
    c = console()
    c.print(f"variant {spec.key[:12]}: {model} split {point.name}, sparsity {sparsity}, codec {cspec.label}")
    c.print(f"  accuracy        {100 * m.accuracy:.2f}%")
    c.print(f"  bits per image  {m.bits_mean:,.1f} mean, {m.bits_max:,} max (+ {m.header_bits} header bits)")
    c.print(f"  device MACs     {m.device_macs:,} (encoder {m.encoder_macs:,})")
    c.print(f"  server MACs     {m.server_macs:,} (decoder {m.decoder_macs:,})")
    c.print(f"  device memory   {m.device_param_bytes:,} B params + {m.device_peak_activation_bytes:,} B activations")
    c.print(f"  built in        {m.train_seconds:.1f} s")
