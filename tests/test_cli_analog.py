"""The paper's options from the command line: ``coinfer search --codec-kinds/--activation-sparsities/--snr/--flip-p``
and analog JSCC in ``coinfer query``/``pareto``/``export`` given ``--symbol-rate`` (and ``--snr``)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from coinference.variant import CodecSpec, Measurement, VariantSpec
from storage import open_table

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EVALUATOR = "test_cli_analog:toy_measure"
MB = 1 << 20


def toy_measure(spec: VariantSpec) -> Measurement:
    """Instant and deterministic; analog variants report their channel uses (as the builder does)."""
    c = spec.codec
    symbols = c.dim or (c.channels or 8) * (8 // c.stride) ** 2
    uses = symbols if c.kind == "jscc-awgn" else None
    bits = float(symbols * c.bits)
    return Measurement(0.9 - 0.1 * spec.activation_sparsity, 10_000, 10_000, bits, int(bits), channel_uses=uses)


# ------------------------------------------------------------------------------------------------ search
@pytest.mark.slow
def test_search_tries_the_kinds_and_activation_sparsities_asked_for(run_cli, tmp_path: Path) -> None:
    base = ("search", "--searcher", "random", "--model", "tiny-cnn", "--evaluator", EVALUATOR,
            "--runs-root", str(tmp_path), "--name", "k")  # fmt: skip
    space = ("--codec-kinds", "jscc-awgn,sq", "--activation-sparsities", "0,0.5", "--snr", "5")
    code, _, err = run_cli(*base, "--trials", "16", *space)
    assert code == 0, err
    ident = json.loads((tmp_path / "k" / "config.json").read_text())["identity"]["space"]
    assert "activation_sparsity 2 × codec_kind 2" in ident and "codec sq,jscc-awgn (jscc-awgn at 5 dB)" in ident
    assert "activation sparsity 0,0.5" in ident
    ledger = [json.loads(line)["key"] for line in (tmp_path / "k" / "evaluations.jsonl").read_text().splitlines()]
    with open_table(f"sqlite:///{tmp_path / 'k' / 'lookup.db'}", create=False) as t:
        specs = [r.spec for r in t.variants(status="ok") if r.key in ledger]  # the searched ones
    assert len(specs) == 16
    assert {s.codec.kind for s in specs} == {"sq", "jscc-awgn"}
    assert {s.activation_sparsity for s in specs} == {0.0, 0.5}
    assert {s.codec.snr_db for s in specs if s.codec.kind == "jscc-awgn"} == {5.0}
    assert {s.codec.bits for s in specs if s.codec.kind == "jscc-awgn"} == {1}
    # the run name keeps its space: other kinds, another SNR or other activation sparsities are refused
    for changed in (
        ("--codec-kinds", "sq", "--activation-sparsities", "0,0.5"),
        ("--codec-kinds", "sq,jscc-awgn", "--activation-sparsities", "0,0.5", "--snr", "10"),
    ):
        code, _, err = run_cli(*base, "--trials", "2", "--resume", *changed)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "was made with space" in lines[0], (changed, err)
    code, _, err = run_cli(*base, "--trials", "17", "--resume", *space)  # the same space goes on
    assert code == 0, err


# ------------------------------------------------------------------------------------------------ tables
DIGITAL = VariantSpec("tiny-cnn", "synthetic", "block1", codec=CodecSpec("sq", channels=2), seed=1)
AWGN_5DB = VariantSpec("tiny-cnn", "synthetic", "block1", codec=CodecSpec("jscc-awgn", channels=2, bits=1, snr_db=5.0))


def populate(url: str) -> None:
    """One digital variant (40,000 bits) and one analog variant (200 real symbols measured at 5 dB)."""
    with open_table(url) as t:
        t.record_ok(DIGITAL, Measurement(0.90, 100_000, 1_000, 40_000.0, 40_000, device_param_bytes=MB), "r1")
        t.record_ok(
            AWGN_5DB, Measurement(0.90, 100_000, 1_000, 200.0, 200, channel_uses=200, device_param_bytes=MB), "r1"
        )


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'lookup.db'}"
    populate(url)
    return url


def _best(run_cli, *args: str) -> str:
    code, out, err = run_cli("query", *args, "--json")
    assert code == 0, err
    return json.loads(out)["ranked"][0]["key"]


def test_query_takes_analog_variants_given_a_symbol_rate(run_cli, db: str) -> None:
    q = ("--db", db, "-b", "40KB/s")
    assert _best(run_cli, *q) == DIGITAL.key  # no symbol rate: the analog variant is left out
    assert _best(run_cli, *q, "--symbol-rate", "1e5") == AWGN_5DB.key  # 2 ms of symbols vs 125 ms of bits
    assert _best(run_cli, *q, "--symbol-rate", "1e5", "--snr", "5") == AWGN_5DB.key
    assert _best(run_cli, *q, "--symbol-rate", "1e5", "--snr", "0") == DIGITAL.key  # measured at 5 dB > 0 dB
    assert _best(run_cli, *q, "--symbol-rate", "100") == DIGITAL.key  # 2 s of symbols
    code, out, err = run_cli("query", *q, "--symbol-rate", "1e5", "--snr", "5", "--json")
    doc = json.loads(out)
    assert doc["symbols_per_s"] == 1e5 and doc["snr_db"] == 5.0 and doc["ranked"][0]["transmit_s"] == 200 / 1e5
    code, out, err = run_cli("query", *q, "--symbol-rate", "1e5", "--snr", "5")
    assert code == 0 and "100.00 k symbols/s at 5 dB" in out and f"best: {AWGN_5DB.key}" in out, err
    code, out, err = run_cli("query", "--db", db, "--table", "--json", "--symbol-rate", "1e5")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert rows[0]["key"] == AWGN_5DB.key and rows[-1]["key"] == DIGITAL.key


def test_query_says_what_removed_every_variant(run_cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'analog.db'}"
    with open_table(url) as t:
        t.record_ok(AWGN_5DB, Measurement(0.9, 100_000, 1_000, 200.0, 200, channel_uses=200), "r1")
    code, _, err = run_cli("query", "--db", url, "-b", "40KB/s")
    assert code == 2 and "1 analog-JSCC variants need a link symbol rate" in err
    code, _, err = run_cli("query", "--db", url, "-b", "40KB/s", "--symbol-rate", "1e5", "--snr", "-2")
    assert code == 2 and "higher SNR than the link's -2 dB (lowest 5 dB)" in err and len(err.strip().splitlines()) == 1


def test_pareto_chooses_analog_variants_given_a_symbol_rate(run_cli, db: str, tmp_path: Path) -> None:
    args = ("pareto", "--db", db, "--json", "--min-accuracy", "0")
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert {c["key"] for c in json.loads(out)["choices"]} == {DIGITAL.key}
    code, out, err = run_cli(*args, "--symbol-rate", "1e5")
    doc = json.loads(out)
    assert code == 0 and AWGN_5DB.key in {c["key"] for c in doc["choices"]} and doc["symbols_per_s"] == 1e5
    code, out, err = run_cli(*args, "--symbol-rate", "1e5", "--snr", "0")  # cannot run on a 0 dB link: off the front
    doc = json.loads(out)
    assert code == 0 and [f["key"] for f in doc["front"]] == [DIGITAL.key]
    assert {c["key"] for c in doc["choices"]} == {DIGITAL.key}


@pytest.mark.slow
def test_export_of_an_analog_variant_sends_float32_channel_symbols(run_cli, tmp_path: Path) -> None:
    """Builder checkpoints of a jscc-awgn variant (an untrained codec: export reproduces whatever it computes):
    exported and verified through ONNX; the device's output are the real channel symbols, sent over a digital link
    as raw float32 (4 bytes each)."""
    import torch
    from torch import nn

    from coinference.build import save_variant
    from coinference.codec import CodecConfig
    from coinference.codec.base import build_codec
    from coinference.data import load_dataset
    from coinference.prune import PruneConfig, prune_device
    from coinference.prune.activation import Expand
    from coinference.zoo import build_model

    torch.manual_seed(0)
    pruned = prune_device(
        build_model("tiny-cnn").eval(), "block1", load_dataset("synthetic"), PruneConfig(0.0, train=None)
    )
    cfg = CodecConfig("jscc-awgn", channels=2)
    trained = types.SimpleNamespace(
        config=cfg, feature_shape=pruned.feature_shape, codec=build_codec(cfg, pruned.feature_shape).eval(),
        tail=nn.Sequential(Expand(pruned.kept_channels, pruned.feature_shape[0]), pruned.tail),
    )  # fmt: skip
    arts = save_variant(types.SimpleNamespace(spec=AWGN_5DB, pruned=pruned, codec=trained), tmp_path / "v")
    url = f"sqlite:///{tmp_path / 'lookup.db'}"
    with open_table(url) as t:
        m = Measurement(0.9, 100_000, 1_000, 128.0, 128, channel_uses=128, device_param_bytes=MB)
        t.record_ok(AWGN_5DB, m, "r1", {"device": arts["device"], "codec": arts["codec"]})
    out = tmp_path / "out"
    args = ("export", "--db", url, "-b", "40KB/s", "--out", str(out), "--verify-images", "4")
    code, _, err = run_cli(*args)
    assert code == 2 and "need a link symbol rate" in err
    code, stdout, err = run_cli(*args, "--symbol-rate", "1e5", "--snr", "8")
    assert code == 0, err
    assert "128 real channel symbols per image, sent as float32" in stdout and "4,096 payload bits" in stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["codec"]["kind"] == "raw" and man["codec"]["analog"] and man["codec"]["source"] == "jscc-awgn"
    assert man["codec"]["params"]["dtype"] == "float32" and man["device"]["output_dtype"] == "float32"
    assert man["extra"]["query"]["symbols_per_s"] == 1e5 and man["extra"]["query"]["snr_db"] == 8.0
    assert man["extra"]["analog"] == {"real_channel_uses": 128, "snr_db": 5.0}
    assert man["extra"]["predicted_latency_s"]["transmit"] == pytest.approx(128 / 1e5)
