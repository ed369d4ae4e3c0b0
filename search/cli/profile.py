"""``coinfer profile``: split-point table and the Fig.-1-style plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from search.cli import app, names, validate
from search.cli.common import DataDirOpt, DatasetOpt, ModelOpt, WeightsOpt, check_model_data, console, model_and_data

if TYPE_CHECKING:
    from rich.console import Console

    from coinference.profile import ModelProfile


def _fmt_m(x: int) -> str:
    return f"{x / 1e6:,.2f} M" if x >= 10_000 else f"{x:,}"


def render_profile(p: ModelProfile, console: Console) -> None:
    """Print a profile as a rich table."""
    from rich.table import Table

    png = f"{p.input_bits_png:,.0f} bits PNG (mean of {p.png_sample_size})" if p.input_bits_png else "PNG n/a"
    t = Table(
        title=f"{p.model}: input {p.input_shape}, {p.input_bits_raw:,} bits raw, {png}; "
        f"total {_fmt_m(p.total_macs)} MACs, {p.total_params:,} params"
    )
    for col in (
        "#",
        "split after",
        "device MACs",
        "server MACs",
        "device params",
        "param bytes",
        "peak act. bytes",
        "feature",
        "feature bits",
        "÷ raw",
        "÷ PNG",
    ):
        t.add_column(col, justify="right")
    for s in p.splits:
        t.add_row(
            str(s.index),
            s.name + (" *" if s.stage_end else ""),
            _fmt_m(s.device_macs),
            _fmt_m(s.server_macs),
            f"{s.device_params:,}",
            f"{s.device_param_bytes:,}",
            f"{s.device_peak_activation_bytes:,}",
            "×".join(map(str, s.feature_shape)),
            f"{s.feature_bits:,}",
            f"{s.amplification_raw:.2f}",
            f"{s.amplification_png:.2f}" if s.amplification_png is not None else "n/a",
        )
    console.print(t)
    console.print("* ends a stage. MACs per image (FLOPs = 2×MACs); bits are raw float32.")


@app.command()
def profile(
    model: ModelOpt = names.DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    png_sample: Annotated[int, typer.Option(help="Test images compressed for the PNG size (≥ 1).")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON instead.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for the plot.")] = Path("runs/profile"),
) -> None:
    """Profile every split point: device/server MACs, device memory, feature size, data amplification."""
    check_model_data(model, weights, dataset, data_dir)
    validate.at_least("--png-sample", png_sample, 1)
    if not as_json:
        validate.writable_dir("--out", out)
    from coinference.plots import plot_profile
    from coinference.profile import profile_model

    info, net, data = model_and_data(model, weights, dataset, data_dir, need_data=False)
    shape = data.input_shape if data is not None else info.input_shape
    prof = profile_model(net, shape, model, data.test_x if data is not None else None, png_sample)
    if as_json:
        typer.echo(json.dumps(prof.to_dict(), indent=2))
        return
    out_console = console()
    render_profile(prof, out_console)
    path = plot_profile(prof, out / f"{model}.png")
    out_console.print(f"plot: {path}")
