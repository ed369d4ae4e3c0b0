from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from coinference.errors import CheckpointError, ConfigError, UnknownNameError
from coinference.profile import count_macs
from coinference.zoo import MODELS, build_model, split_model


def _small_models() -> list[str]:
    return [n for n in MODELS.names() if n != "resnet18-cifar"]


def test_unknown_model_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'vgg'; valid: .*resnet20"):
        build_model("vgg")


@pytest.mark.parametrize("name", MODELS.names())
def test_units_compose_to_forward_and_split(name: str) -> None:
    info = MODELS.get(name)
    torch.manual_seed(0)
    m = build_model(name).eval()
    x = torch.randn(2, *info.input_shape)
    with torch.no_grad():
        y = m(x)
        for p in m.split_points():
            head, tail = split_model(m, p)
            torch.testing.assert_close(tail(head(x)), y, rtol=0, atol=0)
    assert y.shape == (2, info.num_classes)
    assert [p.index for p in m.split_points()] == list(range(1, len(m.units())))


def test_split_points_are_block_boundaries() -> None:
    m = build_model("resnet20")
    names = [p.name for p in m.split_points()]
    assert names == ["stem"] + [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert [p.name for p in m.split_points() if p.stage_end] == ["stem", "layer1.2", "layer2.2", "layer3.2"]
    assert m.split_point("layer2.2").index == 7 and m.split_point(7).name == "layer2.2"
    with pytest.raises(ConfigError, match=r"split point 'layer2.1.conv1' does not exist; valid: 1=stem"):
        m.split_point("layer2.1.conv1")
    with pytest.raises(ConfigError, match="split point 11 does not exist"):
        m.split_point(11)  # after the classifier is not a split


def test_resnet20_size_and_option_a_shortcut() -> None:
    m = build_model("resnet20").eval()
    assert sum(p.numel() for p in m.parameters()) == 269_722
    with torch.no_grad(), count_macs(m) as c:
        m(torch.zeros(1, 3, 32, 32))
    assert c[0] == 40_551_040
    assert len(m.state_dict()) - sum(k.endswith("num_batches_tracked") for k in m.state_dict()) == 97
    # option A: the 16 input channels land in the middle (8 zero channels before, 8 after)
    sc = m.layer2[0].shortcut
    x = torch.randn(1, 16, 8, 8)
    y = sc(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize("name", _small_models())
def test_instances_own_their_modules(name: str) -> None:
    a, b = build_model(name), build_model(name)
    ptrs_a = {t.data_ptr() for t in list(a.parameters()) + list(a.buffers())}
    ptrs_b = {t.data_ptr() for t in list(b.parameters()) + list(b.buffers())}
    assert not ptrs_a & ptrs_b
    assert not {id(x) for x in a.modules()} & {id(x) for x in b.modules()}


def test_checkpoint_round_trip_with_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_model("resnet-digits")
    sd = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "ck.th"
    torch.save({"state_dict": sd, "best_prec1": 90.0}, path)
    dst = build_model("resnet-digits", weights=path).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src.eval()(x), rtol=0, atol=0)


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_model("tiny-cnn", weights=tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or unsafe checkpoint"):
        build_model("tiny-cnn", weights=bad)
    other = tmp_path / "other.pt"
    torch.save(build_model("resnet-digits").state_dict(), other)
    with pytest.raises(CheckpointError, match=r"does not fit tiny-cnn: \d+ missing keys .*unexpected keys"):
        build_model("tiny-cnn", weights=other)
    shaped = tmp_path / "shaped.pt"
    torch.save(build_model("tiny-cnn", num_classes=7).state_dict(), shaped)
    with pytest.raises(CheckpointError, match="shape mismatches .*linear.weight"):
        build_model("tiny-cnn", weights=shaped)


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_checkpoint_never_unpickles_objects(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    with pytest.raises(CheckpointError, match="corrupt or unsafe checkpoint.*refused") as err:
        build_model("tiny-cnn", weights=path)
    assert "weights_only=False" not in str(err.value)  # never torch's advice to load it unsafely
    assert "executed" not in capsys.readouterr().out


def test_stem_view_shares_parameters() -> None:
    m = build_model("resnet20")
    head, _ = split_model(m, "stem")
    assert head[0].conv is m.conv1 and isinstance(head[0].bn, nn.BatchNorm2d)
