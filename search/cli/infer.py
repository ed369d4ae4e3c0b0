"""``coinfer infer``: the device side against an edge server (``coinfer serve``).

Per image: the variant's device part and byte coder (``coinference.runtime.DeviceRunner``), the request over TCP
(``EdgeClient``; its send path shaped to ``--bandwidth`` + ``--rtt`` by a token bucket when given), the server's
scores; each request's device, coder, transfer and server times and its bytes on the wire are recorded
(``DeviceClient``). With several variants and the rates where each is the table's pick, an adaptive client follows
the bandwidth table with its measured throughput (``ThroughputEstimator`` + ``VariantSwitcher``).

With ``--package`` and ``--images`` nothing here imports PyTorch (a test runs it where ``import torch`` fails); a
data set's test split (``--dataset``) and a table's missing packages are read and exported with PyTorch.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coinference.errors import ConfigError, DataError
from coinference.latency import fmt_rate, parse_bandwidth
from search.cli import app, names, validate
from search.cli.common import DataDirOpt, check_data_dir
from search.cli.deploy_options import (
    DEFAULT_DEVICE,
    DEFAULT_SERVER,
    SERVER_PROFILE_HELP,
    Deployed,
    DeviceProfileOpt,
    PackageOpt,
    TableChoice,
    address,
    check_package_mode,
    open_packages,
    package_dataset,
    parse_address,
    switch_rows,
    table_choice,
    table_packages,
)
from search.cli.table_options import (
    BANDWIDTH_HELP,
    DbOpt,
    FidelityOpt,
    MinAccOpt,
    NameOpt,
    RunsRootOpt,
    check_fidelity,
    check_min_accuracy,
    check_profiles,
    check_rtt,
    locate,
    profiles,
)
from search.runs import DEFAULT_RUNS_ROOT

if TYPE_CHECKING:
    import numpy as np

    from coinference.runtime.client import EdgeClient, RequestRecord

WAIT_LIMIT_S = 3600.0


# ------------------------------------------------------------------------------------------------ images
def read_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images (N, C, H, W) and their int labels (or None) from a ``.npy`` (images) or ``.npz`` (``images``,
    optional ``labels``) file, read without pickles.

    Raises:
        DataError: unreadable, no ``images``, not uint8 (N, C, H, W), or labels that do not match.
    """
    import numpy as np

    try:
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                images, labels = loaded, None
            else:
                with loaded:
                    if "images" not in loaded.files:
                        raise DataError(f"--images {str(path)!r} holds no 'images' array (has {loaded.files})")
                    images = loaded["images"]
                    labels = loaded["labels"] if "labels" in loaded.files else None
    except OSError as e:
        raise DataError(f"--images {str(path)!r} cannot be read: {e.strerror or e}") from None
    except (ValueError, EOFError):  # numpy's own text advises loading pickles: not repeated
        raise DataError(
            f"--images {str(path)!r} is not a .npy or .npz file of arrays (pickles are never read)"
        ) from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise DataError(
            f"--images {str(path)!r} must hold uint8 images (N, C, H, W), got {images.dtype} {images.shape}"
        )
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu"):
        raise DataError(
            f"--images {str(path)!r}: labels must be {len(images)} integers, got {labels.dtype} {labels.shape}"
        )
    return images, labels


def dataset_images(dataset: str, data_dir: Path | None, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` test images of ``dataset`` (uint8 (N, C, H, W), as stored) and their labels."""
    from coinference.data import load_dataset

    data = load_dataset(dataset, data_dir)
    return data.test_x[:limit].numpy(), data.test_y[:limit].numpy()


# ------------------------------------------------------------------------------------------------ requests
def connect(client: EdgeClient, wait_s: float) -> None:
    """Open the client's connection, retrying for up to ``wait_s`` seconds (a server that is still starting).

    Raises:
        ServerUnreachableError: no connection within ``wait_s``.
    """
    from coinference.runtime.client import ServerUnreachableError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.connect()
            return
        except ServerUnreachableError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def run_requests(
    client: EdgeClient,
    packages: dict[str, Path],
    images: np.ndarray,
    labels: np.ndarray | None,
    variant: str,
    rows: Sequence[tuple[float, str]] | None = None,
    rtt_s: float = 0.0,
) -> list[RequestRecord]:
    """Send every image through the device side of ``packages`` (variant id → package folder) and ``client``.

    Args:
        variant: the variant of the first request (and of every one without ``rows``).
        rows: ``VariantSwitcher`` rows (lowest rate, variant id): switch variants with the measured throughput.
        rtt_s: the link's round-trip time, taken off each transfer's time before estimating the rate.
    """
    from coinference.runtime import DeviceRunner
    from coinference.runtime.adaptive import ThroughputEstimator, VariantSwitcher
    from coinference.runtime.client import DeviceClient

    switcher = VariantSwitcher(rows, initial=variant) if rows is not None else None
    used = {k for _, k in rows} if rows is not None else {variant}
    encoders = {vid: DeviceRunner(packages[vid]) for vid in packages if vid in used}
    device = DeviceClient(
        client,
        encoders,
        variant=None if switcher else variant,
        switcher=switcher,
        estimator=ThroughputEstimator(rtt_s=rtt_s),
    )
    return device.run(images, labels)


def _predicted(
    used: Sequence[str],
    deployed: Sequence[Deployed],
    choice: TableChoice | None,
    rate: float | None,
    rtt_s: float,
) -> tuple[dict[str, float], str | None, dict[str, Any] | None]:
    """(predicted ms per used variant, where from, for which link): the table's latency at --bandwidth, else what
    the packages' manifests recorded (``extra.predicted_latency_s``, at the rate they were exported for)."""
    if choice is not None and rate is not None:
        from coinference.latency import Link
        from storage.query import candidates

        link = Link(rate, rtt_s=rtt_s)
        ranked = candidates(choice.records, link, choice.device, choice.server, choice.floor)
        total = {c.record.key[:16]: c.total_s for c in ranked}
        at: dict[str, Any] = {"bandwidth_bytes_per_s": rate, "rtt_s": rtt_s, "device": choice.device.name}
        at |= {"server": choice.server.name, "accuracy_floor": choice.floor}
        return {v: total[v] * 1e3 for v in used if v in total}, "query", at
    got: dict[str, float] = {}
    where: dict[str, Any] | None = None
    for d in deployed:
        pkg = d.opened
        if d.variant_id in used and d.variant_id not in got and pkg is not None and pkg.predicted_latency_s is not None:
            got[d.variant_id] = pkg.predicted_latency_s * 1e3
            where = where or dict(pkg.extra.get("query") or {})
    return got, ("manifest" if got else None), where


@app.command()
def infer(
    server: Annotated[str, typer.Option("--server", help="The edge server (coinfer serve), HOST:PORT.")],
    package: PackageOpt = None,
    db: DbOpt = None,
    name: NameOpt = None,
    runs_root: RunsRootOpt = DEFAULT_RUNS_ROOT,
    device: DeviceProfileOpt = None,
    server_profile: Annotated[
        str | None,
        typer.Option(
            "--server-profile", help=f"{SERVER_PROFILE_HELP} (default {DEFAULT_SERVER}; as `serve --server`)."
        ),
    ] = None,
    min_accuracy: MinAccOpt = None,
    fidelity: FidelityOpt = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            help=f"Data set whose test images to send: {', '.join(names.DATASETS)} (default: the variants').",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Send these uint8 images (N, C, H, W) instead: a .npy file, or a .npz with 'images' and optional "
            "'labels' (needs no PyTorch).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Images to send (≥ 1), the first ones.")] = 100,
    bandwidth: Annotated[
        str | None,
        typer.Option("--bandwidth", "-b", help=f"Shape the send path to this rate (token bucket). {BANDWIDTH_HELP}"),
    ] = None,
    rtt: Annotated[
        float | None, typer.Option("--rtt", help="Seconds added to every request on the shaped link (≥ 0).")
    ] = None,
    adaptive: Annotated[
        bool | None,
        typer.Option(
            "--adaptive/--no-adaptive",
            help="Switch variants as the bandwidth table says for the measured throughput (default: when there are "
            "several variants and their rates are known).",
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option("--wait", help="Seconds to keep trying to reach a server that is still starting (0: try once)."),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Classify test images through the device side of the --package folders (or of the variants the table's
    bandwidth table picks for --device, as `serve` does) and the edge server at --server; prints accuracy, latency
    and bytes per request, and what the table predicted."""
    host, port = parse_address("--server", server)
    package_mode = check_package_mode(
        package, db=db, name=name, device=device, server_profile=server_profile, min_accuracy=min_accuracy,
        fidelity=fidelity,
    )  # fmt: skip
    if not package_mode:
        check_profiles(device or DEFAULT_DEVICE, server_profile or DEFAULT_SERVER)
        check_min_accuracy(min_accuracy)
        check_fidelity(fidelity)
    if images is not None:
        if dataset is not None or data_dir is not None:
            raise ConfigError("--images sends the images of a file: not with --dataset or --data-dir")
        validate.readable_file("--images", images)
    if dataset is not None:
        names.check("data set", dataset, names.DATASETS)
        check_data_dir(dataset, data_dir)
    if data_dir is not None:
        validate.existing_dir("--data-dir", data_dir)
    validate.at_least("--limit", limit, 1)
    rate = parse_bandwidth(bandwidth) if bandwidth is not None else None
    if rtt is not None:
        check_rtt(rtt)
        if rate is None:
            raise ConfigError(f"--rtt {rtt:g} is part of a shaped link: give its --bandwidth too")
    rtt_s = rtt or 0.0
    validate.in_range("--wait", wait, 0.0, WAIT_LIMIT_S)
    x, y = read_images(images) if images is not None else (None, None)
    if x is not None:
        x, y = x[:limit], None if y is None else y[:limit]

    choice = None
    if package_mode:
        assert package is not None
        deployed = open_packages(package, "device")
        default_dataset = package_dataset(deployed)
    else:
        ref = locate(db, name, runs_root)
        dev, srv = profiles(device or DEFAULT_DEVICE, server_profile or DEFAULT_SERVER)
        choice = table_choice(ref, dev, srv, min_accuracy, fidelity)
        datasets = {r.spec.dataset for r in choice.chosen}
        default_dataset = datasets.pop() if len(datasets) == 1 else None
        deployed = [
            Deployed(Path(), r.key[:16], r.spec.split, r.spec.codec.label, interval=iv)
            for r, iv in zip(choice.chosen, choice.intervals, strict=True)
        ]  # their packages once the server answers (a server of this table may still be exporting them)
    if x is None:
        dataset = dataset or default_dataset
        if dataset is None:
            raise ConfigError("the variants name no single data set: give --dataset or --images")
        check_data_dir(dataset, data_dir)

    rows = switch_rows(deployed)
    variants = list(dict.fromkeys(d.variant_id for d in deployed))
    if adaptive and rows is None:
        raise ConfigError(
            "--adaptive needs the rate at which each variant is the pick: use --db/--name, or packages from "
            "`coinfer export` (which records its rate)"
        )
    use_adaptive = (rows is not None and len(variants) > 1) if adaptive is None else adaptive
    if rows is not None:
        from coinference.runtime.adaptive import VariantSwitcher

        first = VariantSwitcher(rows).lookup(rate) if rate is not None else rows[0][1]
    else:
        first = variants[0]

    from coinference.runtime.client import EdgeClient
    from coinference.runtime.shaping import LinkShape, Shaper

    shaper = Shaper(LinkShape(rate, rtt_s=rtt_s)) if rate is not None else None
    client = EdgeClient(host, port, shaper=shaper)
    try:
        connect(client, wait)
        if choice is not None:
            deployed = table_packages(ref, choice, data_dir, "device")
        if x is None:
            assert dataset is not None
            x, y = dataset_images(dataset, data_dir, limit)
        for d in deployed:
            assert d.opened is not None
            if tuple(d.opened.input_shape) != tuple(x.shape[1:]):
                src = f"--images {str(images)!r}" if images is not None else f"data set {dataset!r}"
                raise ConfigError(
                    f"{src} has images of shape {tuple(x.shape[1:])}; variant {d.variant_id} takes "
                    f"{tuple(d.opened.input_shape)}"
                )
        packages = {d.variant_id: d.package for d in deployed}
        records = run_requests(client, packages, x, y, first, rows if use_adaptive else None, rtt_s)
    finally:
        client.close()

    from coinference.runtime.client import summarize

    summary = summarize(records)
    counts = Counter(r.variant_id for r in records)
    predicted, predicted_from, predicted_for = _predicted(list(counts), deployed, choice, rate, rtt_s)
    main_variant = counts.most_common(1)[0][0]
    doc: dict[str, Any] = {
        "server": address(host, port),
        "packages": "table" if choice is not None else "package",
        "table": None if choice is None else ref.url,
        "images": str(images) if images is not None else f"{dataset} test split",
        **summary.to_dict(),
        "adaptive": use_adaptive,
        "shaped": None if rate is None else {"bandwidth_bytes_per_s": rate, "rtt_s": rtt_s},
        "predicted_ms": predicted.get(main_variant),
        "predicted_from": predicted_from,
        "predicted_for": predicted_for,
        "predicted_ms_by_variant": predicted,
        "predictions": [r.predicted_class for r in records],
        "request_variants": [r.variant_id for r in records],
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    _print_summary(doc, deployed, choice)


def _print_summary(doc: dict[str, Any], deployed: Sequence[Deployed], choice: TableChoice | None) -> None:
    from rich.table import Table

    from search.cli.common import console

    con = console()
    link = doc["shaped"]
    how = "link not shaped" if link is None else f"shaped to {fmt_rate(link['bandwidth_bytes_per_s'])}"
    if link is not None and link["rtt_s"]:
        how += f" + {link['rtt_s'] * 1e3:g} ms RTT"
    src = "--package" if choice is None else f"{doc['table']} on {choice.device.name} / {choice.server.name}"
    title = f"{doc['count']} images ({doc['images']}) via {doc['server']}, {how}; variants from {src}"
    typer.echo(title + (", adaptive" if doc["adaptive"] else ""))
    t = Table()
    for col in ("variant", "split", "codec", "used for", "requests", "predicted ms"):
        t.add_column(col, justify="right")
    shown = set()
    for d in deployed:
        if d.variant_id in shown:
            continue
        shown.add(d.variant_id)
        pred = doc["predicted_ms_by_variant"].get(d.variant_id)
        n = doc["variants"].get(d.variant_id, 0)
        t.add_row(d.variant_id, d.split, d.codec, d.rates, str(n), "" if pred is None else f"{pred:,.3f}")
    con.print(t)  # the table alone through rich: plain lines are echoed as they are (no markup, no wrapping)
    acc = doc["accuracy"]
    typer.echo(f"{f'accuracy {acc:.4f}' if acc is not None else 'no labels'}; variant switches {doc['switches']}")
    typer.echo(
        f"latency ms: median {doc['latency_ms_median']:,.3f}, p90 {doc['latency_ms_p90']:,.3f} (medians: device "
        f"{doc['device_ms_median']:,.3f}, coder {doc['encode_ms_median']:,.3f}, transfer "
        f"{doc['transfer_ms_median']:,.3f}, server {doc['server_ms_median']:,.3f})"
    )
    typer.echo(
        f"bytes per request on the wire: {doc['bytes_mean']:,.1f} (payload {doc['payload_bytes_mean']:,.1f} + 32 "
        f"header); reply {doc['reply_bytes_mean']:,.1f}"
    )
    pred, where = doc["predicted_ms"], doc["predicted_for"] or {}
    if pred is None:
        typer.echo("predicted: none (give --bandwidth with a table, or packages from `coinfer export`)")
    else:
        at = where.get("bandwidth_bytes_per_s")
        on = f"{where.get('device')} / {where.get('server')}"
        rate = f" at {fmt_rate(at)}" if at is not None and not math.isnan(at) else ""
        origin = "the table's query" if doc["predicted_from"] == "query" else "the package manifest"
        typer.echo(f"predicted {pred:,.3f} ms for the variant used most ({origin}{rate} on {on})")
