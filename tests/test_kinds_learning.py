"""Learning on every twin kind: gaussian policies (continuous actions), categorical ones with more than
two actions, the fleet engine equal to the pool engine, DP-SGD over log_std, evaluation (issue 19)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedtwin.config import STRATEGY_NAMES, FederationConfig, TrainConfig
from fedtwin.core.errors import ConfigError
from fedtwin.federation.strategies import make_strategy
from fedtwin.learn import dp_sgd
from fedtwin.learn.evaluate import evaluate_policy, load_model
from fedtwin.learn.rollout import log_prob_entropy
from fedtwin.learn.train import policy_spec, train_twin, train_twins
from fedtwin.policy.layout import LOG_STD, PolicySpec, layout_for, params_from_bytes, params_to_bytes
from fedtwin.policy.network import PolicyNet, init_params
from fedtwin.sim.kind_registry import get_kind
from fedtwin.sim.kinds import generate_twins

PPO = TrainConfig(num_envs=2, num_steps=16, updates=2, epochs=2, minibatches=2)
REINFORCE = TrainConfig(algo="reinforce", num_envs=2, num_steps=16, updates=2)


def test_policy_spec_follows_the_kinds_spaces() -> None:
    assert policy_spec(PPO, get_kind("cartpole")) == policy_spec(PPO) == PolicySpec("actor_critic", (64, 64))
    assert policy_spec(PPO, get_kind("pendulum")) == PolicySpec("actor_critic", (64, 64), 3, 1, "gaussian")
    assert policy_spec(REINFORCE, get_kind("acrobot")) == PolicySpec("reinforce", (32, 16), 6, 3)


def test_gaussian_layout_has_log_std_and_round_trips() -> None:
    spec = PolicySpec("actor_critic", (8,), 3, 2, "gaussian")
    layout = layout_for(spec)
    assert dict(zip(layout.names, layout.shapes, strict=True))[LOG_STD] == (2,)
    net = dict(PolicyNet(spec).named_parameters())
    assert sorted(layout.names) == sorted(net)
    assert all(tuple(net[n].shape) == s for n, s in zip(layout.names, layout.shapes, strict=True))
    params = init_params(spec, 3)
    assert np.all(layout.to_dict(params)[LOG_STD] == 0.0)  # CleanRL's start: std 1
    back, read_spec = params_from_bytes(params_to_bytes(params, spec))
    assert read_spec == spec and np.array_equal(back, params)
    # A categorical spec writes the metadata it wrote before gaussian policies existed.
    assert "action" not in json.loads(PolicySpec("reinforce", (4,)).to_json())
    assert PolicySpec.from_json(spec.to_json()) == spec


def test_gaussian_log_prob_and_entropy_are_normals() -> None:
    gen = torch.Generator().manual_seed(0)
    mean, actions = torch.randn(5, 7, 2, generator=gen), torch.randn(5, 7, 2, generator=gen)
    log_std = torch.randn(5, 1, 2, generator=gen)
    logp, entropy = log_prob_entropy(mean, actions, log_std)
    normal = torch.distributions.Normal(mean, log_std.exp().expand_as(mean))
    torch.testing.assert_close(logp, normal.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, normal.entropy().sum(-1))


@pytest.mark.parametrize("kind_name", ["pendulum", "acrobot"])
@pytest.mark.parametrize("cfg", [PPO, REINFORCE], ids=["ppo", "reinforce"])
def test_fleet_engine_equals_pool_engine_on_every_kind(kind_name: str, cfg: TrainConfig) -> None:
    kind = get_kind(kind_name)
    twins, seeds = generate_twins(kind, 3, seed=4, preset="hard"), [5, 6, 7]
    params = init_params(policy_spec(cfg, kind), 0)
    together = train_twins(params, twins, seeds, cfg)
    alone = [train_twin(params, twin, seed, cfg) for twin, seed in zip(twins, seeds, strict=True)]
    for batched, single in zip(together, alone, strict=True):
        np.testing.assert_allclose(batched.params, single.params, rtol=0, atol=1e-6)
        assert not np.array_equal(batched.params, params)  # it trained
        assert batched.num_samples == cfg.updates * cfg.num_steps * cfg.num_envs


@pytest.mark.parametrize("cfg", [PPO, REINFORCE], ids=["ppo", "reinforce"])
def test_dp_sgd_covers_log_std(cfg: TrainConfig) -> None:
    kind = get_kind("pendulum")
    twins = generate_twins(kind, 2, seed=1)
    spec = policy_spec(cfg, kind)
    params = init_params(spec, 0)
    rate = 1 / cfg.minibatches if cfg.algo == "ppo" else 1.0

    def dp(ids: list[int]) -> dp_sgd.LocalDP:
        return dp_sgd.LocalDP(0.8, 1.0, rate, [dp_sgd.noise_generator(50 + i) for i in ids])

    together = train_twins(params, twins, [1, 2], cfg, dp=dp([0, 1]))
    alone = [train_twin(params, t, s, cfg, dp=dp([i]))
             for i, (t, s) in enumerate(zip(twins, [1, 2], strict=True))]
    plain = train_twins(params, twins, [1, 2], cfg)
    layout = layout_for(spec)
    for batched, single, free in zip(together, alone, plain, strict=True):
        np.testing.assert_allclose(batched.params, single.params, rtol=0, atol=1e-6)
        private, public = layout.to_dict(batched.params)[LOG_STD], layout.to_dict(free.params)[LOG_STD]
        assert not np.array_equal(private, 0.0)  # log_std is in the private step's gradient ...
        assert not np.allclose(private, public, atol=1e-4)  # ... and its noise
        assert batched.dp_steps > 0


def test_per_sample_clipping_bounds_the_log_std_gradient() -> None:
    # Every parameter's per-sample gradient, log_std's included, is clipped in one norm.
    per_sample = {"actor.0.weight": torch.zeros(1, 2, 3), LOG_STD: torch.tensor([30.0, 0.5]).view(1, 2, 1)}
    summed = dp_sgd.clip_and_sum(per_sample, 1.0, torch.ones(1, 2))
    assert float(summed[LOG_STD][0, 0]) == pytest.approx(1.0 + 0.5, rel=1e-5)


def test_greedy_evaluation_clips_the_mean_to_the_action_space() -> None:
    kind = get_kind("pendulum")
    spec = PolicySpec("reinforce", (4,), 3, 1, "gaussian")
    layout = layout_for(spec)
    named = layout.to_dict(np.zeros(layout.size, dtype=np.float32))
    named["actor.2.bias"][:] = 50.0  # a mean far outside [-2, 2]: the twin gets +2
    huge = evaluate_policy(layout.from_dict(named), spec, generate_twins(kind, 2, seed=0), 2, seed=1)
    named["actor.2.bias"][:] = 2.0
    edge = evaluate_policy(layout.from_dict(named), spec, generate_twins(kind, 2, seed=0), 2, seed=1)
    assert huge.per_twin_mean == edge.per_twin_mean


def test_a_model_of_another_kind_is_refused_in_one_line() -> None:
    spec = policy_spec(PPO, get_kind("pendulum"))
    data = params_to_bytes(init_params(spec, 0), spec)
    assert load_model(data, "p.safetensors", get_kind("pendulum"))[1] == spec
    with pytest.raises(ConfigError, match=r"model p.safetensors takes 3 observations, but acrobot twins "
                                          r"give 6; pass a model trained on acrobot twins"):
        load_model(data, "p.safetensors", get_kind("acrobot"))
    with pytest.raises(ConfigError, match=r"has gaussian actions, but cart-pole twins take categorical ones"):
        odd = PolicySpec("actor_critic", (8,), 4, 1, "gaussian")
        load_model(params_to_bytes(init_params(odd, 0), odd), "q", None)


@pytest.fixture(scope="module")
def pendulum_round() -> tuple[PolicySpec, np.ndarray, np.ndarray]:
    """One local round of five pendulum twins: the start model and their updates (log_std in each)."""
    kind = get_kind("pendulum")
    cfg = TrainConfig(num_envs=1, num_steps=8, updates=1, epochs=1, minibatches=1)
    spec = policy_spec(cfg, kind)
    start = init_params(spec, 0)
    results = train_twins(start, generate_twins(kind, 5, seed=2), [1, 2, 3, 4, 5], cfg)
    return spec, start, np.stack([r.params for r in results])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_aggregates_gaussian_policies(
    name: str, pendulum_round: tuple[PolicySpec, np.ndarray, np.ndarray]
) -> None:
    spec, start, updates = pendulum_round
    strategy = make_strategy(name, FederationConfig(strategy=name).strategy_params())
    new, _ = strategy.aggregate(start, updates, np.ones(5), strategy.initial_state(start.size))
    # a model of the same layout, log_std moved from its start like every other weight
    log_std = layout_for(spec).to_dict(np.asarray(new, dtype=np.float32))[LOG_STD]
    assert new.shape == start.shape and np.all(np.isfinite(new))
    assert not np.array_equal(new, start) and log_std.shape == (1,)
    assert float(log_std[0]) != 0.0
