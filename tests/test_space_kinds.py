"""Codec kind and activation sparsity as search-space dimensions: specs per kind, the ratio's meaning for JSCC, and
single-kind spaces that keep the keys (and run identities) they had before the dimensions existed."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest
from search_toys import tiny_space

from coinference.errors import ConfigError
from coinference.variant import CodecSpec, VariantSpec, codec_for_ratio
from search.space import SEARCH_CODEC_KINDS, SearchSpace

ALL_KINDS = ("jscc-awgn", "sq", "jscc-bsc", "vq")  # given out of order on purpose


def _digest(space: SearchSpace) -> str:
    return hashlib.sha256("".join(f"{c}{s.key}" for c, s in space.grid()).encode()).hexdigest()


def test_default_space_keeps_its_cells_and_keys() -> None:
    """Digests of (cell, key) over the whole grid, computed with the code before codec kinds became a dimension."""
    sp = SearchSpace.for_model("resnet-digits")
    assert sp.names == ("split", "sparsity", "ratio", "bits") and len(sp.grid()) == 1140
    assert _digest(sp) == "9016b8901e23ac3acff8f3339e4325f93af86c431d490070399a68591cde2b1e"
    assert sp.spec((0, 0, 0, 2)).key == "96f23863c5f7530664cd1a283c73ef3669c1f28c0e6288c80e336d7369a52e7f"
    assert sp.spec((4, 9, 7, 0)).key == "e8bada57db5d21455ff5a775e74e806cd8dca7bd9398718621a6e96426c9f232"
    act = SearchSpace.for_model("resnet-digits", activation_sparsities=(0.5, 0.0, 0.25))
    assert act.names[-1] == "activation_sparsity" and act.levels("activation_sparsity") == (0.0, 0.25, 0.5)
    assert _digest(act) == "8bfe92f0e34e421ec8234a3db3091f21c11ea507cab943274d0d1cff0e16a190"
    for kinds in (("sq",), ["sq", "sq"]):  # one kind is no dimension, however it is given
        assert SearchSpace.for_model("resnet-digits", codec_kinds=kinds).grid() == sp.grid()


def test_single_kind_specs_equal_specs_built_the_old_way() -> None:
    sp = tiny_space(bits=(2, 4), activation_sparsities=(0.0, 0.5))
    for cell in sp.cells():
        p = sp.params(cell)
        shape = sp.feature_shapes[sp.splits.index(p["split"])]
        old = VariantSpec(
            sp.model, sp.dataset, p["split"], sp.weights_sha256, sparsity=p["sparsity"],
            activation_sparsity=p["activation_sparsity"], codec=codec_for_ratio(shape, p["ratio"], p["bits"], "sq"),
            fidelity=sp.fidelity, seed=sp.seed,
        )  # fmt: skip
        assert sp.spec(cell) == old and sp.spec(cell).key == old.key


def test_run_identity_of_old_spaces_is_unchanged() -> None:
    """The text a run's config.json keeps: an existing run folder must still match after the change."""
    from search.run import SearchConfig, run_identity

    cfg = SearchConfig(model="tiny-cnn")
    assert run_identity(cfg, tiny_space())["space"] == (
        "tiny-cnn/synthetic: split 2 × sparsity 2 × ratio 2 = 8 cells, 8 distinct variants; codec sq; "
        "weights trained here"
    )


def test_codec_kind_is_an_ordinal_dimension() -> None:
    sp = tiny_space(codec_kinds=ALL_KINDS, snr_db=5.0, flip_p=0.05)
    assert sp.names == ("split", "sparsity", "ratio", "codec_kind")
    assert sp.levels("codec_kind") == SEARCH_CODEC_KINDS == ("sq", "vq", "jscc-bsc", "jscc-awgn")
    assert sp.optuna_distributions()["codec_kind"].high == 3 and sp.gym_action_space().nvec[-1] == 4
    kinds = Counter(s.codec.kind for _, s in sp.grid())
    assert kinds == {k: 8 for k in SEARCH_CODEC_KINDS}  # 2 splits × 2 sparsities × 2 ratios each
    for cell, s in sp.grid():
        assert s.codec.kind == sp.params(cell)["codec_kind"]
        assert s.codec.snr_db == (5.0 if s.codec.kind == "jscc-awgn" else None)
        assert s.codec.flip_p == (0.05 if s.codec.kind == "jscc-bsc" else None)
    ident = sp.identity()
    assert (
        "codec_kind 4" in ident and "codec sq,vq,jscc-bsc,jscc-awgn (jscc-awgn at 5 dB) (jscc-bsc at p 0.05)" in ident
    )
    assert "activation sparsity" not in ident
    assert "activation sparsity 0,0.5" in tiny_space(activation_sparsities=(0.0, 0.5)).identity()
    assert "activation sparsity 0.25;" in tiny_space(activation_sparsities=(0.25,)).identity()


def test_jscc_ratio_counts_one_bit_per_channel_use() -> None:
    """For JSCC the ratio is raw float32 bits ÷ channel uses: 8×8×8 floats = 16,384 bits; ratio 32 → 512 uses (one
    per feature value), ratio 64 → 256; the bits dimension changes nothing (its cells alias)."""
    sp = tiny_space(bits=(2, 4), codec_kinds=("sq", "jscc-awgn", "jscc-bsc"))
    raw = math.prod((8, 8, 8)) * 32
    for cell, s in sp.grid():
        p = sp.params(cell)
        c = s.codec
        if c.kind == "sq":
            assert c.bits == p["bits"]
            continue
        assert c.bits == 1
        uses = c.dim or (c.channels or 8) * (8 // c.stride) ** 2
        assert uses == raw / p["ratio"], (p, c)
    jscc = [s for _, s in sp.grid() if s.codec.kind != "sq"]
    assert len(jscc) == 2 * 2 * 2 * 2  # splits × sparsities × ratios × JSCC kinds: bits 2 and 4 alias
    assert tiny_space(codec_kinds=("jscc-awgn",)).spec((0, 0, 1)).codec == CodecSpec("jscc-awgn", channels=4, bits=1)


def test_jscc_ratio_below_32_is_invalid() -> None:
    sp = tiny_space(ratios=(16.0, 32.0), bits=(4,), codec_kinds=("sq", "jscc-bsc"))
    i16 = sp.levels("ratio").index(16.0)
    assert sp.valid((0, 0, i16, 0))  # sq: 16 × 4 bits ≥ 32
    assert not sp.valid((0, 0, i16, 1))  # jscc-bsc: 16 × 1 < 32, more bits than feature values
    with pytest.raises(ConfigError, match="no valid cell"):
        tiny_space(ratios=(16.0,), codec_kinds=("jscc-awgn",))


def test_bad_kinds_and_channel_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown search codec kind 'huffman'; valid: sq, vq, jscc-bsc, jscc-awgn"):
        tiny_space(codec_kinds=("sq", "huffman"))
    with pytest.raises(ConfigError, match="codec_kinds is empty"):
        tiny_space(codec_kinds=())
    with pytest.raises(ConfigError, match="snr_db 5.0 is set but the space has no jscc-awgn"):
        tiny_space(snr_db=5.0)
    with pytest.raises(ConfigError, match="flip_p 0.1 is set but the space has no jscc-bsc"):
        tiny_space(codec_kinds=("jscc-awgn",), flip_p=0.1)
    with pytest.raises(ConfigError, match="50"):
        tiny_space(codec_kinds=("jscc-awgn",), snr_db=50.0)
    with pytest.raises(ConfigError, match="0.5"):
        tiny_space(codec_kinds=("jscc-bsc",), flip_p=0.5)
    with pytest.raises(ConfigError, match="activation_sparsities levels"):
        tiny_space(activation_sparsities=(0.0, 1.0))


def test_the_env_prices_analog_variants_by_symbols() -> None:
    """A space with jscc-awgn in PPO's env: the episode's link carries 8 × bandwidth × symbols_per_bit real symbols
    per second, so an analog variant gets a latency instead of an error."""
    import numpy as np

    from coinference.variant import Measurement
    from envs import CoInferenceEnv, EdgeDistribution

    def measure(spec: VariantSpec) -> Measurement:
        uses = 256 if spec.codec.kind == "jscc-awgn" else None
        return Measurement(0.9, 1_000, 1_000, 256.0, 256, channel_uses=uses)

    sp = tiny_space(codec_kinds=("sq", "jscc-awgn"))
    opts = {"bandwidth_bytes_per_s": 1e3, "device_macs_per_s": 1e9, "memory_bytes": 1e6, "accuracy_floor": 0.5}
    for per_bit, transmit in ((1.0, 256 / 8e3), (4.0, 256 / 32e3)):
        env = CoInferenceEnv(sp, measure, edge=EdgeDistribution(symbols_per_bit=per_bit))
        env.reset(seed=0, options=opts)
        _, _, _, _, info = env.step(np.array([1, 1, 1, 1]))  # block1, sparsity 0.5, ratio 64, jscc-awgn
        assert info["outcome"] == "ok" and info["latency_s"] == pytest.approx(1_000 / 1e9 + transmit)
    with pytest.raises(ConfigError, match="symbols_per_bit"):
        EdgeDistribution(symbols_per_bit=0.0)
