from __future__ import annotations

import json
from pathlib import Path

import torch

from coinference.zoo import build_model


def test_help_lists_commands(run_cli) -> None:
    code, out, _ = run_cli("--help")
    assert code == 0 and "profile" in out


def test_profile_default_writes_plot(run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("profile", "--out", str(tmp_path), "--png-sample", "50")
    assert code == 0, err
    assert "resnet-digits" in out and "layer2.1" in out
    png = tmp_path / "resnet-digits.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_json(run_cli) -> None:
    code, out, _ = run_cli("profile", "--model", "tiny-cnn", "--json", "--png-sample", "10")
    assert code == 0
    d = json.loads(out)
    assert d["model"] == "tiny-cnn" and len(d["splits"]) == 3 and d["input_bits_png"] > 0


def test_bad_inputs_exit_2_with_one_line(run_cli, tmp_path: Path) -> None:
    cases = [
        (("profile", "--model", "vgg16"), "unknown model 'vgg16'; valid:"),
        (("profile", "--model", "resnet20", "--dataset", "imagenet"), "unknown data set 'imagenet'; valid:"),
        (
            ("profile", "--model", "resnet20", "--data-dir", str(tmp_path / "no")),
            "does not exist",
        ),
    ]
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"\x00garbage")
    cases.append((("profile", "--model", "tiny-cnn", "--weights", str(bad)), "corrupt or unsafe checkpoint"))
    other = tmp_path / "other.th"
    torch.save(build_model("resnet-digits").state_dict(), other)
    cases.append((("profile", "--model", "tiny-cnn", "--weights", str(other)), "does not fit tiny-cnn"))
    for args, msg in cases:
        code, _, err = run_cli(*args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (args, err)
