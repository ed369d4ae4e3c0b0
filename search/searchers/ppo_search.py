"""PPO: learn a policy from edge environment to variant on ``CoInference-v0``, then measure its choices.

Training steps measure variants through the run's cached evaluator (a repeated choice costs nothing), and
training stops when the budget left equals the sweep size. Then the deterministic policy's choice for each
bandwidth of ``options.sweep_bandwidths`` (other edge quantities at the middle of their ranges) is measured
and saved to ``runs/<name>/ppo_sweep.json``; budget still left is spent on the stochastic policy's choices for
freshly sampled edge environments.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from coinference.variant import Measurement, VariantSpec
from search.searchers.base import SEARCHERS, SearchContext, Searcher


def make_env(ctx: SearchContext) -> Any:
    """The run's ``CoInference-v0`` over the cached evaluator (accuracy floor fixed when the run has one)."""
    from envs import CoInferenceEnv, EdgeDistribution

    def measure(spec: VariantSpec) -> Measurement | None:
        out = ctx.evaluate(spec)
        return out.measurement if out.ok else None

    floor = ctx.accuracy_floor
    edge = EdgeDistribution(accuracy_floor=(floor, floor)) if floor is not None else EdgeDistribution()
    return CoInferenceEnv(ctx.space, measure, edge=edge)


def _mid(lo: float, hi: float) -> float:
    return math.sqrt(lo * hi)


@SEARCHERS.register("ppo")
class PPOSearcher(Searcher):
    """stable-baselines3 PPO (or sb3-contrib MaskablePPO) with a small rollout on ``CoInference-v0``."""

    name = "ppo"

    def run(self, ctx: SearchContext) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        o = ctx.options
        env = make_env(ctx)
        reserve = min(len(o.sweep_bandwidths), max(0, ctx.trials - 1))
        kwargs: dict[str, Any] = dict(
            n_steps=o.ppo_n_steps,
            batch_size=o.ppo_n_steps,
            n_epochs=4,
            gamma=0.0,
            ent_coef=0.01,
            seed=ctx.seed,
            device="cpu",
            policy_kwargs={"net_arch": [64, 64]},
            verbose=0,
        )
        if o.maskable:
            from sb3_contrib import MaskablePPO

            model: Any = MaskablePPO("MlpPolicy", env, **kwargs)
        else:
            from stable_baselines3 import PPO

            model = PPO("MlpPolicy", env, **kwargs)
        # SB3's default logger makes an empty folder in the system's temp dir on every learn(), even when silent
        from stable_baselines3.common.logger import Logger

        model.set_logger(Logger(folder=None, output_formats=[]))

        class Budget(BaseCallback):
            def _on_step(self) -> bool:
                return ctx.remaining() > reserve

        if ctx.remaining() > reserve:
            model.learn(total_timesteps=o.ppo_timesteps, callback=Budget())
        if ctx.run_dir is not None:
            model.save(str(ctx.run_dir / "ppo_policy"))

        e = env.edge
        base = {
            "device_macs_per_s": _mid(*e.device_macs_per_s),
            "memory_bytes": _mid(*e.memory_bytes),
            "accuracy_floor": (e.accuracy_floor[0] + e.accuracy_floor[1]) / 2,
        }
        sweep = []
        for bw in o.sweep_bandwidths:
            obs, _ = env.reset(options={**base, "bandwidth_bytes_per_s": bw})
            cell = self._act(model, env, obs, deterministic=True)
            row: dict[str, Any] = {"bandwidth_bytes_per_s": bw, "cell": list(cell), "key": None}
            if env.grid.valid(cell):
                spec = ctx.space.spec(cell)
                row["key"] = spec.key
                if ctx.remaining() > 0 or ctx.seen(spec):
                    row["status"] = ctx.evaluate(spec, cell).status
            sweep.append(row)
        if ctx.run_dir is not None:
            (ctx.run_dir / "ppo_sweep.json").write_text(json.dumps(sweep, indent=1))

        rng = np.random.default_rng(ctx.seed)
        for _ in range(ctx.max_proposals()):
            if ctx.remaining() <= 0:
                break
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            cell = self._act(model, env, obs, deterministic=False)
            if env.grid.valid(cell):
                ctx.evaluate(ctx.space.spec(cell), cell)

    @staticmethod
    def _act(model: Any, env: Any, obs: np.ndarray, deterministic: bool) -> tuple[int, ...]:
        kw = {"action_masks": env.action_masks()} if "Maskable" in type(model).__name__ else {}
        action, _ = model.predict(obs, deterministic=deterministic, **kw)
        return tuple(int(a) for a in np.asarray(action).reshape(-1))
