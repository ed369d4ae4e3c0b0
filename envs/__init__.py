"""Gymnasium environments over an injected evaluator. Importing the package registers ``CoInference-v0``."""

from __future__ import annotations

import gymnasium

from envs.coinference_env import CoInferenceEnv, EdgeDistribution, VariantGrid

ENV_ID = "CoInference-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.coinference_env:CoInferenceEnv")

__all__ = ["ENV_ID", "CoInferenceEnv", "EdgeDistribution", "VariantGrid"]
