"""``coinfer encode``: train a feature codec at a split point and print accuracy, bits per sample, encoder MACs."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from coinference.errors import ConfigError
from coinference.variant import CODEBOOKS
from search.cli import app, names, validate
from search.cli.common import (
    DataDirOpt,
    DatasetOpt,
    ModelOpt,
    ValSizeOpt,
    WeightsOpt,
    check_data_dir,
    check_model_data,
    check_training,
    check_val_size,
    console,
)

if TYPE_CHECKING:
    from coinference.codec import CodecConfig

KINDS = names.CODEC_KINDS

CHANNEL_CHOICES = ("none", "awgn", "bsc", "erasure")


def codec_config(
    kind: str, channel: str, snr: float, p: float, channels: int | None, dim: int | None, stride: int, bits: int
) -> CodecConfig:
    """Map --kind/--channel to a :class:`CodecConfig`: sq/vq over awgn/bsc become learned JSCC."""
    from coinference.codec import CodecConfig

    sizes = {"channels": channels, "dim": dim, "stride": stride, "bits": bits}
    if channel not in CHANNEL_CHOICES:
        raise ConfigError(f"channel {channel!r} unknown; valid: {', '.join(CHANNEL_CHOICES)}")
    if kind not in KINDS:
        raise ConfigError(f"codec kind {kind!r} unknown; valid: {', '.join(sorted(KINDS))}")
    if kind == "bottlenetpp":
        if channel == "bsc":
            raise ConfigError("bottlenetpp supports --channel none, awgn or erasure, not bsc")
        return CodecConfig(kind, channel=channel, snr_db=snr, p=p, **sizes)  # type: ignore[arg-type]
    if channel in ("awgn", "bsc"):
        if kind not in ("sq", "vq", f"jscc-{channel}"):
            raise ConfigError(f"--channel {channel} needs --kind sq (learned JSCC), jscc-{channel} or bottlenetpp")
        kind = f"jscc-{channel}"
    elif channel == "erasure":
        raise ConfigError("--channel erasure is only modelled for --kind bottlenetpp")
    elif kind.startswith("jscc-"):
        raise ConfigError(f"--kind {kind} needs --channel {kind.removeprefix('jscc-')}")
    return CodecConfig(kind, snr_db=snr, p=p, **sizes)  # type: ignore[arg-type]


@app.command()
def encode(
    split: Annotated[str, typer.Option("--split", "-s", help="Split point: name (layer1.2) or index.")],
    model: ModelOpt = names.DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    kind: Annotated[str, typer.Option(help=f"Codec: {', '.join(KINDS)}.")] = "sq",
    channels: Annotated[int | None, typer.Option(help="Encoder conv output channels (spatial features).")] = None,
    dim: Annotated[int | None, typer.Option(help="Encoder FC output size (default: no FC).")] = None,
    stride: Annotated[int, typer.Option(help="Encoder conv stride (= kernel when > 1).")] = 1,
    bits: Annotated[int, typer.Option(help="Quantizer bits: 2**bits levels (sq) or codewords (vq).")] = 2,
    codebook: Annotated[
        str, typer.Option(help="sq levels: shared (one codebook, the paper's) or channel (one per latent channel).")
    ] = "shared",
    channel: Annotated[str, typer.Option(help="none, awgn, bsc (learned JSCC) or erasure (bottlenetpp).")] = "none",
    snr: Annotated[float, typer.Option(help="Evaluation SNR in dB per real symbol (awgn).")] = 10.0,
    p: Annotated[float, typer.Option(help="Evaluation flip/erasure probability (bsc, erasure).")] = 0.01,
    finetune_tail: Annotated[bool, typer.Option(help="Also fine-tune the server tail end to end.")] = False,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the codec phase (Adam).")] = 3e-3,
    epochs: Annotated[float, typer.Option(help="Codec training epochs over the subset.")] = 2.0,
    steps: Annotated[int | None, typer.Option(help="Codec training steps (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 128,
    subset: Annotated[int | None, typer.Option(help="Train on a fixed random subset of N images.")] = None,
    base_epochs: Annotated[float, typer.Option(help="Without --weights: epochs to train the base model first.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    val_size: ValSizeOpt = None,
    test_limit: Annotated[int | None, typer.Option(help="Evaluate on the first N test images only.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Train a codec at a split point (head frozen) and print accuracy, bits per sample (from bytes), MACs."""
    check_data_dir(check_model_data(model, weights, dataset, data_dir), data_dir)
    names.check("codebook", codebook, CODEBOOKS)
    for opt, v in (("--channels", channels), ("--dim", dim)):
        if v is not None:
            validate.at_least(opt, v, 1)
    validate.at_least("--stride", stride, 1)
    validate.in_range("--base-epochs", base_epochs, 0.0, 10_000.0, low_open=True)
    check_training(lr, epochs, batch_size, seed, subset, steps, test_limit)
    check_val_size(dataset or names.MODEL_DATASETS[model], val_size)
    import torch

    from coinference.codec import evaluate_codec, train_codec
    from coinference.evaluate import accuracy
    from coinference.profile import count_macs
    from coinference.train import TrainConfig, fit
    from coinference.zoo import split_model
    from search.cli.common import model_and_data
    from search.cli.progress import cli_progress

    cfg = replace(codec_config(kind, channel, snr, p, channels, dim, stride, bits), codebook=codebook)
    if finetune_tail:
        cfg = replace(cfg, finetune_tail=True)
    train = TrainConfig(
        optimizer="adam", lr=lr, weight_decay=0.0, epochs=epochs, steps=steps, batch_size=batch_size, subset=subset
    )
    train = replace(train, seed=seed)
    _, net, data = model_and_data(model, weights, dataset, data_dir, need_data=True, val_size=val_size)
    assert data is not None
    point = net.split_point(split)  # a bad split fails before any training
    if cfg.kind not in ("none", "huffman"):  # codec sizes that do not fit the split's feature, also before training
        from coinference.codec.bottleneck import latent_shape
        from coinference.profile import profile_model

        feature = next(s.feature_shape for s in profile_model(net, data.input_shape).splits if s.index == point.index)
        latent_shape(feature, cfg.channels, cfg.dim, cfg.stride)
    if test_limit is not None:
        data = replace(data, test_x=data.test_x[:test_limit], test_y=data.test_y[:test_limit])
    torch.manual_seed(seed)
    with cli_progress():
        if weights is None:
            fit(net, data, TrainConfig(lr=0.05, epochs=base_epochs, seed=seed))
        net.eval()
        base_acc = accuracy(net, data)
        with torch.no_grad(), count_macs(net) as total:
            net(torch.zeros(1, *data.input_shape))
        head, tail = split_model(net, point)
        with torch.no_grad(), count_macs(head) as dev:
            head(torch.zeros(1, *data.input_shape))
        tc = train_codec(head, tail, data, cfg, train)
        ev = evaluate_codec(tc, head, data)
    res = {
        "model": model,
        "split": point.name,
        "codec": cfg.to_dict(),
        "feature_shape": list(tc.feature_shape),
        "base_accuracy": base_acc,
        "model_macs": total[0],
        "device_macs": dev[0],
        **ev.to_dict(),
        "encoder_macs_fraction": ev.encoder_macs / total[0],
    }
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    from rich.table import Table

    c = console()
    t = Table(title=f"{model} split after {point.name}: {cfg.kind}, feature {'×'.join(map(str, tc.feature_shape))}")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("accuracy (base)", f"{100 * ev.accuracy:.2f} % ({100 * base_acc:.2f} %)")
    if ev.bits_mean is not None:
        t.add_row("bits per sample, mean / max", f"{ev.bits_mean:,.1f} / {ev.bits_max:,}")
        t.add_row("header bits (apart)", f"{ev.header_bits}")
        t.add_row("raw float32 feature bits", f"{32 * int(torch.tensor(tc.feature_shape).prod()):,}")
    if ev.channel_uses is not None:
        unit = "real symbols" if cfg.kind == "jscc-awgn" else "bits"
        t.add_row(f"channel uses ({unit}) at {ev.channel_level:g}", f"{ev.channel_uses:,}")
    t.add_row("encoder MACs (device)", f"{ev.encoder_macs:,} ({100 * ev.encoder_macs / total[0]:.3f} % of model)")
    t.add_row("decoder MACs (server)", f"{ev.decoder_macs:,}")
    t.add_row("head MACs (device)", f"{dev[0]:,} ({100 * dev[0] / total[0]:.1f} % of model)")
    c.print(t)
