from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from search_toys import CountingEvaluator, tiny_space
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from coinference.errors import ConfigError
from envs import ENV_ID, CoInferenceEnv, EdgeDistribution


def make(**kw: object) -> CoInferenceEnv:
    return CoInferenceEnv(tiny_space(), CountingEvaluator(), **kw)  # type: ignore[arg-type]


def test_env_passes_gymnasium_and_sb3_checkers() -> None:
    gym_check_env(make(), skip_render_check=True)
    sb3_check_env(make(), warn=True)


def test_registered_id_makes_the_env() -> None:
    env = gymnasium.make(ENV_ID, space=tiny_space(), evaluator=CountingEvaluator())
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and set(info) >= {"bandwidth_bytes_per_s", "accuracy_floor"}
    assert list(env.action_space.nvec) == [2, 2, 2]


def test_reward_is_minus_normalised_latency_when_constraints_hold() -> None:
    env = make(edge=EdgeDistribution(accuracy_floor=(0.9, 0.9)))
    opts = {"bandwidth_bytes_per_s": 1e4, "device_macs_per_s": 1e9, "memory_bytes": 1e6}
    env.reset(seed=0, options=opts)
    _, r, term, trunc, info = env.step(np.array([1, 1, 1]))  # the toy's optimum: accuracy 0.95
    assert term and not trunc and info["outcome"] == "ok"
    device_only = 69_120 / 1e9
    assert r == pytest.approx(-min(info["latency_s"] / device_only, env.latency_clip))
    env.reset(seed=0, options=opts)
    _, r, *_, info = env.step(np.array([0, 0, 0]))  # accuracy 0.65 < floor 0.9
    assert info["outcome"] == "below_floor" and r == -env.penalty
    env.reset(seed=0, options={**opts, "memory_bytes": 1_000})  # the toy needs 2,000 bytes
    _, r, *_, info = env.step(np.array([1, 1, 1]))
    assert info["outcome"] == "out_of_memory" and r == -env.penalty


def test_failed_build_and_invalid_cell_get_the_penalty() -> None:
    env = CoInferenceEnv(tiny_space(), CountingEvaluator(fail_sparsity=0.0), edge=EdgeDistribution())
    env.reset(seed=1)
    fail = CountingEvaluator(fail_sparsity=0.0)
    env.evaluator = lambda s: None if s.sparsity == 0.0 else fail(s)
    _, r, *_, info = env.step(np.array([0, 0, 0]))
    assert info["outcome"] == "failed" and r == -env.penalty
    env2 = CoInferenceEnv(tiny_space(ratios=(8.0, 64.0), bits=(2, 8)), CountingEvaluator())
    env2.reset(seed=0)
    _, r, *_, info = env2.step(np.array([0, 0, 0, 0]))  # ratio 8 at 2 bits has no codec
    assert info["outcome"] == "invalid" and r == -env2.penalty


def test_episode_sampling_is_seeded_and_bad_options_refused() -> None:
    a, b = make(), make()
    assert np.array_equal(a.reset(seed=7)[0], b.reset(seed=7)[0])
    with pytest.raises(ConfigError, match="unknown reset options"):
        a.reset(options={"snr": 3})
    with pytest.raises(ConfigError, match="reference_macs"):
        CoInferenceEnv(tiny_space(total_macs=None), CountingEvaluator())


@pytest.mark.parametrize("maskable", [False, True])
def test_ppo_runs_64_steps(maskable: bool) -> None:
    env = make()
    ev = env.evaluator
    if maskable:
        from sb3_contrib import MaskablePPO

        model = MaskablePPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    else:
        from stable_baselines3 import PPO

        model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    assert sum(ev.calls.values()) == 64  # one measurement per one-step episode (the env itself does not cache)
