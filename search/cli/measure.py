"""``coinfer measure``: time variants' parts on this machine in the runtime they deploy with, into the table.

Each split variant (all measured ones, or those named by ``--key``) is exported once to ``<run>/exports/<key>``
(verified, reused while its files match their manifest), then its device side (uint8 image → payload bytes) and
server side (bytes → logits) are timed in ``coinference.runtime`` (onnxruntime, one thread, batch 1); the medians
are stored as the variant's ``local`` timings, which ``query/pareto/export --device local --server local`` rank by.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from coinference.errors import ConfigError
from search.cli import app, validate
from search.cli.common import DataDirOpt, console
from search.cli.table_options import DbOpt, FidelityOpt, NameOpt, RunsRootOpt, check_fidelity, locate, of_fidelity
from search.runs import DEFAULT_RUNS_ROOT

KeyOpt = Annotated[
    list[str] | None, typer.Option("--key", help="Variant key prefix to measure (repeatable; default: every one).")
]


def export_inputs(record: Any, data_dir: Path | None, n: int) -> tuple[Any, tuple[int, int, int], Any]:
    """(uint8 test images (n, C, H, W), input shape, normalisation) to export and check ``record`` with — the
    normalisation the variant's base model was trained with."""
    from coinference.data import load_dataset
    from coinference.export import Normalization
    from coinference.zoo import MODELS

    data = load_dataset(record.spec.dataset, data_dir)
    info = MODELS.get(record.spec.model)
    if record.spec.weights_sha256 is not None and info.checkpoint_normalization is not None:
        data = data.with_normalization(*info.checkpoint_normalization)
    return data.test_x[:n].numpy(), data.input_shape, Normalization(data.mean, data.std)


@app.command()
def measure(
    db: DbOpt = None,
    name: NameOpt = None,
    runs_root: RunsRootOpt = DEFAULT_RUNS_ROOT,
    key: KeyOpt = None,
    fidelity: FidelityOpt = None,
    data_dir: DataDirOpt = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed images per part (≥ 10); medians are stored.")] = 200,
    images: Annotated[int, typer.Option("--images", help="Test images to export-check and time with (≥ 1).")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print the timings as JSON.")] = False,
) -> None:
    """Time split variants' device and server sides on this machine (exported packages in onnxruntime, one thread,
    batch 1) and store them as the `local` profile's timings."""
    check_fidelity(fidelity)
    validate.at_least("--runs", runs, 10)
    validate.at_least("--images", images, 1)
    if data_dir is not None:
        validate.existing_dir("--data-dir", data_dir)
    ref = locate(db, name, runs_root)
    from search.cli.progress import cli_progress
    from search.cli.table_options import read_table
    from storage.deploy import ensure_export, measure_local

    done: list[dict[str, Any]] = []
    with read_table(ref) as table:
        records = [r for r in of_fidelity(table.variants(status="ok"), fidelity) if not r.spec.whole_model]
        if key:
            records = [table.find(k) for k in key]
            for r in records:
                if r.spec.whole_model:
                    raise ConfigError(f"--key {r.key[:12]} runs the whole model: only split variants are timed")
                if r.measurement is None:
                    raise ConfigError(f"--key {r.key[:12]} has status {r.status!r}: only measured variants are timed")
        if not records:
            raise ConfigError(f"{ref.url} has no measured split variant to time")
        con = console()
        inputs: dict[tuple[str, str | None], Any] = {}
        with cli_progress():
            for rec in records:
                data_key = (rec.spec.dataset, rec.spec.weights_sha256)
                if data_key not in inputs:
                    inputs[data_key] = export_inputs(rec, data_dir, images)
                imgs, shape, norm = inputs[data_key]
                package, written = ensure_export(rec, ref.home, imgs, shape, norm)
                if written:
                    table.add_artifacts(rec.key, {"export/manifest": package / "manifest.json"})
                got = measure_local(table, rec, package, imgs, runs)
                dev, srv = got.timing("local", "device"), got.timing("local", "server")
                assert dev is not None and srv is not None and rec.measurement is not None
                row = {"key": rec.key, "package": str(package), "device_s": dev.seconds, "server_s": srv.seconds}
                row |= {"device_macs": rec.measurement.device_macs, "server_macs": rec.measurement.server_macs}
                done.append(row)
                if not as_json:
                    con.print(
                        f"{rec.key[:12]} {rec.spec.split:>10} {rec.spec.codec.label:<18} device "
                        f"{dev.seconds * 1e3:8.3f} ms ({rec.measurement.device_macs:,} MACs)  server "
                        f"{srv.seconds * 1e3:8.3f} ms  {'exported' if written else 'package reused'}"
                    )
    if as_json:
        typer.echo(json.dumps({"profile": "local", "runs": runs, "variants": done}, indent=2))
    else:
        con.print(f"timed {len(done)} variants ({runs} images per part); rank by them: --device local --server local")
