"""Local trainers: returns maths, per-twin batching, determinism, learning, FedProx, clipping, devices."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from fedtwin.config import TrainConfig
from fedtwin.core.errors import FedtwinError
from fedtwin.learn.batched import StackedPolicy, optimizer_step
from fedtwin.learn.evaluate import evaluate_policy
from fedtwin.learn.ppo import rollout_values
from fedtwin.learn.rollout import collect_rollout, gae, sample_actions
from fedtwin.learn.runtime import DeviceError
from fedtwin.learn.train import policy_spec, train_twin, train_twins
from fedtwin.policy.layout import layout_for
from fedtwin.policy.network import PolicyNet, init_params
from fedtwin.sim.envs import TwinCartPoleVectorEnv
from fedtwin.sim.twins import TwinSpec, make_fleet

SMALL_PPO = TrainConfig(num_envs=2, num_steps=32, updates=2, epochs=2, minibatches=2)
SMALL_REINFORCE = TrainConfig(algo="reinforce", num_envs=2, num_steps=32, updates=2)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _t(*rows: list[float]) -> torch.Tensor:
    """Time-major [T, 1] tensor from per-step values."""
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 1)


# ------------------------------------------------------------------------------------- returns
def test_reward_to_go_is_gae_with_lambda_one_and_zero_values() -> None:
    rewards, zeros = _t(1, 1, 1), _t(0, 0, 0)

    _, returns = gae(rewards, zeros, zeros, zeros, zeros, gamma=0.9, lam=1.0)

    torch.testing.assert_close(returns, _t(1 + 0.9 + 0.81, 1 + 0.9, 1))


def test_episode_end_stops_the_return() -> None:
    rewards, zeros = _t(1, 1, 1), _t(0, 0, 0)
    ended = _t(0, 1, 0)  # the episode ends at t=1, a new one starts at t=2

    _, returns = gae(rewards, zeros, zeros, ended, ended, gamma=0.9, lam=1.0)

    torch.testing.assert_close(returns, _t(1 + 0.9, 1, 1))


def test_gae_two_steps_by_hand() -> None:
    rewards, values, next_values, no = _t(1, 1), _t(0.5, 0.4), _t(0.4, 0.3), _t(0, 0)

    adv, returns = gae(rewards, values, next_values, no, no, gamma=0.9, lam=0.8)

    # delta1 = 1 + .9*.3 - .4 = .87; delta0 = 1 + .9*.4 - .5 = .86; A0 = .86 + .9*.8*.87
    torch.testing.assert_close(adv, _t(0.86 + 0.72 * 0.87, 0.87))
    torch.testing.assert_close(returns, _t(0.86 + 0.72 * 0.87 + 0.5, 0.87 + 0.4))


def test_truncation_bootstraps_termination_does_not() -> None:
    rewards, values, final_value = _t(1, 1), _t(0.5, 0.5), _t(2.0, 3.0)
    done, no = _t(1, 0), _t(0, 0)

    adv_term, _ = gae(rewards, values, final_value, done, done, gamma=0.9, lam=0.95)
    adv_trunc, _ = gae(rewards, values, final_value, no, done, gamma=0.9, lam=0.95)

    # Step 0 ends its episode either way, so step 1's advantage does not flow back into it.
    assert adv_term[0].item() == pytest.approx(1 - 0.5)
    assert adv_trunc[0].item() == pytest.approx(1 + 0.9 * 2.0 - 0.5)
    assert adv_term[1].item() == adv_trunc[1].item() == pytest.approx(1 + 0.9 * 3.0 - 0.5)


def test_inverse_cdf_sampling() -> None:
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.25, 0.75], [0.2, 0.3], [0.2, 0.3]]))
    logits3 = torch.log(torch.tensor([0.2, 0.3, 0.5])).expand(3, 3)

    actions = sample_actions(logits, torch.tensor([0.2, 0.3, 0.39, 0.41]))
    actions3 = sample_actions(logits3, torch.tensor([0.1, 0.45, 0.9]))

    assert actions.tolist() == [0, 1, 0, 1]
    assert actions3.tolist() == [0, 1, 2]


def test_rollout_keeps_terminal_obs_not_reset_obs() -> None:
    cfg = SMALL_PPO
    spec = policy_spec(cfg)
    params = layout_for(spec).to_dict(torch.as_tensor(init_params(spec, 0)).unsqueeze(0))  # K=1
    actor = StackedPolicy(PolicyNet(spec)).actor_fn(params)
    env = TwinCartPoleVectorEnv([TwinSpec(id="twin-000")], envs_per_twin=2)
    obs, _ = env.reset(seed=[1])

    ro, _ = collect_rollout(env, obs, actor, [np.random.default_rng(0)], 60, torch.device("cpu"))

    ended = ro.terminated.bool()
    assert ended.any(), "a near-random policy ends episodes within 60 steps"
    x, theta = ro.next_obs[..., 0], ro.next_obs[..., 2]
    assert ((x.abs() > 2.4) | (theta.abs() > 12 * 2 * math.pi / 360))[ended].all()
    running = ~ro.dones.bool()[:-1]
    torch.testing.assert_close(ro.next_obs[:-1][running], ro.obs[1:][running], rtol=0, atol=0)
    assert sum(map(len, ro.episode_returns)) == int(ro.dones.sum())


def test_rollout_values_equal_a_critic_pass_over_obs_and_one_over_next_obs() -> None:
    # 3 twins, episodes cut at 15 steps: truncations (which need V(final obs)), a different number per
    # twin, and terminations (whose V(next obs) GAE ignores) in one 40-step rollout.
    spec = policy_spec(SMALL_PPO)
    params = layout_for(spec).to_dict(torch.as_tensor(np.stack([init_params(spec, s) for s in range(3)])))
    net = StackedPolicy(PolicyNet(spec))
    env = TwinCartPoleVectorEnv(make_fleet(3, seed=5).train, envs_per_twin=2, max_episode_steps=15)
    obs, _ = env.reset(seed=[1, 2, 3])
    ro, _ = collect_rollout(env, obs, net.actor_fn(params), [np.random.default_rng(s) for s in range(3)], 40,
                            torch.device("cpu"))
    truncated = ro.flat(ro.dones - ro.terminated).sum(dim=1)
    assert truncated.min() >= 1 and len(set(truncated.tolist())) > 1 and ro.terminated.any()

    with torch.no_grad():
        values, next_values = rollout_values(net, params, ro)
        expected_values = net.value(params, ro.flat(ro.obs))
        expected_next = net.value(params, ro.flat(ro.next_obs))

    torch.testing.assert_close(values, expected_values, rtol=0, atol=1e-6)
    live = ro.flat(ro.terminated) == 0  # after a termination GAE multiplies V(next) by 0
    torch.testing.assert_close(next_values[live], expected_next[live], rtol=0, atol=1e-6)
    assert not torch.allclose(next_values[~live], expected_next[~live])  # reset obs there, not final


# ---------------------------------------------------------------------------- batching, seeds
@pytest.mark.parametrize("cfg", [SMALL_PPO, SMALL_REINFORCE], ids=["ppo", "reinforce"])
def test_twin_trains_the_same_alone_or_in_a_batch(cfg: TrainConfig) -> None:
    twins = make_fleet(3, seed=7).train
    params = init_params(policy_spec(cfg), 0)
    seeds = [11, 22, 33]

    together = train_twins(params, twins, seeds, cfg)
    alone = [train_twin(params, twin, seed, cfg) for twin, seed in zip(twins, seeds, strict=True)]

    for batched, single in zip(together, alone, strict=True):
        assert batched.num_samples == single.num_samples == 2 * 32 * 2
        np.testing.assert_allclose(batched.params, single.params, rtol=0, atol=1e-5)
        assert batched.metrics.keys() == single.metrics.keys()
        assert batched.metrics["charts/episodes"] == single.metrics["charts/episodes"]
        np.testing.assert_allclose(
            batched.metrics["losses/policy_loss"], single.metrics["losses/policy_loss"], atol=1e-5
        )
    # The twins really differ (different physics and seeds), so the comparison above means something.
    assert not np.allclose(together[0].params, together[1].params, atol=1e-3)


def _digest(cfg: TrainConfig, seeds: list[int]) -> str:
    twins = make_fleet(2, seed=7).train
    results = train_twins(init_params(policy_spec(cfg), 0), twins, seeds, cfg)
    return hashlib.sha256(b"".join(r.params.tobytes() for r in results)).hexdigest()


def test_same_seeds_bit_identical() -> None:
    assert _digest(SMALL_PPO, [1, 2]) == _digest(SMALL_PPO, [1, 2])
    assert _digest(SMALL_PPO, [1, 2]) != _digest(SMALL_PPO, [1, 3])


# ------------------------------------------------------------------------------------ learning
def test_ppo_improves_return_on_default_twin() -> None:
    cfg = TrainConfig(updates=4)  # half a default round
    spec = policy_spec(cfg)
    twin = TwinSpec(id="twin-000")
    params = init_params(spec, 0)

    result = train_twin(params, twin, seed=100, cfg=cfg)

    before = evaluate_policy(params, spec, [twin], episodes=4, seed=5).mean_return
    after = evaluate_policy(result.params, spec, [twin], episodes=4, seed=5).mean_return
    assert before < 20
    assert after >= 100, f"greedy return only went from {before} to {after}"
    assert result.num_samples == 4 * cfg.num_steps * cfg.num_envs  # 4 updates of num_envs x num_steps steps
    assert 0 < result.metrics["losses/approx_kl"] < 0.1
    assert 0 < result.metrics["losses/clipfrac"] < 0.5


def test_reinforce_learns_something() -> None:
    cfg = TrainConfig(algo="reinforce", updates=20)
    spec = policy_spec(cfg)
    twin = TwinSpec(id="twin-000")
    params = init_params(spec, 0)

    result = train_twin(params, twin, seed=1, cfg=cfg)

    before = evaluate_policy(params, spec, [twin], episodes=4, seed=5).mean_return
    after = evaluate_policy(result.params, spec, [twin], episodes=4, seed=5).mean_return
    assert before < 20
    assert after >= 40, f"greedy return only went from {before} to {after}"
    assert set(result.metrics) == {
        "losses/policy_loss",
        "losses/entropy",
        "charts/episodes",
        "charts/episodic_return",
        "charts/episodic_length",
    }


# ----------------------------------------------------------------------------- FedProx, clipping
def test_fedprox_keeps_params_near_global() -> None:
    twin = TwinSpec(id="twin-000")
    params = init_params(policy_spec(SMALL_PPO), 0)

    free = train_twin(params, twin, seed=3, cfg=SMALL_PPO)
    prox = train_twin(params, twin, seed=3, cfg=SMALL_PPO.model_copy(update={"proximal_mu": 10.0}))

    d_free = np.linalg.norm(free.params - params)
    d_prox = np.linalg.norm(prox.params - params)
    assert d_prox < 0.8 * d_free, (d_prox, d_free)


def test_grad_clipping_is_per_twin() -> None:
    # Twin 0's loss has a huge gradient; twin 1's gradient (0.1 per element, norm 0.17) is under the bound.
    w = torch.zeros(2, 3, requires_grad=True)
    params = {"w": w}
    optimizer = torch.optim.SGD([w], lr=1.0)
    loss = torch.stack([1e6 * w[0].sum(), 0.1 * w[1].sum()])

    optimizer_step(optimizer, params, loss, max_grad_norm=0.5)

    # Twin 0 is clipped to norm 0.5 (each of 3 elements 0.5/sqrt(3)); twin 1 moves by its own gradient.
    torch.testing.assert_close(w[0].detach(), torch.full((3,), -0.5 / math.sqrt(3)), rtol=1e-5, atol=0)
    torch.testing.assert_close(w[1].detach(), torch.full((3,), -0.1))


# ------------------------------------------------------------------------------------- devices
def test_cuda_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = init_params(policy_spec(SMALL_PPO), 0)

    with pytest.raises(DeviceError, match=r"'cuda' requested but torch.cuda.is_available\(\) is False"):
        train_twin(params, TwinSpec(id="twin-000"), 0, SMALL_PPO, device="cuda")
    with pytest.raises(FedtwinError, match="use 'cpu' or 'cuda'"):
        train_twin(params, TwinSpec(id="twin-000"), 0, SMALL_PPO, device="tpu")
