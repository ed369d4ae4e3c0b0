"""``coinfer encode`` end to end on tiny-cnn + synthetic data, and its one-line errors."""

from __future__ import annotations

import json

import pytest

FAST = ("--model", "tiny-cnn", "--base-epochs", "4", "--steps", "8", "--batch-size", "32", "--test-limit", "32")


def test_encode_prints_accuracy_bits_and_macs(run_cli) -> None:
    code, out, err = run_cli("encode", "--split", "2", "--channels", "4", "--bits", "2", *FAST, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["codec"]["kind"] == "sq" and res["feature_shape"] == [8, 8, 8]
    assert res["bits_mean"] > 0 and res["bits_max"] >= res["bits_mean"] and res["header_bits"] == 80
    assert res["encoder_macs"] == 8 * 4 * 64 and 0 < res["encoder_macs_fraction"] < 0.1
    assert res["samples_coded"] == 32 and 0 <= res["accuracy"] <= 1


def test_encode_jscc_table(run_cli) -> None:
    code, out, err = run_cli("encode", "--split", "3", "--dim", "8", "--channel", "awgn", "--snr", "5", *FAST)
    assert code == 0, err
    assert "jscc-awgn" in out and "channel uses (real symbols) at 5" in out and "encoder MACs" in out


@pytest.mark.parametrize(
    "args,msg",
    [
        (("--split", "2", "--channels", "64"), "conv channels 64 larger than the feature's 8 channels"),
        (("--split", "3", "--dim", "999"), "fc dim 999 larger than the flattened feature"),
        (("--split", "2", "--bits", "0"), "bits must be in [1, 16], got 0"),
        (("--split", "3", "--dim", "4", "--channel", "awgn", "--snr", "99"), "SNR 99.0 dB out of range"),
        (("--split", "3", "--dim", "4", "--channel", "bsc", "--p", "0.9"), "p 0.9 out of range"),
        (("--split", "3", "--channel", "wifi"), "channel 'wifi' unknown"),
        (("--split", "9"), "split point '9' does not exist"),
        (("--split", "2", "--codebook", "per-pixel"), "unknown codebook 'per-pixel'; valid: channel, shared"),
    ],
)
def test_encode_bad_input_is_one_line_exit_2(run_cli, args, msg) -> None:
    code, _, err = run_cli("encode", *args, *FAST)
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1
