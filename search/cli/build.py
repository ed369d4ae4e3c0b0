"""``coinfer build``: build, train and measure one variant from its (split, sparsity, ratio, codec) settings."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from coinference.errors import ConfigError
from coinference.variant import CODEC_KINDS, FIDELITIES, PRUNING_METHODS, SCHEDULES, CodecSpec, VariantSpec
from search.cli import app, names, validate
from search.cli.common import (
    DataDirOpt,
    DatasetOpt,
    ModelOpt,
    ValSizeOpt,
    WeightsOpt,
    check_data_dir,
    check_model_data,
    check_seed,
    check_val_size,
    console,
)


@app.command()
def build(
    split: Annotated[str, typer.Option(help="Split point (name or index; see `coinfer profile`).")],
    model: ModelOpt = names.DEFAULT_MODEL,
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
    fidelity: Annotated[str, typer.Option(help=f"Budget preset: {', '.join(FIDELITIES)}.")] = "fast",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    val_size: ValSizeOpt = None,
    cache_dir: Annotated[Path, typer.Option(help="Cache of pruned parts, measurements, artifacts.")] = Path(
        "runs/cache"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print spec and measurement as JSON.")] = False,
) -> None:
    """Build one variant (prune → codec → measure) and print its Measurement (cached by spec hash)."""
    name = check_model_data(model, weights, dataset, data_dir)
    check_data_dir(name, data_dir)
    validate.in_range("--sparsity", sparsity, 0.0, 1.0, high_open=True)
    validate.in_range("--activation-sparsity", activation_sparsity, 0.0, 1.0, high_open=True)
    names.check("schedule", schedule, SCHEDULES)
    names.check("pruning method", pruning, PRUNING_METHODS)
    names.check("codec kind", codec, CODEC_KINDS)
    names.check("fidelity", fidelity, FIDELITIES)
    if ratio is not None:
        validate.in_range("--ratio", ratio, 1.0, 1e9)
        if channels is not None or dim is not None:
            raise ConfigError("give either --ratio or --channels/--dim, not both")
    for opt, v in (("--channels", channels), ("--dim", dim)):
        if v is not None:
            validate.at_least(opt, v, 1)
    validate.at_least("--stride", stride, 1)
    validate.in_range("--bits", bits, 1, 16)
    if snr is not None:
        validate.in_range("--snr", snr, -10.0, 40.0)
    if p is not None:
        validate.in_range("--p", p, 0.0, 0.5, high_open=True)
    check_seed(seed)
    check_val_size(name, val_size)
    validate.writable_dir("--cache-dir", cache_dir)
    from coinference.build import Builder
    from coinference.profile import profile_model
    from coinference.variant import codec_for_ratio
    from coinference.zoo import MODELS, file_sha256
    from search.cli.common import model_and_data
    from search.cli.progress import cli_progress

    # a checkpoint that does not load or does not fit, or a missing data folder, fails before any work
    _, net, _ = model_and_data(model, weights, name, data_dir, need_data=True, val_size=val_size)
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
        activation_sparsity, cspec, fidelity, seed, val_size,
    )  # fmt: skip
    with cli_progress():
        m = Builder(weights, data_dir, cache_dir).measure(spec)
    if as_json:
        typer.echo(json.dumps({"key": spec.key, "spec": spec.to_dict(), "measurement": m.to_dict()}, indent=2))
        return
    c = console()
    c.print(f"variant {spec.key[:12]}: {model} split {point.name}, sparsity {sparsity}, codec {cspec.label}")
    test = f"{100 * m.test_accuracy:.2f}%" if m.test_accuracy is not None else "not evaluated"
    c.print(f"  accuracy        {100 * m.val_accuracy:.2f}% validation (selects), {test} test (reported)")
    c.print(f"  bits per image  {m.bits_mean:,.1f} mean, {m.bits_max:,} max (+ {m.header_bits} header bits)")
    c.print(f"  device MACs     {m.device_macs:,} (encoder {m.encoder_macs:,})")
    c.print(f"  server MACs     {m.server_macs:,} (decoder {m.decoder_macs:,})")
    c.print(f"  device memory   {m.device_param_bytes:,} B params + {m.device_peak_activation_bytes:,} B activations")
    c.print(f"  built in        {m.train_seconds:.1f} s")
    c.print(f"cache: {cache_dir / 'variants' / spec.key} (pruned head and codec, for export)")
