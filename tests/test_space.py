from __future__ import annotations

import numpy as np
import pytest
from search_toys import tiny_space

from coinference.errors import ConfigError
from search.space import SearchSpace


@pytest.fixture(scope="module")
def default_space() -> SearchSpace:
    return SearchSpace.for_model("resnet-digits")


def test_default_space_has_at_least_1000_distinct_variants(default_space: SearchSpace) -> None:
    assert default_space.names == ("split", "sparsity", "ratio", "bits")
    assert default_space.sizes == (5, 10, 9, 3)
    grid = default_space.grid()
    assert len(grid) >= 1000
    assert len({s.key for _, s in grid}) == len(grid)
    assert default_space.total_macs and default_space.total_macs > 1_000_000


def test_invalid_cells_are_those_without_a_codec(default_space: SearchSpace) -> None:
    i_ratio4 = default_space.levels("ratio").index(4.0)
    i_bits2 = default_space.levels("bits").index(2)
    assert not default_space.valid((0, 0, i_ratio4, i_bits2))  # 4 × 2 < 32: more symbols than the feature
    with pytest.raises(ConfigError, match="compression ratio"):
        default_space.spec((0, 0, i_ratio4, i_bits2))
    assert default_space.valid((0, 0, i_ratio4, default_space.levels("bits").index(8)))
    with pytest.raises(ConfigError, match="outside the space"):
        default_space.spec((5, 0, 0, 0))


def test_cell_to_spec_and_back() -> None:
    sp = tiny_space()
    cell = (1, 1, 0)
    s = sp.spec(cell)
    assert (s.split, s.sparsity, s.codec.bits, s.model, s.fidelity) == ("block1", 0.5, 2, "tiny-cnn", "fast")
    assert sp.index_of({"split": 1, "sparsity": 1, "ratio": 0}) == cell
    assert sp.params(cell) == {"split": "block1", "sparsity": 0.5, "ratio": 32.0}


def test_conversions_agree_on_sizes(default_space: SearchSpace) -> None:
    dists = default_space.optuna_distributions()
    assert [(d.low, d.high) for d in dists.values()] == [(0, n - 1) for n in default_space.sizes]
    ray_space = default_space.ray_param_space()
    assert list(ray_space) == list(default_space.names)
    assert [d.lower for d in ray_space.values()] == [0] * 4 and [d.upper for d in ray_space.values()] == list(
        default_space.sizes
    )
    gs = default_space.gym_action_space()
    assert list(gs.nvec) == list(default_space.sizes)
    mask = default_space.action_mask()
    assert mask.shape == (sum(default_space.sizes),) and mask.dtype == np.bool_ and mask.all()


def test_bad_spaces_are_refused() -> None:
    with pytest.raises(ConfigError, match="no valid cell"):
        tiny_space(ratios=(1.0,), bits=(2,))
    with pytest.raises(ConfigError, match="sparsities levels"):
        tiny_space(sparsities=(0.0, 1.0))
    with pytest.raises(ConfigError, match="do not exist"):
        SearchSpace.for_model("tiny-cnn", splits=["nope"])
