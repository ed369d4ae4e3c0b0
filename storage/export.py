"""Export of a variant from the lookup table: load the parts the builder recorded as artifacts and hand them to
:func:`coinference.export.export_variant`, then verify the package from its files alone — in this process
(:func:`coinference.export.verify_export` against the loaded parts) and in a fresh one without PyTorch
(:func:`coinference.runtime.verify.verify_in_subprocess`, against the reference outputs the package carries).

Artifacts a variant needs (recorded with ``LookupTable.record_ok(..., artifacts=...)``), in one of two forms:

1. **TorchScript parts** (any builder):
   ``device``: TorchScript file (``torch.jit.save``) of the device part — pruned backbone + encoder + quantizer:
   normalised image (N, C, H, W) float32 → symbols (N, ...);
   ``server``: TorchScript file of the server part — decoder + rest of the model: symbols → logits;
   ``codec`` (optional; absent = the feature is sent as float32): ``.npz`` (``numpy.savez``, no pickled objects)
   holding ``kind`` (a 0-d string array naming a runtime coder, :data:`coinference.runtime.BYTE_CODERS`: ``raw``,
   ``categorical``, ``huffman``, ``sign-bits``) and its params and tables.
2. **coinference builder checkpoints** (what ``coinference.build.save_variant`` writes; no ``server`` artifact):
   ``device``: the pruned model (``coinference.pruned/1``), ``codec``: the trained codec and server tail
   (``coinference.codec/1``). The device part is ``head → codec.to_symbols``, the server part
   ``codec.from_symbols → expand → tail``, and the bytes path the codec's runtime coder
   (:meth:`coinference.codec.FeatureCodec.byte_coder`; for analog JSCC the real channel symbols as float32).

Each file is checked against the sha256 recorded in the table before it is loaded.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from coinference.export import (
    BYTE_CODECS,
    CHECK_IMAGES,
    ByteCodec,
    Normalization,
    VerifyReport,
    export_variant,
    load_torchscript,
    split_parts,
    verify_export,
)
from coinference.variant import ON_DEVICE
from storage.errors import StorageError
from storage.records import VariantRecord

REQUIRED_ARTIFACTS = ("device", "server")
CODEC_ARTIFACT = "codec"


def _artifact(record: VariantRecord, name: str) -> Path:
    art = record.artifacts.get(name)
    if art is None:
        have = ", ".join(sorted(record.artifacts)) or "none"
        raise StorageError(
            f"variant {record.key[:12]} has no {name!r} artifact to export (recorded: {have}); "
            f"the builder must record the {name} part as a TorchScript file"
        )
    problem = art.check()
    if problem:
        raise StorageError(f"variant {record.key[:12]}: {problem}")
    return art.path


def load_parts(record: VariantRecord) -> tuple[Any, Any, ByteCodec | None]:
    """(device module, server module, byte codec or None) from a variant's artifacts (either form above).

    Raises:
        StorageError: a missing, altered or unreadable artifact (the message names it).
    """
    if "server" not in record.artifacts and {"device", CODEC_ARTIFACT} <= set(record.artifacts):
        return _builder_parts(record)
    parts = []
    for name in REQUIRED_ARTIFACTS:
        path = _artifact(record, name)
        try:
            parts.append(load_torchscript(path))
        except (RuntimeError, ValueError) as e:
            raise StorageError(f"artifact {name!r} ({path}) is not a TorchScript file: {e}") from None
    codec = None
    if CODEC_ARTIFACT in record.artifacts:
        path = _artifact(record, CODEC_ARTIFACT)
        try:
            with np.load(path, allow_pickle=False) as z:
                tables = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise StorageError(f"artifact 'codec' ({path}) is not a numpy .npz file: {e}") from None
        if "kind" not in tables:
            raise StorageError(f"artifact 'codec' ({path}) has no 'kind' entry")
        kind = str(tables.pop("kind"))
        codec = BYTE_CODECS.get(kind)(tables)
    return parts[0], parts[1], codec


def export_record(
    record: VariantRecord,
    out: str | Path,
    images: Any,
    input_shape: tuple[int, int, int],
    normalization: Normalization | None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    fresh_process: bool = True,
) -> tuple[Path, VerifyReport]:
    """Export ``record`` to ``out`` and verify it on ``images`` (uint8 (N, C, H, W), as the data sets store them;
    the package carries the first :data:`~coinference.export.CHECK_IMAGES` with their torch outputs).

    The package is written and verified in a folder beside ``out`` and moved into ``out`` only once verified: a
    failed export (a part onnxruntime cannot run, logits that differ) leaves ``out`` as it was. Verification
    rebuilds everything from the package's files (:func:`~coinference.export.verify_export`); with
    ``fresh_process`` the package is also checked against its carried reference in a new Python process in which
    ``import torch`` fails.

    Returns:
        (manifest path, verification report).

    Raises:
        ExportError: ``out`` holds another export and not ``overwrite``, or the export or its verification failed.
    """
    from coinference.errors import CoinferenceError
    from coinference.export import ExportError

    if record.measurement is None:
        raise StorageError(f"variant {record.key[:12]} has status {record.status!r}: nothing measured to export")
    if record.spec.whole_model:
        where = "on the device" if record.spec.split == ON_DEVICE else "on the server, the device sending PNG images"
        raise ExportError(
            f"variant {record.key[:12]} ({record.spec.split}) runs the whole {record.spec.model} {where}: there is no "
            "split package to export; deploy the base checkpoint itself"
        )
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"export folder {out} is not empty (overwrite=True, or --force, replaces it)")
    device, server, codec = load_parts(record)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # folders a failure must not leave
    try:
        export_variant(
            stage,
            device,
            server,
            input_shape,
            codec=codec,
            normalization=normalization,
            spec={"key": record.key, **record.spec.to_dict()},
            measurement=record.measurement.to_dict(),
            extra=extra,
            check_images=images[:CHECK_IMAGES],
        )
        report = verify_export(stage, images, reference=(device, server), codec=codec)
        if fresh_process:
            from coinference.progress import phase
            from coinference.runtime.verify import verify_in_subprocess

            with phase("verify export in a fresh process without PyTorch"):
                verify_in_subprocess(stage)
    except Exception as e:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        first = " ".join(str(e).split()).replace(str(stage), str(out))[:300] or type(e).__name__
        if isinstance(e, CoinferenceError):
            raise type(e)(first) from None
        raise ExportError(f"variant {record.key[:12]} cannot be exported: {type(e).__name__}: {first}") from None
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(stage.iterdir()):  # the verified package replaces the parts of an older one
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(entry, target)
    stage.rmdir()
    return out / "manifest.json", report


# ------------------------------------------------------------------------------------------- builder checkpoints
def _builder_parts(record: VariantRecord) -> tuple[nn.Module, nn.Module, ByteCodec]:
    from coinference.build import load_codec
    from coinference.errors import CoinferenceError
    from coinference.prune import load_pruned
    from coinference.prune.activation import Expand

    device_path, codec_path = _artifact(record, "device"), _artifact(record, CODEC_ARTIFACT)
    try:
        pruned = load_pruned(device_path)
        codec, tail_state = load_codec(codec_path)
        tail = nn.Sequential(Expand(pruned.kept_channels, pruned.feature_shape[0]), copy.deepcopy(pruned.tail))
        tail.load_state_dict(tail_state)
    except (CoinferenceError, RuntimeError, KeyError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(
            f"variant {record.key[:12]}: cannot rebuild it from its builder checkpoints: {msg}"
        ) from None
    return split_parts(pruned.head, codec, tail)
