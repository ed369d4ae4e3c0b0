"""Analog JSCC in the query (hand-built records, no database): it competes by channel uses ÷ the link's symbol rate,
is dropped without one, and with a link SNR only variants measured at that SNR or lower qualify."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coinference.latency import DeviceProfile, Link, ServerProfile
from coinference.variant import CodecSpec, Measurement, VariantSpec
from storage import NoFeasibleVariantError, VariantRecord
from storage.query import analog_snr_db, bandwidth_table, candidates, query

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DEV = DeviceProfile("dev", macs_per_s=1e6, memory_bytes=1_000)
SRV = ServerProfile("srv", macs_per_s=1e9)


def rec(seed: int, codec: CodecSpec, bits: float, uses: int | None = None, acc: float = 0.9) -> VariantRecord:
    spec = VariantSpec("tiny-cnn", "synthetic", "block1", codec=codec, seed=seed)
    m = Measurement(acc, 100_000, 0, bits, int(bits), channel_uses=uses, device_param_bytes=100)
    return VariantRecord(spec.key, spec, "ok", None, m, "r", T0, T0, {})


# Same device compute (0.1 s). Digital: 8,000 bits = 1,000 bytes. Analog: 200 real symbols.
DIGITAL = rec(1, CodecSpec("sq", channels=2), 8_000)
AWGN_5DB = rec(2, CodecSpec("jscc-awgn", channels=2, bits=1, snr_db=5.0), 200, uses=200)
AWGN_DEFAULT = rec(3, CodecSpec("jscc-awgn", channels=1, bits=1), 100, uses=100)  # measured at the default 10 dB


def test_analog_snr_is_the_spec_snr_else_the_codec_default() -> None:
    from coinference.codec import CodecConfig

    assert analog_snr_db(AWGN_5DB) == 5.0
    assert analog_snr_db(AWGN_DEFAULT) == CodecConfig().snr_db == 10.0
    assert analog_snr_db(DIGITAL) is None


def test_with_a_symbol_rate_the_analog_variant_wins_when_it_is_faster() -> None:
    link = Link(1e3, symbols_per_s=1e4)  # digital: 1 s on the link; analog 5 dB: 0.02 s
    res = query([DIGITAL, AWGN_5DB], link, DEV, SRV)
    assert res.best.record.key == AWGN_5DB.key and res.feasible == 2
    assert res.best.latency.transmit_s == pytest.approx(200 / 1e4)
    slow_symbols = Link(1e6, symbols_per_s=10.0)  # digital: 1 ms; analog: 20 s
    assert query([DIGITAL, AWGN_5DB], slow_symbols, DEV, SRV).best.record.key == DIGITAL.key


def test_without_a_symbol_rate_analog_variants_are_dropped() -> None:
    res = query([DIGITAL, AWGN_5DB, AWGN_DEFAULT], Link(1e3), DEV, SRV)
    assert res.best.record.key == DIGITAL.key and res.feasible == 1 and res.measured == 3
    with pytest.raises(NoFeasibleVariantError, match="2 analog-JSCC variants need a link symbol rate"):
        query([AWGN_5DB, AWGN_DEFAULT], Link(1e3), DEV, SRV)


def test_a_link_snr_keeps_only_variants_measured_at_that_snr_or_lower() -> None:
    link = Link(1e3, symbols_per_s=1e4)
    everything = [DIGITAL, AWGN_5DB, AWGN_DEFAULT]
    assert query(everything, link, DEV, SRV).best.record.key == AWGN_DEFAULT.key  # fewest symbols, no SNR check
    assert query(everything, link, DEV, SRV, snr_db=10.0).best.record.key == AWGN_DEFAULT.key  # 10 dB ≤ 10 dB
    at_7 = [c.record.key for c in candidates(everything, link, DEV, SRV, snr_db=7.0)]
    assert at_7 == [AWGN_5DB.key, DIGITAL.key]  # the 10 dB variant is not valid on a 7 dB link
    at_0 = query(everything, link, DEV, SRV, snr_db=0.0)
    assert at_0.best.record.key == DIGITAL.key and at_0.feasible == 1  # digital variants never need an SNR
    with pytest.raises(NoFeasibleVariantError) as e:
        query([AWGN_5DB, AWGN_DEFAULT], link, DEV, SRV, snr_db=0.0)
    msg = str(e.value)
    assert "2 analog-JSCC variants were measured at a higher SNR than the link's 0 dB (lowest 5 dB)" in msg
    assert "\n" not in msg


def test_the_no_feasible_message_counts_every_constraint() -> None:
    weak = rec(4, CodecSpec("sq", channels=1), 8, acc=0.1)
    big = VariantRecord(
        "b" * 64, DIGITAL.spec.with_(seed=9), "ok", None,
        Measurement(0.95, 10, 0, 8.0, 8, device_param_bytes=5_000), "r", T0, T0, {},
    )  # fmt: skip
    with pytest.raises(NoFeasibleVariantError) as e:
        query([weak, big, AWGN_5DB], Link(1e3, symbols_per_s=1e4), DEV, SRV, accuracy_floor=0.5, snr_db=-3.0)
    msg = str(e.value)
    assert "among 3 measured" in msg and "1 below the accuracy floor" in msg and "1 need more memory" in msg
    assert "1 analog-JSCC variants were measured at a higher SNR than the link's -3 dB (lowest 5 dB)" in msg


def test_bandwidth_table_takes_the_symbol_rate_and_snr() -> None:
    recs = [DIGITAL, AWGN_5DB]
    assert {r.key for r in bandwidth_table(recs, DEV, SRV)} == {DIGITAL.key}
    rows = bandwidth_table(recs, DEV, SRV, symbols_per_s=1e4)
    assert rows[0].key == AWGN_5DB.key and rows[0].bits == 200  # at 1 KB/s the analog variant is faster
    assert rows[-1].key == DIGITAL.key  # at 100 MB/s 1,000 bytes take 10 µs, 200 symbols 20 ms
    assert {r.key for r in bandwidth_table(recs, DEV, SRV, symbols_per_s=1e4, snr_db=0.0)} == {DIGITAL.key}
