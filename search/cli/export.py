"""``coinfer export``: write the device and server packages of the variant chosen for a link (or named by key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coinference.errors import ConfigError
from search.cli import app, validate
from search.cli.common import DataDirOpt, console
from search.cli.table_options import (
    BandwidthOpt,
    DbOpt,
    DeviceOpt,
    FidelityOpt,
    LinkSnrOpt,
    MinAccOpt,
    NameOpt,
    RttOpt,
    RunsRootOpt,
    ServerOpt,
    SymbolRateOpt,
    analog_note,
    check_analog,
    check_fidelity,
    check_min_accuracy,
    check_profiles,
    link,
    locate,
    of_fidelity,
    profiles,
    read_table,
)
from search.runs import DEFAULT_RUNS_ROOT


@app.command()
def export(
    bandwidth: BandwidthOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the packages and manifest.json.")],
    db: DbOpt = None,
    name: NameOpt = None,
    runs_root: RunsRootOpt = DEFAULT_RUNS_ROOT,
    device: DeviceOpt = "rpi3",
    server: ServerOpt = "rtx2080ti",
    rtt: RttOpt = 0.0,
    symbol_rate: SymbolRateOpt = None,
    snr: LinkSnrOpt = None,
    min_accuracy: MinAccOpt = None,
    fidelity: FidelityOpt = None,
    data_dir: DataDirOpt = None,
    verify_images: Annotated[int, typer.Option(help="Test images the export is verified on (≥ 1).")] = 64,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export in --out.")] = False,
) -> None:
    """Export the best variant for --bandwidth/--device as a device and a server package (ONNX + runtime codec
    tables + manifest), verified from the package files alone by onnxruntime and coinference.runtime, also in a
    fresh process without PyTorch (analog JSCC variants take part given --symbol-rate and --snr, as in `query`)."""
    check_profiles(device, server)
    check_analog(symbol_rate, snr)
    check_min_accuracy(min_accuracy)
    check_fidelity(fidelity)
    validate.at_least("--verify-images", verify_images, 1)
    lk = link(bandwidth, rtt, symbol_rate)
    validate.writable_dir("--out", out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {str(out)!r} is not empty (add --force to replace the export in it)")
    if data_dir is not None:
        validate.existing_dir("--data-dir", data_dir)
    ref = locate(db, name, runs_root)
    dev, srv = profiles(device, server)
    from coinference.data import load_dataset
    from coinference.export import Normalization
    from coinference.zoo import MODELS
    from storage.export import export_record
    from storage.plots import fmt_rate
    from storage.query import analog_snr_db, floor_label, resolve_floor
    from storage.query import query as run_query

    with read_table(ref) as table:
        records = of_fidelity(table.variants(status="ok"), fidelity)
        floor = resolve_floor(records, min_accuracy, dev)
        res = run_query(records, lk, dev, srv, floor, runners_up=0, snr_db=snr)
        rec = res.best.record
        assert rec.measurement is not None
        best_acc = rec.measurement.accuracy
        data = load_dataset(rec.spec.dataset, data_dir)
        info = MODELS.get(rec.spec.model)
        if rec.spec.weights_sha256 is not None and info.checkpoint_normalization is not None:
            data = data.with_normalization(*info.checkpoint_normalization)
        lat = res.best.latency
        extra = {
            "query": {
                "bandwidth_bytes_per_s": lk.bandwidth_bytes_per_s,
                "rtt_s": lk.rtt_s,
                "symbols_per_s": symbol_rate,
                "snr_db": snr,
                "device": dev.name,
                "server": srv.name,
                "accuracy_floor": floor,
            },
            "predicted_latency_s": {
                "device": lat.device_s,
                "transmit": lat.transmit_s,
                "rtt": lat.rtt_s,
                "server": lat.server_s,
                "total": lat.total_s,
            },
            "device_profile": {"macs_per_s": dev.macs_per_s, "memory_bytes": dev.memory_bytes, "source": dev.source},
            "server_profile": {"macs_per_s": srv.macs_per_s, "source": srv.source},
        }
        uses = rec.measurement.channel_uses
        if uses is not None:  # analog JSCC: the device's output symbols go onto the channel as they are
            extra["analog"] = {"real_channel_uses": uses, "snr_db": analog_snr_db(rec)}
        images = data.test_x[:verify_images].numpy()  # uint8, normalised by the package as a device does
        from search.cli.progress import cli_progress

        with cli_progress():
            manifest, report = export_record(
                rec, out, images, data.input_shape, Normalization(data.mean, data.std), extra, overwrite=force
            )
        table.add_artifacts(rec.key, {"export/manifest": manifest})
    con = console()
    con.print(
        f"exported {rec.key[:12]} ({rec.spec.model} split {rec.spec.split}) for {fmt_rate(lk.bandwidth_bytes_per_s)}"
        f"{analog_note(symbol_rate, snr)} on {dev.name}: predicted {lat.total_s * 1e3:,.2f} ms, accuracy {best_acc:.4f}"
        + f" ({floor_label(floor)})"
    )
    bits = f"{report.bits_mean:,.0f} payload bits/image"
    if uses is not None:
        bits = f"analog: {uses:,} real channel symbols per image, sent as float32 over a digital link ({bits})"
    flips = ""
    if report.symbol_mismatches:
        flips = (
            f", {report.symbol_mismatches} of {report.symbols:,} symbols flipped at a rounding boundary "
            f"({report.flipped_images} images)"
        )
    con.print(
        f"verified on {report.images} test images from the package files alone: predictions identical, max |Δlogit| "
        f"{report.max_abs_logit_diff:.2g} on identical symbols{flips}; {bits}"
    )
    con.print("verified again in a fresh process without PyTorch (python -m coinference.runtime.verify)")
    con.print(f"manifest: {manifest}")
