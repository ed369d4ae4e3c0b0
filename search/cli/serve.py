"""``coinfer serve``: the edge server — the server side of every variant a device may ask for, over TCP (docs/WIRE.md).

The variants are the ``--package`` folders, or the split variants a lookup table's bandwidth table picks for
``--device`` at some rate (``storage.deploy.deploy_choices``), exported once under ``<run>/exports/<key[:16]>`` and
reused while their files match their manifest. Each package's server side runs in ``coinference.runtime``
(onnxruntime, no PyTorch) and is served by its variant id until SIGTERM or Ctrl-C, which let in-flight requests
finish and exit 0.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Annotated

import typer

from coinference.errors import ConfigError
from search.cli import app, validate
from search.cli.common import DataDirOpt
from search.cli.deploy_options import (
    DEFAULT_DEVICE,
    DEFAULT_SERVER,
    SERVER_PROFILE_HELP,
    DeviceProfileOpt,
    PackageOpt,
    address,
    check_host,
    check_package_mode,
    open_packages,
    table_choice,
    table_packages,
)
from search.cli.table_options import (
    DbOpt,
    FidelityOpt,
    MinAccOpt,
    NameOpt,
    RunsRootOpt,
    check_fidelity,
    check_min_accuracy,
    check_profiles,
    locate,
    profiles,
)
from search.runs import DEFAULT_RUNS_ROOT

if TYPE_CHECKING:
    from coinference.runtime.server import EdgeServer

DEFAULT_PORT = 8765
DEFAULT_MAX_PAYLOAD = 1 << 20
"""``coinference.runtime.wire.DEFAULT_MAX_PAYLOAD`` (a test keeps them equal; the wire module loads numpy)."""
MAX_PAYLOAD_LIMIT = (1 << 32) - 1
"""A frame's length field is 32 bits."""


def check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, so a taken port or an address that is not this machine's is said before
    any work (the server binds again, as asyncio does, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--port {port}: {host}:{port} is already in use (choose another port, or 0 for any free one)"
                ) from None
            raise ConfigError(f"cannot listen on --host {host} --port {port}: {e.strerror or e}") from None


@app.command()
def serve(
    package: PackageOpt = None,
    db: DbOpt = None,
    name: NameOpt = None,
    runs_root: RunsRootOpt = DEFAULT_RUNS_ROOT,
    device: DeviceProfileOpt = None,
    server: Annotated[
        str | None, typer.Option("--server", help=f"{SERVER_PROFILE_HELP} (default {DEFAULT_SERVER}).")
    ] = None,
    min_accuracy: MinAccOpt = None,
    fidelity: FidelityOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[str, typer.Option("--host", help="IP address to listen on (default: the loopback only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free one; the line printed names it).")] = (
        DEFAULT_PORT
    ),
    max_payload: Annotated[
        int, typer.Option("--max-payload", help="Largest request payload accepted, bytes (a longer one is refused).")
    ] = DEFAULT_MAX_PAYLOAD,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Seconds a connection may idle between requests before it is closed."),
    ] = 60.0,
) -> None:
    """Serve the server side of the variants a device may ask for: the --package folders, or every split variant the
    table's bandwidth table picks for --device at some rate (exported when missing). Prints one line per variant,
    then `serving N variants on HOST:PORT`; SIGTERM or Ctrl-C lets in-flight requests finish and exits 0."""
    table_mode = not check_package_mode(
        package, db=db, name=name, device=device, server=server, min_accuracy=min_accuracy, fidelity=fidelity,
        data_dir=data_dir,
    )  # fmt: skip
    if table_mode:
        check_profiles(device or DEFAULT_DEVICE, server or DEFAULT_SERVER)
        check_min_accuracy(min_accuracy)
        check_fidelity(fidelity)
        if data_dir is not None:
            validate.existing_dir("--data-dir", data_dir)
    check_host(host)
    validate.in_range("--port", port, 0, 65535)
    validate.in_range("--max-payload", max_payload, 1, MAX_PAYLOAD_LIMIT)
    validate.in_range("--timeout", timeout, 0.0, 86_400.0, low_open=True)
    check_listen(host, port)

    if package:
        deployed = open_packages(package, "server")
    else:
        ref = locate(db, name, runs_root)
        dev, srv = profiles(device or DEFAULT_DEVICE, server or DEFAULT_SERVER)
        from storage.query import floor_label

        choice = table_choice(ref, dev, srv, min_accuracy, fidelity)
        deployed = table_packages(ref, choice, data_dir, "server")
        print(
            f"the bandwidth table of {ref.url} on {dev.name} / {srv.name} ({floor_label(choice.floor)}) picks "
            f"{len({d.variant_id for d in deployed})} split variants",
            flush=True,
        )
    from coinference.runtime import ServerRunner
    from coinference.runtime.server import ServerConfig, run_server

    decoders: dict[str | bytes, ServerRunner] = {}
    for d in deployed:
        if d.variant_id not in decoders:
            decoders[d.variant_id] = ServerRunner(d.package)
        print(d.line(), flush=True)
    config = ServerConfig(
        host=host, port=port, max_payload=max_payload, idle_timeout_s=timeout, read_timeout_s=min(10.0, timeout)
    )

    def ready(edge: EdgeServer) -> None:
        print(f"serving {len(decoders)} variants on {address(host, edge.port)}", flush=True)

    run_server(decoders, config, on_ready=ready)
    print("edge server stopped", flush=True)
