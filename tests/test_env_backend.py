"""`execution.env_backend: torch`: the twins' CartPole in torch trains the fleet (issue 20, item 3).

The default stays the NumPy env (tests/test_pinned_weights.py pins it); the torch backend has random
streams of its own, so its runs are compared with themselves (a seed reproduces them) and checked to
train every twin; on a GPU `benchmarks/gpu_check.sh` measures it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fedtwin.config import Config, ExecutionConfig, TrainConfig
from fedtwin.learn.train import LocalResult, policy_spec, train_twins
from fedtwin.policy.network import init_params
from fedtwin.sim.twins import generate_twins
from tests.helpers import fedtwin, final_model_hash, write_tiny_config

CFG = TrainConfig(num_envs=2, num_steps=32, updates=2, epochs=2, minibatches=2)


def train(backend: str, seeds: list[int], cfg: TrainConfig = CFG) -> list[LocalResult]:
    twins = generate_twins(3, seed=1, preset="hard")
    return train_twins(init_params(policy_spec(cfg), 0), twins, seeds, cfg, env_backend=backend)


def test_torch_backend_trains_every_twin_and_a_seed_reproduces_it() -> None:
    first, again, numpy_path = train("torch", [1, 2, 3]), train("torch", [1, 2, 3]), train("numpy", [1, 2, 3])
    start = init_params(policy_spec(CFG), 0)
    for a, b, c in zip(first, again, numpy_path, strict=True):
        np.testing.assert_array_equal(a.params, b.params)
        assert a.metrics == b.metrics
        assert a.num_samples == c.num_samples == CFG.updates * CFG.num_steps * CFG.num_envs
        assert np.isfinite(a.params).all() and not np.array_equal(a.params, start)
        assert not np.array_equal(a.params, c.params)  # other streams: other trajectories
        assert a.metrics["charts/episodes"] > 0 and 1 <= a.metrics["charts/episodic_length"] <= 500
        assert set(a.metrics) == set(c.metrics)
    other = train("torch", [4, 5, 6])
    assert not np.array_equal(other[0].params, first[0].params)


def test_reward_scale_reaches_the_torch_rollout() -> None:
    """The critic learns scaled returns: with rewards scaled by 0.1 its loss is far smaller."""
    scaled_cfg = CFG.model_copy(update={"reward_scale": 0.1})
    plain, scaled = train("torch", [1, 2, 3]), train("torch", [1, 2, 3], scaled_cfg)
    assert plain[0].metrics["charts/episodic_length"] > 0
    assert scaled[0].metrics["losses/value_loss"] < plain[0].metrics["losses/value_loss"]


def test_bad_backend_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="env_backend must be one of numpy, torch"):
        train("jax", [1, 2, 3])
    with pytest.raises(ValidationError, match="env_backend"):
        ExecutionConfig(env_backend="jax")  # type: ignore[arg-type]
    assert ExecutionConfig().env_backend == "numpy"
    with pytest.raises(ValidationError, match="steps CartPole twins only"):
        Config.model_validate({"fleet": {"kind": "pendulum"}, "execution": {"env_backend": "torch"}})
    with pytest.raises(ValidationError, match=r"not supported with privacy\.mode 'local'"):
        Config.model_validate({"privacy": {"mode": "local", "target_epsilon": 5.0},
                               "execution": {"env_backend": "torch"}})


def test_fedtwin_run_reads_the_backend_from_the_config(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    for backend in ("numpy", "torch"):
        (tmp_path / backend).mkdir()
        config = write_tiny_config(tmp_path / backend, **{"execution.env_backend": backend})
        fedtwin("run", "--config", str(config), "--store", store, "--run-id", backend, check=True)
    assert final_model_hash(tmp_path / "store", "torch") != final_model_hash(tmp_path / "store", "numpy")
    refused = fedtwin("run", "--config", str(config), "--store", store, "--run-id", "pendulum",
                      "--kind", "pendulum")
    assert refused.returncode == 2 and "env_backend 'torch' steps CartPole twins only" in refused.stderr
