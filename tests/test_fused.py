"""The fused CPU runtime computes what the (shrunk) head computes, with every kernel; clear errors otherwise."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import coinference.fused as fused
from coinference.errors import ConfigError
from coinference.fused import TILES, FusedHead
from coinference.prune import PruneConfig, prune_device
from coinference.train import TrainConfig, fit
from coinference.zoo import build_model, split_model
from coinference.zoo.resnet import ResNet

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="the fused runtime needs a C compiler"
)


def _trained(model: nn.Module, data) -> nn.Module:
    torch.manual_seed(0)
    fit(model, data, TrainConfig(steps=6, batch_size=32, lr=0.05))  # BN statistics and weights away from init
    return model.eval()


@pytest.fixture(scope="module")
def nets(synthetic) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "option A": _trained(build_model("resnet-digits", num_classes=4, in_channels=3), synthetic),
        # option-B (1×1 conv + BN) shortcuts, 20 output channels: not a multiple of the kernels' channel tiles
        "option B": _trained(ResNet([1, 1], [12, 20], 4, 3, option="B"), synthetic),
        "plain": _trained(build_model("tiny-cnn"), synthetic),
    }


CASES = [
    ("option A", "layer1.1"),
    ("option A", "layer2.0"),  # stride-2 conv and an option-A shortcut
    ("option A", "layer2.1"),  # ends with global pooling
    ("option B", "layer2.0"),
    ("plain", "block1"),
    ("plain", "block2"),
]


@pytest.mark.parametrize(("net", "split"), CASES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_fused_head_equals_the_module(nets, synthetic, net, split, sparsity) -> None:
    model = nets[net]
    if sparsity == 0:
        head = split_model(model, split)[0].eval()
    else:  # shrunk: fewer channels, ChannelGather shortcuts
        head = prune_device(model, split, synthetic, PruneConfig(sparsity, 0.0, train=None)).head
    x = synthetic.normalize(synthetic.test_x[:16])
    with torch.no_grad():
        ref = head(x)
    outs = [FusedHead(head, synthetic.input_shape, tile=t)(x) for t in (*TILES, None)]
    for out in outs:
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(out, outs[0])  # every kernel sums in the same order: identical bits, whatever it picks
    # batch 1, and a channels-last input
    torch.testing.assert_close(FusedHead(head, synthetic.input_shape)(x[:1]), ref[:1], atol=1e-5, rtol=1e-5)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(FusedHead(head, synthetic.input_shape)(nhwc), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 17, 35), (3, 16, 32)])
def test_every_kernel_covers_odd_rows_and_ragged_columns(shape) -> None:
    # 17 rows (the two-row kernel's odd last row), 35 columns (not a multiple of any tile's width; an odd number of
    # padded columns for the stride-2 kernels' even/odd split), 5, 6 and 9 channels (not a multiple of any tile's
    # channel count), then a stride-2 convolution
    torch.manual_seed(0)
    bn5, bn6 = nn.BatchNorm2d(5), nn.BatchNorm2d(6)
    for bn in (bn5, bn6):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), bn5, nn.ReLU(), nn.Conv2d(5, 6, 3, padding=1), bn6,
        nn.Conv2d(6, 9, 3, stride=2, padding=1), nn.ReLU(),
    ).eval()  # fmt: skip
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = net(x)
    outs = [FusedHead(net, shape, tile=t)(x) for t in (*TILES, None)]
    for out in outs:
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(out, outs[0])


def test_hooks_are_refused_not_ignored() -> None:
    head = FusedHead(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval(), (3, 8, 8))
    with pytest.raises(ConfigError, match="forward hooks are not run"):
        head.register_forward_hook(lambda *a: None)
    with pytest.raises(ConfigError, match="pre-hooks are not run"):
        head.register_forward_pre_hook(lambda *a: None)


def test_unsupported_modules_and_inputs_are_named() -> None:
    with pytest.raises(ConfigError, match="unsupported module MaxPool2d"):
        FusedHead(nn.Sequential(nn.MaxPool2d(2)), (3, 8, 8))
    with pytest.raises(ConfigError, match="unsupported convolution"):
        FusedHead(nn.Sequential(nn.Conv2d(3, 4, 5, padding=2)), (3, 8, 8))
    with pytest.raises(ConfigError, match="unsupported module ReLU"):
        FusedHead(nn.Sequential(nn.ReLU()), (3, 8, 8))
    with pytest.raises(ConfigError, match="tile 7 unknown"):
        FusedHead(nn.Sequential(), (3, 8, 8), tile=7)
    head = FusedHead(build_model("tiny-cnn").stem, (3, 8, 8))
    with pytest.raises(ConfigError, match=r"input shape \(2, 3, 4, 4\)"):
        head(torch.zeros(2, 3, 4, 4))


def test_compiler_failure_is_a_clear_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "_LIB", None)
    monkeypatch.setenv("COINFERENCE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exists, always fails
    with pytest.raises(ConfigError, match="compiling the fused runtime with false failed"):
        fused.library()
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with pytest.raises(ConfigError, match="'no-such-compiler-xyz' not found"):
        fused.library()
    assert list(tmp_path.glob("*.so")) == []  # nothing half-written


def test_plain_conv_bn_relu_sequences_fuse(synthetic) -> None:
    torch.manual_seed(0)
    head = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 1, stride=2), nn.ReLU(),
        nn.Conv2d(5, 9, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(9),
    )  # fmt: skip
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    head.eval()
    x = synthetic.normalize(synthetic.test_x[:8])
    with torch.no_grad():
        torch.testing.assert_close(FusedHead(head, synthetic.input_shape)(x), head(x), atol=1e-5, rtol=1e-5)


def test_modes_restored_nan_kept_and_lookalikes_refused(nets, synthetic) -> None:
    head = split_model(nets["option A"], "layer1.1")[0].train()
    fused_head = FusedHead(head, synthetic.input_shape)
    assert all(m.training for m in head.modules())  # the caller's (training) model is left as it was
    head.eval()
    x = synthetic.normalize(synthetic.test_x[:4])
    x[0, :, 2, 3] = float("nan")  # NaN propagates as in PyTorch (no kernel's ReLU turns it into 0)
    with torch.no_grad():
        torch.testing.assert_close(fused_head(x), head(x), atol=1e-5, rtol=1e-5, equal_nan=True)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        fused_head(torch.empty(1, *synthetic.input_shape, device="meta"))

    class Doubled(type(head[1])):  # a supported block type with another forward: caught by the value check
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    block = head[1]
    odd = Doubled(block.conv1.in_channels, block.conv2.out_channels)
    odd.load_state_dict(block.state_dict())
    with pytest.raises(ConfigError, match="does not compute what the module computes"):
        FusedHead(nn.Sequential(head[0], odd), synthetic.input_shape)


def test_results_the_caller_keeps_are_never_overwritten() -> None:
    torch.manual_seed(0)
    head = FusedHead(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval(), (3, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    kept: list = []  # (what the caller keeps of a result, a copy of its values then, how to read it later)
    y = head(x)
    kept.append((y, y.clone(), lambda k: k))
    y = head(2 * x)
    kept.append((y[0], y[0].clone(), lambda k: k))  # a view; the result itself dropped
    y = head(3 * x)
    kept.append((y.numpy(), y.clone(), torch.from_numpy))
    y = head(4 * x)
    kept.append((y.untyped_storage(), y.clone(), lambda st: torch.empty(0).set_(st).view(1, 4, 8, 8)))
    y = head(5 * x)
    kept.append((torch.utils.dlpack.to_dlpack(y), y.clone(), torch.utils.dlpack.from_dlpack))
    y = head(6 * x)
    y.share_memory_()  # e.g. sent to another process: the data moves to shared memory
    kept.append((y, y.clone(), lambda k: k))
    w = torch.ones(4, 8, 8, requires_grad=True)
    y = head(7 * x)
    y.requires_grad_()
    loss = (y * w).sum()  # autograd saves y for the gradient of w
    expected_grad = y.detach().clone()[0]
    del y
    for k in range(8, 14):  # more calls than there are slots for reuse
        head(k * x)
    for thing, copy_then, read in kept:
        assert torch.equal(read(thing), copy_then)
    loss.backward()
    assert torch.equal(w.grad, expected_grad)
    # in-place metadata changes to a dropped result do not carry over to later ones
    y = head(x)
    y.squeeze_(0).transpose_(1, 2)
    del y
    batch = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(head(batch), head.forward(batch).clone(), atol=0, rtol=0)
    assert head(x).shape == (1, 4, 8, 8)
    # a serving loop that drops each result: the memory is reused (at most the two slots), values still right
    ptrs = set()
    for k in range(6):
        y = head(k * x)
        torch.testing.assert_close(y, head.forward(k * x) * 1, atol=0, rtol=0)
        ptrs.add(y.data_ptr())
        del y
    assert len(ptrs) <= 2


def test_replicas_run_side_by_side(nets, synthetic) -> None:
    head = split_model(nets["option A"], "layer2.0")[0].eval()
    one = FusedHead(head, synthetic.input_shape)
    x = synthetic.normalize(synthetic.test_x[:32])
    expected = one(x).clone()
    replica = one.replica()
    with ThreadPoolExecutor(2) as pool:  # each its own activation memory: results as if run one at a time
        got = list(pool.map(lambda h: [h(x).clone() for _ in range(20)], [one, replica]))
    for run in got:
        for y in run:
            assert torch.equal(y, expected)
    into = torch.full_like(expected, float("nan"))
    replica.run_into(x.contiguous(), into)  # the threads' entry point: into a given output, no torch op
    assert torch.equal(into, expected)
    with pytest.raises(ConfigError, match=r"run_into needs .* got \(32, 5\)"):
        replica.run_into(x, torch.empty(32, 5))
    with pytest.raises(ConfigError, match="torch.float64"):
        replica.run_into(x.double(), into)


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test (the suite runs on one), then the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_fused_outputs_are_the_same_bits_whatever_the_threads_batches_or_clock(
    two_threads, nets, synthetic, monkeypatch
) -> None:
    head = split_model(nets["option A"], "layer2.0")[0].eval()
    x = synthetic.train_x[:64]
    plain = FusedHead(head, synthetic.input_shape)
    one_by_one = torch.cat([plain(synthetic.normalize(x[i : i + 1])).clone() for i in range(64)])
    got = fused.fused_outputs(head, synthetic, x, batch_size=4)  # 16 batches on two replicas in two threads
    assert torch.equal(got, one_by_one)  # each image alone through the plan: batches and threads change no bit
    torch.testing.assert_close(got, fused.outputs(head, synthetic, x, batch_size=4), atol=1e-5, rtol=1e-5)
    seen: list[int] = []  # the worker threads left the thread count of threads started later alone
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [2] and torch.get_num_threads() == 2
    # A clock that makes every other reading an hour later (a machine under any load): kernels are still picked by
    # timing, but no choice of runtime or kernel changes a bit of the outputs.
    ticks = iter(range(10**9))
    monkeypatch.setattr(fused, "time", SimpleNamespace(perf_counter=lambda: 3600.0 * (next(ticks) % 2)))
    for threads, bs in ((1, 64), (2, 5), (2, 128)):
        torch.set_num_threads(threads)
        assert torch.equal(fused.fused_outputs(head, synthetic, x, batch_size=bs), one_by_one)


def test_fused_outputs_fall_back_to_eager(two_threads, nets, synthetic, monkeypatch) -> None:
    head = split_model(nets["option A"], "layer2.0")[0].eval()
    x = synthetic.train_x[:64]

    def run(model: nn.Module = head) -> torch.Tensor:
        return fused.fused_outputs(model, synthetic, x, batch_size=4)

    # a module the fused runtime does not support: eager, exactly
    pooled = nn.Sequential(head, nn.MaxPool2d(2)).eval()
    assert torch.equal(run(pooled), fused.outputs(pooled, synthetic, x, batch_size=4))
    monkeypatch.setattr(fused, "_LIB", None)  # no C compiler
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setenv("COINFERENCE_CACHE", str(Path(os.devnull).parent / "no-such-cache-xyz"))
    assert torch.equal(run(), fused.outputs(head, synthetic, x, batch_size=4))


def test_building_a_plan_leaves_the_callers_random_numbers_alone(nets, synthetic) -> None:
    head = split_model(nets["option A"], "layer2.0")[0].eval()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    FusedHead(head, synthetic.input_shape)  # picks each convolution's kernel by timing it on random inputs
    assert torch.equal(torch.rand(3), expected)
