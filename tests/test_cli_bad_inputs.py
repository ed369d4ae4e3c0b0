"""Bad-input probe of every ``coinfer`` command, as a table.

Each case is ``(id, argv, expected)``. The contract checked for every case:

* exit code 2;
* stderr is exactly one non-empty line (after stripping) and it starts with ``coinfer: error:`` — Typer's own usage
  errors (a "Usage:" line, a "Try ... --help" line and a boxed message) count as a failure: we want one line for them
  too;
* that line names the bad value (``expected``: a substring, or a tuple of substrings that must all appear; a
  substring written ``"!text"`` must NOT appear — for misleading wording);
* no "Traceback", no terminal escape codes and no PyTorch advice to load a checkpoint unsafely ("weights_only",
  "can still be loaded") anywhere in stderr;
* nothing was written: each case runs in its own empty working directory (nested three levels inside a checked
  tree, so that a run name like ``../../escape`` still lands inside it), and both that tree and the case's fixture
  folder (database copies, checkpoint files) are byte-for-byte unchanged afterwards (``__pycache__`` excluded).

Cases run in-process (``run_cli``) under a SIGALRM guard; an exception escaping ``main()`` is reported as exit 1 with
its traceback on stderr, as the real process would. Cases that can hang (a local Ray with no CPUs) run in a
subprocess with a timeout; a timeout is a failure.

Placeholders in argv, filled per case: ``{fx}`` the case's fixture folder (outside the checked tree), ``{root}`` the
checked tree, ``{db}`` a lookup table of measured variants, ``{xdb}`` a table whose variant can be exported,
``{file}`` a regular file (so ``{file}/out`` cannot be created, even by root), ``{missing}`` a missing file,
``{text}``/``{zip}``/``{foreign}``/``{pickled}`` a text file, a zip that is no checkpoint, a state dict of another
model (resnet-digits) and a whole pickled module (which ``weights_only`` loading refuses), ``{nontable}`` an SQLite
file with someone else's table, ``{newer}`` a lookup table of a newer schema, ``{existing}`` an export folder that
already exists (inside the checked tree), ``{newpkg}`` an export package of a newer format and ``{badpkg}`` one
whose device and server files do not match their sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_export_cli import MEAS, SPEC, write_artifacts
from test_query_cli import populate

from coinference.latency import device_names
from coinference.zoo import build_model
from storage import open_table

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TOY = "search_toys:CountingEvaluator()"
CASE_TIMEOUT_S = 120
"""In-process guard: a case still running after this long is a hang (a failure), not a slow pass."""
SUBPROCESS_TIMEOUT_S = 60
DEVICES = ", ".join(device_names())
"""The device list the help of query/pareto/export shows; an unknown --device must list the same names."""

Expected = str | tuple[str, ...]
COMMANDS = ("profile", "base", "build", "prune", "encode", "search", "pareto", "query", "export", "show", "measure",
            "serve", "infer")  # fmt: skip
"""Every ``coinfer`` command: each has bad-input cases here and is listed by ``--help``."""

# ------------------------------------------------------------------------------------------- command prefixes
# Small budgets everywhere, so that a bad value that is NOT rejected costs seconds, not minutes, before the case fails.
PROFILE = "profile --model tiny-cnn"
BASE = "base --model tiny-cnn --epochs 0.05"
BUILD = "build --model tiny-cnn --split block1 --fidelity smoke"
PRUNE = "prune --model tiny-cnn --split block1 --steps 2 --test-limit 16"
ENCODE = "encode --model tiny-cnn --split block1 --steps 2 --base-epochs 0.05 --test-limit 16"
SEARCH = f"search --evaluator '{TOY}' --model tiny-cnn --fidelity smoke --trials 2"
PARETO = "pareto --db {db}"
QUERY = "query --db {db} -b 40KB/s"
EXPORT = "export --db {xdb} -b 40KB/s --out out"
SHOW = "show --db {db}"
MEASURE = "measure --db {xdb} --runs 10 --images 2"
SERVE = "serve --db {xdb} --port 0"
INFER = "infer --server 127.0.0.1:1 --package {badpkg}"
TABLE_INFER = "infer --server 127.0.0.1:1 --db {xdb}"

# The same checkpoint/data-dir problems for every command that loads a model or data.
MODEL_LOADERS = {"profile": PROFILE, "base": BASE, "build": BUILD, "prune": PRUNE, "encode": ENCODE}


def _loader_cases() -> list[tuple[str, str, Expected]]:
    cases: list[tuple[str, str, Expected]] = []
    for cmd, pre in MODEL_LOADERS.items():
        cases += [
            (f"{cmd}-model-unknown", f"{pre} --model vgg16", "vgg16"),
            (f"{cmd}-dataset-unknown", f"{pre} --dataset imagenet", "imagenet"),
            (f"{cmd}-data-dir-missing", f"{pre} --dataset cifar10 --data-dir {{fx}}/nodata", "nodata"),
            (f"{cmd}-weights-missing", f"{pre} --weights {{missing}}", "missing.pt"),
            (f"{cmd}-weights-text", f"{pre} --weights {{text}}", "weights.txt"),
            (f"{cmd}-weights-zip", f"{pre} --weights {{zip}}", "notackpt.zip"),
            (f"{cmd}-weights-foreign", f"{pre} --weights {{foreign}}", "foreign.pt"),
            (f"{cmd}-weights-pickled-module", f"{pre} --weights {{pickled}}", "pickled.pt"),
        ]
    return cases


BANDWIDTHS = [
    ("word", "fast"),
    ("zero", "0"),
    ("zero-unit", "0KB/s"),
    ("negative", "-5KB/s"),
    ("tiny", "1e-30"),
    ("inf", "inf"),
    ("overflow", "1e999"),
    ("minus-inf", "-inf"),
    ("nan", "nan"),
    ("unit-unknown", "10 parsecs"),
    ("empty", ""),
]


def _bandwidth_cases() -> list[tuple[str, str, Expected]]:
    cases: list[tuple[str, str, Expected]] = []
    for tag, bw in BANDWIDTHS:
        expected: Expected = (bw, "!must be > 0") if tag in ("inf", "overflow") else bw or "bandwidth"
        cases.append((f"query-bandwidth-{tag}", f"query --db {{db}} -b {shlex.quote(bw)}", expected))
    for tag, bw in (("word", "fast"), ("inf", "inf"), ("overflow", "1e999"), ("tiny", "1e-30"), ("negative", "-5KB/s")):
        expected = (bw, "!must be > 0") if tag in ("inf", "overflow") else bw
        cases.append((f"export-bandwidth-{tag}", f"export --db {{xdb}} --out out -b {shlex.quote(bw)}", expected))
    return cases


def _table_option_cases() -> list[tuple[str, str, Expected]]:
    """--device/--server/--rtt/--min-accuracy/--db/--name for pareto, query and export."""
    cases: list[tuple[str, str, Expected]] = []
    for cmd, pre in (("pareto", PARETO), ("query", QUERY), ("export", EXPORT)):
        db = "{xdb}" if cmd == "export" else "{db}"
        bare = pre.replace(f"--db {db}", "").replace("  ", " ").strip()
        cases += [
            (f"{cmd}-device-unknown", f"{pre} --device toaster", ("toaster", DEVICES)),
            (f"{cmd}-server-unknown", f"{pre} --server dgx", "dgx"),
            (f"{cmd}-rtt-nan", f"{pre} --rtt nan", "nan"),
            (f"{cmd}-rtt-negative", f"{pre} --rtt -1", "-1"),
            (f"{cmd}-rtt-inf", f"{pre} --rtt inf", "inf"),
            (f"{cmd}-min-accuracy-negative", f"{pre} --min-accuracy -1", "-1"),
            (f"{cmd}-min-accuracy-nan", f"{pre} --min-accuracy nan", "nan"),
            (f"{cmd}-min-accuracy-2", f"{pre} --min-accuracy 2", "2"),
            (f"{cmd}-min-accuracy-inf", f"{pre} --min-accuracy inf", "inf"),
            (f"{cmd}-db-missing-file", f"{bare} --db sqlite:///{{fx}}/nothere.db", "nothere.db"),
            (f"{cmd}-db-not-a-lookup-table", f"{bare} --db sqlite:///{{nontable}}", "nontable.db"),
            (f"{cmd}-db-not-sqlite", f"{bare} --db sqlite:///{{file}}", "file.txt"),
            (f"{cmd}-db-newer-schema", f"{bare} --db sqlite:///{{newer}}", "newer.db"),
            (f"{cmd}-db-malformed-url", f"{bare} --db ::nope::", "::nope::"),
            (f"{cmd}-db-unknown-dialect", f"{bare} --db nosuchdb://u@h/x", "nosuchdb"),
            (f"{cmd}-db-url-bad-port", f"{bare} --db postgresql://u@h:notaport/db", "notaport"),
            (f"{cmd}-name-escapes-up", f"{pre} --name ../../escape", "../../escape"),
            (f"{cmd}-name-parent", f"{pre} --name ..", ".."),
            (f"{cmd}-name-absolute", f"{pre} --name {{root}}/abs", "/abs"),
            (f"{cmd}-name-nested", f"{pre} --name a/b", "a/b"),
            (f"{cmd}-name-empty", f"{pre} --name ''", "--name"),
            (f"{cmd}-name-dot", f"{pre} --name .", "--name"),
            (f"{cmd}-fidelity-unknown", f"{pre} --fidelity medium", "medium"),
            (f"{cmd}-runs-root-under-file", f"{bare} --runs-root {{file}}/runs", ("no lookup table", "file.txt")),
            (f"{cmd}-symbol-rate-0", f"{pre} --symbol-rate 0", ("--symbol-rate", "0")),
            (f"{cmd}-symbol-rate-negative", f"{pre} --symbol-rate -5", "-5"),
            (f"{cmd}-symbol-rate-nan", f"{pre} --symbol-rate nan", "nan"),
            (f"{cmd}-symbol-rate-inf", f"{pre} --symbol-rate inf", "inf"),
            (f"{cmd}-symbol-rate-word", f"{pre} --symbol-rate fast", "fast"),
            (f"{cmd}-snr-without-symbol-rate", f"{pre} --snr 5", ("--snr", "--symbol-rate")),
            (f"{cmd}-snr-99", f"{pre} --symbol-rate 1e6 --snr 99", ("--snr", "99")),
            (f"{cmd}-snr-nan", f"{pre} --symbol-rate 1e6 --snr nan", ("--snr", "nan")),
        ]
    return cases


def _serve_cases() -> list[tuple[str, str, Expected]]:
    """``serve`` binds and blocks once its arguments pass: a bad value it failed to refuse would hang, so these run
    in a subprocess with a timeout."""
    return [
        ("serve-port-negative", f"{SERVE} --port -1", "-1"),
        ("serve-port-too-big", "serve --db {xdb} --port 70000", "70000"),
        ("serve-port-word", "serve --db {xdb} --port http", "http"),
        ("serve-host-not-an-address", f"{SERVE} --host example.invalid", "example.invalid"),
        ("serve-host-not-this-machine", f"{SERVE} --host 192.0.2.1", "192.0.2.1"),
        ("serve-max-payload-0", f"{SERVE} --max-payload 0", ("--max-payload", "0")),
        ("serve-max-payload-over-32-bits", f"{SERVE} --max-payload 5000000000", "5000000000"),
        ("serve-timeout-0", f"{SERVE} --timeout 0", ("--timeout", "0")),
        ("serve-timeout-negative", f"{SERVE} --timeout -1", "-1"),
        ("serve-timeout-nan", f"{SERVE} --timeout nan", "nan"),
        ("serve-package-missing", "serve --package {fx}/nopkg --port 0", "nopkg"),
        ("serve-package-a-file", "serve --package {file} --port 0", "file.txt"),
        ("serve-package-not-a-package", "serve --package {fx} --port 0", "no manifest.json"),
        ("serve-package-newer-format", "serve --package {newpkg} --port 0", ("newer", "upgrade coinference")),
        ("serve-package-altered", "serve --package {badpkg} --port 0", ("server/server.onnx", "sha256")),
        ("serve-package-with-db", "serve --package {badpkg} --db {xdb} --port 0", ("--package", "--db")),
        ("serve-package-with-device", "serve --package {badpkg} --device mcu --port 0", ("--package", "--device")),
        ("serve-device-unknown", f"{SERVE} --device toaster", ("toaster", DEVICES)),
        ("serve-server-unknown", f"{SERVE} --server dgx", "dgx"),
        ("serve-min-accuracy-2", f"{SERVE} --min-accuracy 2", "2"),
        ("serve-min-accuracy-unreached", f"{SERVE} --min-accuracy 0.99", ("0.99", "accuracy floor")),
        ("serve-fidelity-unknown", f"{SERVE} --fidelity medium", "medium"),
        ("serve-data-dir-missing", f"{SERVE} --data-dir {{fx}}/nodata", "nodata"),
        ("serve-db-missing-file", "serve --db sqlite:///{fx}/nothere.db --port 0", "nothere.db"),
        ("serve-db-newer-schema", "serve --db sqlite:///{newer} --port 0", "newer.db"),
        ("serve-name-escapes-up", "serve --name ../../escape --port 0", "../../escape"),
        ("serve-default-table-missing", "serve --name nosuchrun --port 0", "nosuchrun"),
    ]


def _infer_cases() -> list[tuple[str, str, Expected]]:
    """``infer``: every argument checked before the packages are read (so with {badpkg} an unrefused bad value
    shows as a sha256 error, not as the value), and the server reached before a table's packages are exported."""
    return [
        ("infer-server-missing", "infer --package {badpkg}", "--server"),
        ("infer-server-no-port", "infer --server localhost --package {badpkg}", "localhost"),
        ("infer-server-port-word", "infer --server 127.0.0.1:http --package {badpkg}", "127.0.0.1:http"),
        ("infer-server-port-0", "infer --server 127.0.0.1:0 --package {badpkg}", "127.0.0.1:0"),
        ("infer-server-port-too-big", "infer --server 127.0.0.1:70000 --package {badpkg}", "127.0.0.1:70000"),
        ("infer-server-no-host", "infer --server :8765 --package {badpkg}", ":8765"),
        ("infer-server-unreachable", f"{TABLE_INFER} --limit 2", ("127.0.0.1:1", "cannot reach")),
        ("infer-package-missing", "infer --server 127.0.0.1:1 --package {fx}/nopkg", "nopkg"),
        ("infer-package-a-file", "infer --server 127.0.0.1:1 --package {file}", "file.txt"),
        ("infer-package-not-a-package", "infer --server 127.0.0.1:1 --package {fx}", "no manifest.json"),
        ("infer-package-newer-format", "infer --server 127.0.0.1:1 --package {newpkg}", ("newer", "upgrade")),
        ("infer-package-altered", INFER, ("device/device.onnx", "sha256")),
        ("infer-package-with-db", f"{INFER} --db {{xdb}}", ("--package", "--db")),
        ("infer-package-with-server-profile", f"{INFER} --server-profile local", "--server-profile"),
        ("infer-limit-0", f"{INFER} --limit 0", ("--limit", "0")),
        ("infer-limit-negative", f"{INFER} --limit -3", "-3"),
        ("infer-bandwidth-word", f"{INFER} -b fast", "fast"),
        ("infer-bandwidth-0", f"{INFER} -b 0", ("bandwidth", "0")),
        ("infer-bandwidth-inf", f"{INFER} -b inf", ("inf", "!must be > 0")),
        ("infer-rtt-without-bandwidth", f"{INFER} --rtt 0.01", ("--rtt", "--bandwidth")),
        ("infer-rtt-negative", f"{INFER} -b 40KB/s --rtt -1", "-1"),
        ("infer-rtt-nan", f"{INFER} -b 40KB/s --rtt nan", "nan"),
        ("infer-wait-negative", f"{INFER} --wait -1", ("--wait", "-1")),
        ("infer-wait-nan", f"{INFER} --wait nan", "nan"),
        ("infer-adaptive-takes-no-value", f"{INFER} --adaptive yes", "yes"),
        ("infer-dataset-unknown", f"{INFER} --dataset imagenet", "imagenet"),
        ("infer-cifar10-without-data-dir", f"{INFER} --dataset cifar10", "--data-dir"),
        ("infer-data-dir-missing", f"{INFER} --dataset cifar10 --data-dir {{fx}}/nodata", "nodata"),
        ("infer-images-missing", f"{INFER} --images {{missing}}", "missing.pt"),
        ("infer-images-not-numpy", f"{INFER} --images {{text}}", "weights.txt"),
        ("infer-images-with-dataset", f"{INFER} --images {{text}} --dataset digits", ("--images", "--dataset")),
        ("infer-device-unknown", f"{TABLE_INFER} --device toaster", ("toaster", DEVICES)),
        ("infer-server-profile-unknown", f"{TABLE_INFER} --server-profile dgx", "dgx"),
        ("infer-min-accuracy-2", f"{TABLE_INFER} --min-accuracy 2", "2"),
        ("infer-min-accuracy-unreached", f"{TABLE_INFER} --min-accuracy 0.99", ("0.99", "accuracy floor")),
        ("infer-fidelity-unknown", f"{TABLE_INFER} --fidelity medium", "medium"),
        ("infer-db-missing-file", "infer --server 127.0.0.1:1 --db sqlite:///{fx}/nothere.db", "nothere.db"),
        ("infer-name-escapes-up", "infer --server 127.0.0.1:1 --name ../../escape", "../../escape"),
    ]


def _measure_cases() -> list[tuple[str, str, Expected]]:
    return [
        ("measure-runs-5", "measure --db {xdb} --runs 5", ("--runs", "5")),
        ("measure-images-0", f"{MEASURE} --images 0", ("--images", "0")),
        ("measure-key-unknown", f"{MEASURE} --key ffffffff", "ffffffff"),
        ("measure-fidelity-unknown", f"{MEASURE} --fidelity medium", "medium"),
        ("measure-data-dir-missing", f"{MEASURE} --data-dir {{fx}}/nodata", "nodata"),
        ("measure-db-missing-file", "measure --db sqlite:///{fx}/nothere.db", "nothere.db"),
        ("measure-db-not-a-lookup-table", "measure --db sqlite:///{nontable}", "nontable.db"),
        ("measure-name-escapes-up", "measure --name ../../escape", "../../escape"),
    ]


CASES: list[tuple[str, str, Expected]] = [
    # ----------------------------------------------------------------------------------------------- global
    ("cli-unknown-command", "frobnicate", "frobnicate"),
    ("cli-unknown-option", "profile --frobnicate", "--frobnicate"),
    ("cli-option-needs-value", "profile --model", "--model"),
    ("cli-int-not-a-number", "profile --png-sample many", "many"),
    # ------------------------------------------------------------------------------------------------ profile
    *_loader_cases(),
    ("profile-png-sample-0", f"{PROFILE} --png-sample 0", "0"),
    ("profile-png-sample-negative", f"{PROFILE} --png-sample -3", "-3"),
    ("profile-out-under-file", f"{PROFILE} --out {{file}}/out", "file.txt"),
    ("profile-out-under-dev-null", f"{PROFILE} --out /dev/null/out", "/dev/null"),
    # ------------------------------------------------------------------------------------------------ base
    ("base-cifar10-without-data-dir", f"{BASE} --dataset cifar10", "--data-dir"),
    ("base-epochs-0", f"{BASE} --epochs 0", "0"),
    ("base-epochs-negative", f"{BASE} --epochs -1", "-1"),
    ("base-epochs-nan", f"{BASE} --epochs nan", "nan"),
    ("base-epochs-inf", f"{BASE} --epochs inf", "inf"),
    ("base-lr-0", f"{BASE} --lr 0", "0"),
    ("base-lr-nan", f"{BASE} --lr nan", "nan"),
    ("base-lr-negative", f"{BASE} --lr -0.1", "-0.1"),
    ("base-batch-size-0", f"{BASE} --batch-size 0", "0"),
    ("base-batch-size-negative", f"{BASE} --batch-size -4", "-4"),
    ("base-subset-0", f"{BASE} --subset 0", "0"),
    ("base-subset-negative", f"{BASE} --subset -5", "-5"),
    ("base-margin-nan", f"{BASE} --margin nan", "nan"),
    ("base-margin-negative", f"{BASE} --margin -0.5", "-0.5"),
    ("base-margin-2", f"{BASE} --margin 2", "2"),
    ("base-out-under-file", f"{BASE} --out {{file}}/base.pt", "file.txt"),
    ("base-out-under-dev-null", f"{BASE} --out /dev/null/base.pt", "/dev/null"),
    # ------------------------------------------------------------------------------------------------ build
    ("build-split-unknown", f"{BUILD} --split block9", "block9"),
    ("build-split-index-out-of-range", f"{BUILD} --split 99", "99"),
    ("build-codec-unknown", f"{BUILD} --codec zstd --ratio 32", "zstd"),
    ("build-schedule-unknown", f"{BUILD} --schedule linear --ratio 32", "linear"),
    ("build-pruning-unknown", f"{BUILD} --pruning magic --ratio 32", "magic"),
    ("build-fidelity-unknown", f"{BUILD} --fidelity ultra --ratio 32", "ultra"),
    ("build-sparsity-1", f"{BUILD} --sparsity 1.0 --ratio 32", "1.0"),
    ("build-sparsity-negative", f"{BUILD} --sparsity -0.1 --ratio 32", "-0.1"),
    ("build-sparsity-nan", f"{BUILD} --sparsity nan --ratio 32", "nan"),
    ("build-activation-sparsity-1", f"{BUILD} --activation-sparsity 1.0 --ratio 32", "1.0"),
    ("build-ratio-0", f"{BUILD} --ratio 0", "0"),
    ("build-ratio-negative", f"{BUILD} --ratio -8", "-8"),
    ("build-ratio-nan", f"{BUILD} --ratio nan", "nan"),
    ("build-ratio-inf", f"{BUILD} --ratio inf", "inf"),
    ("build-ratio-8-bits-0", f"{BUILD} --ratio 8 --bits 0", "0"),
    ("build-bits-0", f"{BUILD} --channels 4 --bits 0", "0"),
    ("build-bits-99", f"{BUILD} --ratio 8 --bits 99", "99"),
    ("build-bits-negative", f"{BUILD} --channels 4 --bits -2", "-2"),
    ("build-channels-0", f"{BUILD} --channels 0", "0"),
    ("build-dim-0", f"{BUILD} --dim 0", "0"),
    ("build-stride-0", f"{BUILD} --channels 4 --stride 0", "0"),
    ("build-snr-nan", f"{BUILD} --codec jscc-awgn --channels 4 --snr nan", "nan"),
    ("build-p-0.7", f"{BUILD} --codec jscc-bsc --channels 4 --p 0.7", "0.7"),
    ("build-p-negative", f"{BUILD} --codec jscc-bsc --channels 4 --p -0.1", "-0.1"),
    ("build-cache-dir-under-file", f"{BUILD} --ratio 32 --cache-dir {{file}}/cache", "file.txt"),
    # ------------------------------------------------------------------------------------------------ prune
    ("prune-split-unknown", f"{PRUNE} --split block9", "block9"),
    ("prune-sparsity-1", f"{PRUNE} --sparsity 1.0", "1.0"),
    ("prune-sparsity-negative", f"{PRUNE} --sparsity -0.5", "-0.5"),
    ("prune-sparsity-nan", f"{PRUNE} --sparsity nan", "nan"),
    ("prune-activation-sparsity-1", f"{PRUNE} --activation-sparsity 1.0", "1.0"),
    ("prune-activation-sparsity-nan", f"{PRUNE} --activation-sparsity nan", "nan"),
    ("prune-method-unknown", f"{PRUNE} --method magic", "magic"),
    ("prune-schedule-unknown", f"{PRUNE} --schedule linear", "linear"),
    ("prune-iterations-0", f"{PRUNE} --iterations 0", "0"),
    ("prune-schedule-steps-not-numbers", f"{PRUNE} --schedule step --schedule-steps a,b", "a,b"),
    ("prune-schedule-steps-above-1", f"{PRUNE} --schedule step --schedule-steps 0.2,1.5", "1.5"),
    ("prune-residual-unknown", f"{PRUNE} --residual drop", "drop"),
    ("prune-distill-2", f"{PRUNE} --distill 2", "2"),
    ("prune-distill-negative", f"{PRUNE} --distill -1", "-1"),
    ("prune-distill-nan", f"{PRUNE} --distill nan", "nan"),
    ("prune-distill-with-two-step", f"{PRUNE} --method two-step --distill 0.5", "0.5"),
    ("prune-optimizer-unknown", f"{PRUNE} --optimizer rmsprop", "rmsprop"),
    ("prune-lr-nan", f"{PRUNE} --lr nan", "nan"),
    ("prune-lr-0", f"{PRUNE} --lr 0", "0"),
    ("prune-epochs-0", "prune --model tiny-cnn --split block1 --test-limit 16 --epochs 0", "0"),
    ("prune-steps-0", f"{PRUNE} --steps 0", "0"),
    ("prune-steps-negative", f"{PRUNE} --steps -1", "-1"),
    ("prune-batch-size-0", f"{PRUNE} --batch-size 0", "0"),
    ("prune-subset-0", f"{PRUNE} --subset 0", "0"),
    ("prune-subset-negative", f"{PRUNE} --subset -5", "-5"),
    ("prune-test-limit-0", f"{PRUNE} --test-limit 0", "0"),
    ("prune-test-limit-negative", f"{PRUNE} --test-limit -1", "-1"),
    ("prune-out-under-file", f"{PRUNE} --out {{file}}/pruned.pt", "file.txt"),
    # ------------------------------------------------------------------------------------------------ encode
    ("encode-split-unknown", f"{ENCODE} --split block9", "block9"),
    ("encode-kind-unknown", f"{ENCODE} --kind zstd", "zstd"),
    ("encode-channel-unknown", f"{ENCODE} --channel radio", "radio"),
    ("encode-codebook-unknown", f"{ENCODE} --codebook global", "global"),
    ("encode-erasure-needs-bottlenetpp", f"{ENCODE} --channel erasure", "erasure"),
    ("encode-jscc-without-channel", f"{ENCODE} --kind jscc-awgn", "jscc-awgn"),
    ("encode-bits-0", f"{ENCODE} --bits 0", "0"),
    ("encode-bits-99", f"{ENCODE} --bits 99", "99"),
    ("encode-channels-0", f"{ENCODE} --channels 0", "0"),
    ("encode-dim-negative", f"{ENCODE} --dim -1", "-1"),
    ("encode-stride-0", f"{ENCODE} --stride 0", "0"),
    ("encode-snr-nan", f"{ENCODE} --channel awgn --snr nan", "nan"),
    ("encode-snr-inf", f"{ENCODE} --channel awgn --snr inf", "inf"),
    ("encode-p-2", f"{ENCODE} --channel bsc --p 2", "2"),
    ("encode-p-negative", f"{ENCODE} --channel bsc --p -1", "-1"),
    ("encode-lr-nan", f"{ENCODE} --lr nan", "nan"),
    ("encode-epochs-0", "encode --model tiny-cnn --split block1 --base-epochs 0.05 --epochs 0", "0"),
    ("encode-steps-0", f"{ENCODE} --steps 0", "0"),
    ("encode-batch-size-0", f"{ENCODE} --batch-size 0", "0"),
    ("encode-subset-0", f"{ENCODE} --subset 0", "0"),
    ("encode-base-epochs-negative", f"{ENCODE} --base-epochs -1", "-1"),
    ("encode-test-limit-0", f"{ENCODE} --test-limit 0", "0"),
    # ------------------------------------------------------------------------------------------------ search
    ("search-searcher-unknown", f"{SEARCH} --searcher bayes", "bayes"),
    ("search-trials-0", f"{SEARCH} --trials 0", "0"),
    ("search-trials-negative", f"{SEARCH} --trials -3", "-3"),
    ("search-model-unknown", f"{SEARCH} --model vgg16", "vgg16"),
    ("search-dataset-unknown", f"{SEARCH} --dataset imagenet", "imagenet"),
    ("search-data-dir-missing", f"{SEARCH} --dataset cifar10 --data-dir {{fx}}/nodata", "nodata"),
    ("search-fidelity-unknown", f"{SEARCH} --fidelity ultra", "ultra"),
    ("search-sampler-unknown", f"{SEARCH} --sampler bogus", ("bogus", "valid: gp, nsga2, tpe")),
    ("search-accuracy-floor-2", f"{SEARCH} --accuracy-floor 2", "2"),
    ("search-accuracy-floor-negative", f"{SEARCH} --accuracy-floor -1", "-1"),
    ("search-accuracy-floor-nan", f"{SEARCH} --accuracy-floor nan", "nan"),
    ("search-device-unknown", f"{SEARCH} --device bogus", ("bogus", DEVICES)),
    ("search-weights-missing", f"{SEARCH} --weights {{missing}}", "missing.pt"),
    ("search-weights-text", f"{SEARCH} --weights {{text}}", "weights.txt"),
    ("search-weights-foreign", f"{SEARCH} --weights {{foreign}}", "foreign.pt"),
    ("search-ppo-timesteps-0", f"{SEARCH} --searcher ppo --ppo-timesteps 0", "0"),
    ("search-resume-without-run", f"{SEARCH} --resume --name fresh", "fresh"),
    ("search-evaluator-malformed", f"{SEARCH} --evaluator nomodule", "nomodule"),
    ("search-evaluator-missing", f"{SEARCH} --evaluator nosuchmodule:make", "nosuchmodule"),
    ("search-runs-root-under-file", f"{SEARCH} --runs-root {{file}}/runs", "file.txt"),
    ("search-db-under-file", f"{SEARCH} --db sqlite:///{{file}}/lookup.db", "file.txt"),
    # (a bare `--db ::nope::` is a file path: the search creates a new table there, so it is no bad input)
    ("search-db-unknown-dialect", f"{SEARCH} --db nosuchdb://u@h/x", "nosuchdb://u@h/x"),
    ("search-db-url-bad-port", f"{SEARCH} --db postgresql://u@h:notaport/db", "notaport"),
    ("search-db-not-a-lookup-table", f"{SEARCH} --db sqlite:///{{nontable}}", "nontable.db"),
    ("search-name-escapes-up", f"{SEARCH} --name ../../escape", "../../escape"),
    ("search-name-parent", f"{SEARCH} --name ../x", "../x"),
    ("search-name-absolute", f"{SEARCH} --name {{root}}/abs", "/abs"),
    ("search-name-nested", f"{SEARCH} --name a/b", "a/b"),
    ("search-name-empty", f"{SEARCH} --name ''", "--name"),
    ("search-name-dot", f"{SEARCH} --name .", "--name"),
    ("search-name-nul", f"{SEARCH} --name a\x00b", "--name"),
    ("search-codec-kinds-unknown", f"{SEARCH} --codec-kinds sq,zstd", ("zstd", "sq, vq, jscc-bsc, jscc-awgn")),
    ("search-codec-kinds-baseline", f"{SEARCH} --codec-kinds huffman", ("huffman", "jscc-awgn")),
    ("search-codec-kinds-empty", f"{SEARCH} --codec-kinds ''", "--codec-kinds"),
    ("search-codec-kinds-empty-item", f"{SEARCH} --codec-kinds sq,,vq", "sq,,vq"),
    ("search-codec-kinds-twice", f"{SEARCH} --codec-kinds sq,vq,sq", ("'sq' twice", "sq,vq,sq")),
    ("search-activation-sparsities-1", f"{SEARCH} --activation-sparsities 0,1", ("--activation-sparsities", "1")),
    ("search-activation-sparsities-negative", f"{SEARCH} --activation-sparsities 0,-0.5", "-0.5"),
    ("search-activation-sparsities-nan", f"{SEARCH} --activation-sparsities nan", "nan"),
    ("search-activation-sparsities-word", f"{SEARCH} --activation-sparsities 0,half", "half"),
    ("search-activation-sparsities-twice", f"{SEARCH} --activation-sparsities 0.5,0.50", ("0.5 twice", "0.5,0.50")),
    ("search-snr-out-of-range", f"{SEARCH} --codec-kinds jscc-awgn --snr 50", ("--snr", "50")),
    ("search-snr-nan", f"{SEARCH} --codec-kinds jscc-awgn --snr nan", ("--snr", "nan")),
    ("search-snr-without-jscc-awgn", f"{SEARCH} --codec-kinds sq,jscc-bsc --snr 5", ("--snr", "jscc-awgn")),
    ("search-flip-p-0.5", f"{SEARCH} --codec-kinds jscc-bsc --flip-p 0.5", ("--flip-p", "0.5")),
    ("search-flip-p-negative", f"{SEARCH} --codec-kinds jscc-bsc --flip-p -0.1", "-0.1"),
    ("search-flip-p-without-jscc-bsc", f"{SEARCH} --flip-p 0.01", ("--flip-p", "jscc-bsc")),
    # ------------------------------------------------------------------------------------------------ pareto
    *_table_option_cases(),
    ("pareto-out-under-file", f"{PARETO} --out {{file}}/front.png", "file.txt"),
    # ------------------------------------------------------------------------------------------------ query
    ("query-without-bandwidth", "query --db {db}", "--bandwidth"),
    *_bandwidth_cases(),
    ("query-top-negative", f"{QUERY} --top -1", "-1"),
    ("query-top-not-a-number", f"{QUERY} --top x", "'x'"),
    ("query-table-per-decade-0", "query --db {db} --table --per-decade 0", "0"),
    ("query-table-per-decade-negative", "query --db {db} --table --per-decade -2", "-2"),
    ("query-table-bandwidth-bad", "query --db {db} --table -b fast", "fast"),
    ("query-default-table-missing", "query -b 40KB/s --name nosuchrun", "nosuchrun"),
    ("query-key-with-table", "query --db {db} --table --key", ("--key", "--table")),
    ("query-key-with-json", f"{QUERY} --key --json", ("--key", "--json")),
    ("query-bandwidth-per-hour", "query --db {db} -b '40 KB/h'", "40 KB/h"),
    ("query-bandwidth-no-rate", "query --db {db} -b 40kB", "40kB"),
    ("pareto-out-not-an-image", f"{PARETO} --out front.txt", "front.txt"),
    ("search-retry-failed-takes-no-value", f"{SEARCH} --retry-failed yes", "yes"),
    # ------------------------------------------------------------------------------------------------ export
    ("export-out-exists-without-force", "export --db {xdb} -b 40KB/s --out {existing}", ("--force", "!overwrite")),
    ("export-out-under-file", "export --db {xdb} -b 40KB/s --out {file}/export", "file.txt"),
    ("export-out-under-dev-null", "export --db {xdb} -b 40KB/s --out /dev/null/export", "/dev/null"),
    ("export-verify-images-0", f"{EXPORT} --verify-images 0", "0"),
    ("export-verify-images-negative", f"{EXPORT} --verify-images -1", "-1"),
    ("export-without-out", "export --db {xdb} -b 40KB/s", "--out"),
    ("export-data-dir-missing", f"{EXPORT} --data-dir {{fx}}/nodata", "nodata"),
    # ------------------------------------------------------------------------------------------------ show
    ("show-key-unknown", f"{SHOW} deadbeef00", "deadbeef00"),
    ("show-key-too-short", f"{SHOW} 3d6", "3d6"),
    ("show-key-not-hex", f"{SHOW} zzzz", "zzzz"),
    ("show-key-empty", f"{SHOW} ''", "key"),
    ("show-key-missing", SHOW, "variant"),
    ("show-db-missing-file", "show 3d64 --db sqlite:///{fx}/nothere.db", "nothere.db"),
    ("show-db-not-a-lookup-table", "show 3d64 --db sqlite:///{nontable}", "nontable.db"),
    ("show-db-malformed-url", "show 3d64 --db ::nope::", "::nope::"),
    ("show-default-table-missing", "show 3d64 --name nosuchrun", "nosuchrun"),
    # ------------------------------------------------------------------------------------------ measure, infer
    *_measure_cases(),
    *_infer_cases(),
]

SUBPROCESS_CASES: list[tuple[str, str, Expected]] = [
    ("search-ray-num-cpus-0", f"{SEARCH} --searcher ray --num-cpus 0", "0"),
    ("search-ray-num-cpus-negative", f"{SEARCH} --searcher ray --num-cpus -2", "-2"),
    *_serve_cases(),
]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def fixture_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files every case gets a copy of (made once per worker, outside any checked tree)."""
    d = tmp_path_factory.mktemp("bad_input_fixtures")
    (d / "weights.txt").write_text("this is not a checkpoint\n")
    with zipfile.ZipFile(d / "notackpt.zip", "w") as z:
        z.writestr("hello.txt", "a zip archive, but no PyTorch checkpoint")
    torch.save(build_model("resnet-digits").state_dict(), d / "foreign.pt")
    torch.save(build_model("tiny-cnn"), d / "pickled.pt")  # a whole pickled module: weights_only refuses it
    (d / "file.txt").write_text("a regular file: nothing can be created under it\n")
    con = sqlite3.connect(d / "nontable.db")
    con.execute("CREATE TABLE people (name TEXT)")
    con.commit()
    con.close()
    populate(f"sqlite:///{d / 'lookup.db'}")
    open_table(f"sqlite:///{d / 'newer.db'}").close()
    con = sqlite3.connect(d / "newer.db")
    con.execute("UPDATE schema_info SET schema_version = schema_version + 1")
    con.commit()
    con.close()
    arts = write_artifacts(d / "artifacts")
    with open_table(f"sqlite:///{d / 'export.db'}") as t:
        t.record_ok(SPEC, MEAS, "r1", arts)
    header = {"format": "coinference.package", "format_version": 2}
    (d / "newpkg").mkdir()
    (d / "newpkg" / "manifest.json").write_text(json.dumps({**header, "format_version": 99, "files": {}}))
    files = {
        "device/device.onnx": {"sha256": "0" * 64, "bytes": 4},
        "server/server.onnx": {"sha256": "0" * 64, "bytes": 4},
    }
    for rel in files:
        (d / "badpkg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / "badpkg" / rel).write_bytes(b"onnx")
    (d / "badpkg" / "manifest.json").write_text(json.dumps({**header, "files": files}))
    return {p.name: p for p in d.iterdir() if p.is_file() or p.name in ("newpkg", "badpkg")}


def tree(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path under ``root`` (``__pycache__`` excluded) → kind and content hash."""
    out: dict[str, tuple[str, ...]] = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


class Workspace:
    """A case's checked tree (``root``), its working directory three levels down, and its fixture folder."""

    def __init__(self, tmp_path: Path, files: dict[str, Path]) -> None:
        self.root = tmp_path / "w"
        self.cwd = self.root / "a" / "b" / "c"
        self.cwd.mkdir(parents=True)
        self.fx = tmp_path / "fx"
        self.fx.mkdir()
        for name, src in files.items():
            if src.is_dir():
                shutil.copytree(src, self.fx / name)
            else:
                shutil.copy(src, self.fx / name)
        existing = self.root / "existing-export"
        existing.mkdir()
        (existing / "manifest.json").write_text('{"note": "an earlier export"}\n')
        self.values = {
            "{fx}": str(self.fx),
            "{root}": str(self.root),
            "{db}": f"sqlite:///{self.fx / 'lookup.db'}",
            "{xdb}": f"sqlite:///{self.fx / 'export.db'}",
            "{file}": str(self.fx / "file.txt"),
            "{missing}": str(self.fx / "missing.pt"),
            "{text}": str(self.fx / "weights.txt"),
            "{zip}": str(self.fx / "notackpt.zip"),
            "{foreign}": str(self.fx / "foreign.pt"),
            "{pickled}": str(self.fx / "pickled.pt"),
            "{nontable}": str(self.fx / "nontable.db"),
            "{newer}": str(self.fx / "newer.db"),
            "{existing}": str(existing),
            "{newpkg}": str(self.fx / "newpkg"),
            "{badpkg}": str(self.fx / "badpkg"),
        }
        self.before = self.snapshot()

    def argv(self, command: str) -> list[str]:
        args = shlex.split(command)
        for key, value in self.values.items():
            args = [a.replace(key, value) for a in args]
        return args

    def snapshot(self) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
        return tree(self.root), tree(self.fx)


@pytest.fixture
def workspace(tmp_path: Path, fixture_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    for var in ("COINFER_DB", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    ws = Workspace(tmp_path, fixture_files)
    monkeypatch.chdir(ws.cwd)
    yield ws


# ------------------------------------------------------------------------------------------- checks
_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?"


def _mentions(line: str, value: str) -> bool:
    """``value`` appears in ``line``; a number may be written in any form (``-1`` as ``-1.0``) but must stand as a
    token of its own (``0`` is not found in ``10``, ``0.05`` or ``pytest-0``)."""
    if re.fullmatch(_NUMBER, value, re.IGNORECASE):
        tokens = re.findall(rf"(?<![\w.+-]){_NUMBER}(?![\w.])", line, re.IGNORECASE)
        return any(float(t) == float(value) for t in tokens)
    return value in line


def error_problems(code: int, err: str, expected: Expected) -> list[str]:
    """What breaks the contract: exit 2, one stderr line ``coinfer: error: …`` naming the bad value, no traceback."""
    problems = []
    if "Traceback" in err:
        problems.append("traceback")
    if "weights_only" in err or "can still be loaded" in err:
        problems.append("repeats torch's advice to load the file unsafely")
    if "\x1b[" in err:
        problems.append("terminal escape codes")
    if code != 2:
        problems.append(f"exit {code}, not 2")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, not 1")
    line = lines[0] if lines else ""
    if not line.startswith("coinfer: error:"):
        problems.append("first line does not start with 'coinfer: error:'")
    for part in (expected,) if isinstance(expected, str) else expected:
        if part.startswith("!"):
            if part[1:] in line:
                problems.append(f"misleading text {part[1:]!r}")
        elif not _mentions(line, part):
            problems.append(f"{part!r} not named")
    return problems


def written_problems(ws: Workspace) -> list[str]:
    """Anything added, removed or changed in the checked tree or the fixture folder."""
    problems = []
    after = ws.snapshot()
    for label, old, new in (("tree", ws.before[0], after[0]), ("fixtures", ws.before[1], after[1])):
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
        for verb, paths in (("wrote", added), ("removed", removed), ("changed", changed)):
            if paths:
                problems.append(f"{verb} in {label}: {', '.join(paths[:4])}" + (" …" if len(paths) > 4 else ""))
    return problems


def summary(code: int, err: str) -> str:
    """``exit N | first stderr line`` (and, for a traceback, its last line: the exception)."""
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else "(no stderr)"
    last = f" … {lines[-1]}" if lines and lines[0].startswith("Traceback") else ""
    return f"exit {code} | {first}{last}"


def check(code: int, err: str, expected: Expected, ws: Workspace | None, what: str) -> None:
    problems = error_problems(code, err, expected) + (written_problems(ws) if ws is not None else [])
    assert not problems, f"{summary(code, err)} || {'; '.join(problems)} || {what}\n--- stderr ---\n{err[-3000:]}"


def run_in_process(
    run_cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> tuple[int, str]:
    """(exit code, stderr) of ``coinfer ARGV`` in-process; an escaping exception is exit 1 plus its traceback."""

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {CASE_TIMEOUT_S} s (a hang)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        code, _, err = run_cli(*argv)
    except TimeoutError:
        raise
    except Exception:
        _, err = capsys.readouterr()
        code, err = 1, err + traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err


def run_subprocess(argv: list[str], cwd: Path, timeout: float = SUBPROCESS_TIMEOUT_S) -> tuple[int, str, str]:
    """``python -m search ARGV`` in its own process group; on a timeout the group is killed and the test fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    for var in ("COINFER_DB", "RAY_ADDRESS"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"coinfer {shlex.join(argv)} did not finish within {timeout} s (a hang); stderr:\n{err[-2000:]}")
    return proc.returncode, out, err


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("command", "expected"), [pytest.param(c, e, id=i) for i, c, e in CASES])
def test_bad_input(
    command: str, expected: Expected, workspace: Workspace, run_cli: Callable[..., tuple[int, str, str]], capsys
) -> None:
    argv = workspace.argv(command)
    code, err = run_in_process(run_cli, capsys, argv)
    check(code, err, expected, workspace, f"coinfer {shlex.join(argv)}")


@pytest.mark.parametrize(("command", "expected"), [pytest.param(c, e, id=i) for i, c, e in SUBPROCESS_CASES])
def test_bad_input_in_subprocess(command: str, expected: Expected, workspace: Workspace) -> None:
    argv = workspace.argv(command)
    code, _, err = run_subprocess(argv, workspace.cwd)
    check(code, err, expected, workspace, f"coinfer {shlex.join(argv)}")


def test_case_ids_are_unique_and_cover_every_command() -> None:
    ids = [i for i, _, _ in CASES + SUBPROCESS_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 150
    commands = {shlex.split(c)[0] for _, c, _ in CASES + SUBPROCESS_CASES}
    expected = set(COMMANDS)
    assert expected <= commands


def test_harness_passes_a_good_command(
    workspace: Workspace, run_cli: Callable[..., tuple[int, str, str]], capsys
) -> None:
    """Control: a valid read-only query exits 0 and leaves both trees unchanged (the checks are not too strict)."""
    code, err = run_in_process(run_cli, capsys, workspace.argv(QUERY))
    assert code == 0, err
    assert written_problems(workspace) == []


def test_help_and_an_argument_error_in_a_subprocess(tmp_path: Path) -> None:
    code, out, err = run_subprocess(["--help"], tmp_path)
    assert code == 0, err
    for cmd in COMMANDS:
        assert cmd in out
    code, _, err = run_subprocess(["profile", "--model", "vgg16"], tmp_path)
    check(code, err, "vgg16", None, "coinfer profile --model vgg16 (subprocess)")
    assert list(tmp_path.iterdir()) == []
