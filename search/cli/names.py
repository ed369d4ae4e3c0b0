"""Names the CLI shows in its help and checks before any heavy import.

The registries that own these names (models, data sets, searchers, samplers, codec kinds) live in modules that
import PyTorch, Optuna or Ray, which costs seconds; ``coinfer --help`` and argument errors must answer at once.
``tests/test_cli_names.py`` checks that every tuple here equals its registry, so the two cannot drift apart.
"""

from __future__ import annotations

from coinference.errors import UnknownNameError

MODEL_DATASETS = {
    "resnet-digits": "digits",
    "resnet18-cifar": "cifar10",
    "resnet20": "cifar10",
    "resnet32": "cifar10",
    "resnet44": "cifar10",
    "resnet56": "cifar10",
    "tiny-cnn": "synthetic",
}
"""``coinference.zoo.MODELS``: each model and the data set it is meant for (``ModelInfo.dataset``)."""
MODELS = tuple(MODEL_DATASETS)
DEFAULT_MODEL = "resnet-digits"
"""``coinference.zoo.DEFAULT_MODEL``: the embedded default's model."""
DATASETS = ("cifar10", "digits", "synthetic")
"""``coinference.data.DATASETS``."""
EMBEDDED_DATASETS = ("digits", "synthetic")
"""Data sets that need no files (no --data-dir)."""
SEARCHERS = ("grid", "optuna", "ppo", "random", "ray")
"""``search.searchers.SEARCHERS``."""
SAMPLERS = ("gp", "nsga2", "tpe")
"""``search.searchers.optuna_search.make_sampler``."""
CODEC_KINDS = ("sq", "vq", "jscc-awgn", "jscc-bsc", "bottlenetpp", "huffman", "none")
"""``coinference.codec.KINDS``."""
SEARCH_CODEC_KINDS = ("sq", "vq", "jscc-bsc", "jscc-awgn")
"""``search.space.SEARCH_CODEC_KINDS``: the codec kinds a search tries, in their ordinal order."""
SNR_RANGE_DB = (-10.0, 40.0)
"""``coinference.codec.config.SNR_RANGE_DB``: SNRs (dB per real channel symbol) accepted anywhere."""


def check(kind: str, value: str, valid: tuple[str, ...] | list[str]) -> str:
    """``value`` when it is one of ``valid``; else :class:`UnknownNameError` listing the valid names."""
    if value not in valid:
        raise UnknownNameError(f"unknown {kind} {value!r}; valid: {', '.join(sorted(valid))}")
    return value
