"""The torch CartPole backend (fedtwin/sim/cartpole_torch.py) against the NumPy env, and the device rollout.

All on the CPU, in float64 where compared with NumPy (float32 for the episode statistics a GPU run
would use). The torch backend's random streams are its own, so trajectories are compared from
identical states: the NumPy env's reset states are copied into the torch env, and the torch env's
autoreset states back into the NumPy env.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtwin.learn.batched import Params, StackedPolicy
from fedtwin.learn.device_rollout import DeviceCollector
from fedtwin.learn.rollout import sample_actions
from fedtwin.policy.layout import PolicySpec, layout_for
from fedtwin.policy.network import PolicyNet, init_params
from fedtwin.sim.cartpole_torch import (
    STREAM_POLICY,
    TorchTwinCartPole,
    counter_bits,
    env_keys,
    physics_step,
    to_normal,
    to_uniform,
)
from fedtwin.sim.envs import TwinCartPoleVectorEnv
from fedtwin.sim.twins import TwinSpec, generate_twins

torch.set_num_threads(1)


def mixed_twins(count: int) -> list[TwinSpec]:
    """Generated twins (±30 % masses, lengths, force, gravity) with friction and action delays mixed in;
    no noise, so that trajectories are deterministic given states and actions."""
    twins = generate_twins(count, seed=3, spread=0.3)
    out = []
    for k, t in enumerate(twins):
        extra = {"friction_cart": 0.05 * (k % 3), "friction_pole": 1e-3 * (k % 2), "action_delay": k % 3,
                 "tau": t.tau * (1.0 + 0.1 * (k % 4))}
        out.append(TwinSpec(**{**t.__dict__, **extra}))
    return out


def controller(obs: np.ndarray, rng: np.random.Generator, explore: float) -> np.ndarray:
    """A balancing policy with random flips: episodes that terminate early and ones that get truncated."""
    greedy = (obs[..., 2] + 0.5 * obs[..., 3] + 0.05 * obs[..., 0] + 0.1 * obs[..., 1] > 0).astype(np.int64)
    return np.where(rng.random(greedy.shape) < explore, 1 - greedy, greedy)


def test_physics_step_matches_numpy_for_random_states() -> None:
    """One step from states spread over the whole box (not only near the start states), both pushes."""
    twins = mixed_twins(48)
    ref = TwinCartPoleVectorEnv(twins, envs_per_twin=4)
    ref.reset(seed=0)
    rng = np.random.default_rng(0)
    state = rng.uniform(-1.0, 1.0, size=(4, ref.num_envs)) * np.array([[2.0], [2.0], [0.12], [1.5]])
    actions = rng.integers(0, 2, ref.num_envs)
    ref.state[:] = state  # a fresh episode's first action is applied at once, delay or not
    _, _, term, trunc, _ = ref.step(actions)
    assert not (term | trunc).any()
    env = TorchTwinCartPole(twins, envs_per_twin=4)
    force = torch.where(torch.as_tensor(actions) == 1, env.p.force_mag, -env.p.force_mag)
    got = physics_step(torch.as_tensor(state), force, env.p).numpy()
    np.testing.assert_allclose(got, ref.state, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("envs_per_twin", [1, 3])
def test_trajectories_match_numpy_with_termination_truncation_and_autoreset(envs_per_twin: int) -> None:
    twins = mixed_twins(40)
    max_steps = 60
    ref = TwinCartPoleVectorEnv(twins, envs_per_twin=envs_per_twin, max_episode_steps=max_steps)
    env = TorchTwinCartPole(twins, envs_per_twin=envs_per_twin, max_episode_steps=max_steps)
    obs, _ = ref.reset(seed=1)
    env.reset(seed=1)
    env.state.copy_(torch.as_tensor(ref.state))
    rng = np.random.default_rng(2)
    terminations = truncations = 0
    for _ in range(240):
        actions = controller(obs, rng, explore=0.3)
        obs, _, term, trunc, info = ref.step(actions)
        out = env.step(torch.as_tensor(actions))
        np.testing.assert_array_equal(out.terminated.numpy(), term)
        np.testing.assert_array_equal(out.truncated.numpy(), trunc)
        final = info.get("final_obs", obs)
        np.testing.assert_allclose(out.final_obs.numpy(), final, rtol=1e-6, atol=1e-6)
        done = term | trunc
        expected_length = np.where(done, info.get("episode_length", 0), 0)
        np.testing.assert_array_equal(out.episode_length.numpy(), expected_length)
        np.testing.assert_array_equal(out.reward.numpy(), np.ones(env.num_envs, dtype=np.float32))
        # Not done: the true states agree to rounding; done: the torch env restarted from its own stream.
        np.testing.assert_allclose(env.state.numpy()[:, ~done], ref.state[:, ~done], rtol=1e-9, atol=1e-11)
        restarted = env.state.numpy()[:, done]
        assert np.all(np.abs(restarted) <= 0.05)
        np.testing.assert_array_equal(out.obs.numpy()[done], restarted.T.astype(np.float32))
        ref.state[:, done] = restarted  # the NumPy env goes on from the torch env's start states
        obs = np.where(done[:, None], out.obs.numpy(), obs)
        terminations += int(term.sum())
        truncations += int(trunc.sum())
    assert terminations > 50 and truncations > 10, (terminations, truncations)


def episode_lengths_numpy(twins: list[TwinSpec], envs_per_twin: int, steps: int) -> np.ndarray:
    env = TwinCartPoleVectorEnv(twins, envs_per_twin=envs_per_twin)
    env.reset(seed=5)
    rng = np.random.default_rng(6)
    lengths = []
    for _ in range(steps):
        _, _, _, _, info = env.step(rng.integers(0, 2, env.num_envs))
        if "_episode" in info:
            lengths.append(info["episode_length"][info["_episode"]])
    return np.concatenate(lengths)


def episode_lengths_torch(twins: list[TwinSpec], envs_per_twin: int, steps: int, dtype: torch.dtype,
                          device: str = "cpu") -> np.ndarray:
    env = TorchTwinCartPole(twins, envs_per_twin=envs_per_twin, dtype=dtype, device=device)
    env.reset(seed=5)
    gen = torch.Generator().manual_seed(6)
    actions = torch.randint(0, 2, (steps, env.num_envs), generator=gen).to(device)
    lengths = torch.zeros(steps, env.num_envs, dtype=torch.int32, device=device)
    for t in range(steps):
        lengths[t] = env.step(actions[t]).episode_length
    return lengths[lengths > 0].cpu().numpy()


@pytest.mark.parametrize("preset", ["default", "hard"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_random_policy_episode_statistics_agree_with_numpy(preset: str, dtype: torch.dtype) -> None:
    """The hard preset has sensor and actuator noise and delays: streams differ, statistics must not."""
    twins = generate_twins(256, seed=9, preset=preset)  # type: ignore[arg-type]
    ref = episode_lengths_numpy(twins, 4, 80)
    got = episode_lengths_torch(twins, 4, 80, dtype)
    assert ref.size > 3000 and got.size > 3000
    standard_error = np.hypot(ref.std() / np.sqrt(ref.size), got.std() / np.sqrt(got.size))
    assert abs(got.mean() - ref.mean()) < 4 * standard_error, (got.mean(), ref.mean(), standard_error)
    # The whole distribution, not only its mean: quartiles within one step.
    np.testing.assert_allclose(np.percentile(got, [25, 50, 75]), np.percentile(ref, [25, 50, 75]), atol=1.0)


def test_sensor_noise_is_on_observations_only_with_the_twins_std() -> None:
    sigma = 0.02
    twins = [TwinSpec(id="quiet"), TwinSpec(id="noisy", sensor_noise=sigma)]
    env = TorchTwinCartPole(twins, envs_per_twin=2000)
    env.reset(seed=0)
    out = env.step(torch.ones(env.num_envs, dtype=torch.int64))
    error = out.final_obs.double() - env.state.t()
    quiet, noisy = error[:2000], error[2000:]
    assert quiet.abs().max() < 1e-7  # float32 rounding only
    assert abs(noisy.std().item() - sigma) < 0.05 * sigma
    assert abs(noisy.mean().item()) < 0.05 * sigma


def test_actuator_noise_changes_the_force_by_its_relative_std() -> None:
    sigma = 0.1
    twins = [TwinSpec(id="exact"), TwinSpec(id="shaky", actuator_noise=sigma)]
    env = TorchTwinCartPole(twins, envs_per_twin=4000)
    env.reset(seed=0)
    env.state.zero_()  # at rest and upright, the cart's acceleration is proportional to the force
    env.step(torch.ones(env.num_envs, dtype=torch.int64))
    exact, shaky = env.state[1, :4000], env.state[1, 4000:]
    assert torch.all(exact == exact[0]) and exact[0] > 0
    factor = shaky / exact[0]  # 1 + sigma * N(0, 1)
    assert abs(factor.std().item() - sigma) < 0.05 * sigma
    assert abs(factor.mean().item() - 1.0) < 0.01


def test_a_seed_reproduces_and_a_twin_ignores_its_neighbours() -> None:
    twins = generate_twins(6, seed=1, preset="hard")

    def run(fleet: list[TwinSpec], seed: int | list[int]) -> torch.Tensor:
        env = TorchTwinCartPole(fleet, envs_per_twin=2)
        obs = [env.reset(seed=seed)]
        for t in range(120):
            obs.append(env.step(torch.tensor([(t // 3 + i) % 2 for i in range(env.num_envs)])).obs)
        return torch.stack(obs)

    first = run(twins, 11)
    assert torch.equal(first, run(twins, 11))
    assert not torch.equal(first, run(twins, 12))
    # twin 0 alone with its seed: the same trajectory as among five others (actions alike per sub-env)
    alone = run(twins[:1], 11)
    assert torch.equal(alone, first[:, :2])
    assert torch.equal(run(twins[2:4], [13, 14]), first[:, 4:8])


def test_counter_streams_are_uniform_and_normal() -> None:
    keys = env_keys(list(range(64)), 4, torch.device("cpu"))
    bits = counter_bits(keys, STREAM_POLICY, torch.tensor(7), 400)
    u = to_uniform(bits, torch.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    z = to_normal(bits, torch.float32)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1.0) < 0.01
    again = counter_bits(keys, STREAM_POLICY, torch.tensor(8), 400)
    assert (again == bits).float().mean() < 1e-3  # another counter: other values


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="one seed per twin"):
        TorchTwinCartPole([TwinSpec(id="a"), TwinSpec(id="b")]).reset(seed=[1])
    with pytest.raises(ValueError, match="dtype must be"):
        TorchTwinCartPole([TwinSpec(id="a")], dtype=torch.float16)
    with pytest.raises(ValueError, match="envs_per_twin"):
        TorchTwinCartPole([TwinSpec(id="a")], envs_per_twin=0)
    with pytest.raises(RuntimeError, match="reset"):
        TorchTwinCartPole([TwinSpec(id="a")]).step(torch.zeros(1, dtype=torch.int64))


def fleet_policy(kind: str, k: int) -> tuple[StackedPolicy, Params]:
    """The fleet engine's network: K twins' parameters stacked (each twin perturbed, so they differ)."""
    spec = PolicySpec(kind, (16, 16))  # type: ignore[arg-type]
    flat = torch.as_tensor(init_params(spec, 0)).repeat(k, 1)
    flat += 0.3 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(1))
    return StackedPolicy(PolicyNet(spec)), layout_for(spec).to_dict(flat)


@pytest.mark.parametrize("kind", ["actor_critic", "reinforce"])
def test_device_rollout_matches_a_step_by_step_loop(kind: str) -> None:
    twins, e, steps = generate_twins(5, seed=2, preset="hard"), 3, 40
    net, params = fleet_policy(kind, len(twins))
    collector = DeviceCollector(TorchTwinCartPole(twins, envs_per_twin=e, max_episode_steps=25), net, steps)
    collector.reset(seed=4)
    names = ("obs", "actions", "logprobs", "values", "rewards", "next_obs", "terminated", "dones")
    ro = collector.collect(params)
    first = {name: getattr(ro, name).clone() for name in names}
    ro = collector.collect(params)  # the second rollout goes on from the first one's last observation
    k = len(twins)
    assert ro.obs.shape == (steps, k, e, 4) and ro.next_obs.shape == (steps, k, e, 4)
    assert all(x.shape == (steps, k, e) for x in (ro.actions, ro.logprobs, ro.values, ro.rewards, ro.dones))
    assert ro.actions.dtype == torch.int64 and ro.episode_lengths.dtype == torch.int32

    env = TorchTwinCartPole(twins, envs_per_twin=e, max_episode_steps=25)
    obs = env.reset(seed=4)
    assert env.keys is not None
    lengths: list[list[int]] = [[] for _ in range(k)]
    for t in range(2 * steps):
        expect = first if t < steps else {n: getattr(ro, n) for n in names}
        i = t % steps
        view = obs.view(k, e, 4)
        torch.testing.assert_close(expect["obs"][i], view, rtol=0, atol=0)
        logits = net.logits(params, view)
        u = to_uniform(counter_bits(env.keys, STREAM_POLICY, torch.tensor(t), 1)[0], torch.float32)
        action = sample_actions(logits, u.view(k, e))
        torch.testing.assert_close(expect["actions"][i], action, rtol=0, atol=0, msg=f"t={t}")
        logp = torch.log_softmax(logits, -1).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(expect["logprobs"][i], logp)
        value = net.value(params, view) if kind == "actor_critic" else torch.zeros(k, e)
        torch.testing.assert_close(expect["values"][i], value)
        out = env.step(action.view(-1))
        torch.testing.assert_close(expect["next_obs"][i], out.final_obs.view(k, e, 4), rtol=0, atol=0)
        torch.testing.assert_close(expect["terminated"][i], out.terminated.view(k, e).float())
        torch.testing.assert_close(expect["dones"][i], (out.terminated | out.truncated).view(k, e).float())
        torch.testing.assert_close(expect["rewards"][i], torch.ones(k, e))
        if t >= steps:
            for j in out.episode_length.nonzero().flatten().tolist():
                lengths[j // e].append(int(out.episode_length[j]))
        obs = out.obs
    assert first["dones"].sum() > 0 and ro.dones.sum() > 0
    host = ro.to_rollout()
    assert host.episode_lengths == lengths
    assert host.episode_returns == [[float(v) for v in x] for x in lengths]
    count, mean = ro.episode_stats()
    assert count.tolist() == [len(x) for x in lengths]
    torch.testing.assert_close(mean, torch.tensor([sum(x) / len(x) if x else float("nan") for x in lengths]),
                               equal_nan=True)
    assert host.obs is ro.obs  # shared, not copied


def test_device_rollout_of_the_fleet_engine_trains_with_ppo() -> None:
    """The device rollout feeds the fleet engine's PPO update as it is: the hook the torch backend needs."""
    from fedtwin.config import TrainConfig
    from fedtwin.learn.ppo import ppo_update

    cfg = TrainConfig(num_envs=2, num_steps=16, epochs=1, minibatches=2)
    twins = generate_twins(3, seed=0)
    net, params = fleet_policy("actor_critic", len(twins))
    params = {n: p.clone().requires_grad_() for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}
    collector = DeviceCollector(TorchTwinCartPole(twins, envs_per_twin=2), net, cfg.num_steps)
    collector.reset(seed=0)
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    stats = ppo_update(net, params, before, optimizer, collector.collect(params).to_rollout(),
                       [np.random.default_rng(s) for s in range(3)], cfg)
    assert all(torch.isfinite(torch.stack(v)).all() for v in stats.values())
    assert all(not torch.equal(params[n].detach(), before[n]) for n in params)


def test_minibatch_orderings_are_per_twin_permutations_drawn_from_its_own_key() -> None:
    """The torch backend's PPO epochs shuffle on the device: every row a permutation, a new one each
    epoch, a twin's orderings independent of its neighbours, a seed reproducing them."""
    twins = generate_twins(3, seed=0)
    net, _ = fleet_policy("actor_critic", 3)

    def orderings(fleet: list[TwinSpec], seeds: list[int]) -> list[torch.Tensor]:
        collector = DeviceCollector(TorchTwinCartPole(fleet, envs_per_twin=2), net, 8)
        collector.reset(seed=seeds)
        return [collector.permutations(64) for _ in range(2)]

    first, again = orderings(twins, [5, 6, 7]), orderings(twins, [5, 6, 7])
    alone = orderings(twins[1:2], [6])
    for epoch, (a, b) in enumerate(zip(first, again, strict=True)):
        assert a.shape == (3, 64) and torch.equal(a, b)
        assert all(torch.equal(row.sort().values, torch.arange(64)) for row in a)
        assert torch.equal(a[1], alone[epoch][0])
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0][0], first[0][1])


# --- on a GPU (skipped without CUDA; benchmarks/gpu_check.sh runs them) ---
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_float64_follows_the_cpu() -> None:
    """Same streams (integer hashing is exact on both), same equations: CUDA's sin/cos differ by ulps only."""
    twins = generate_twins(64, seed=4, preset="hard")
    cpu, gpu = (TorchTwinCartPole(twins, envs_per_twin=2, dtype=torch.float64, device=d)
                for d in ("cpu", "cuda"))
    torch.testing.assert_close(gpu.reset(seed=3).cpu(), cpu.reset(seed=3))
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        actions = torch.randint(0, 2, (cpu.num_envs,), generator=gen)
        a, b = cpu.step(actions), gpu.step(actions.cuda())
        torch.testing.assert_close(b.final_obs.cpu(), a.final_obs, rtol=1e-5, atol=1e-5)
        assert torch.equal(b.terminated.cpu(), a.terminated) and torch.equal(b.truncated.cpu(), a.truncated)


@cuda
@pytest.mark.parametrize("preset", ["default", "hard"])
def test_cuda_float32_episode_statistics_agree_with_numpy(preset: str) -> None:
    twins = generate_twins(256, seed=9, preset=preset)  # type: ignore[arg-type]
    ref = episode_lengths_numpy(twins, 4, 80)
    got = episode_lengths_torch(twins, 4, 80, torch.float32, "cuda")
    standard_error = np.hypot(ref.std() / np.sqrt(ref.size), got.std() / np.sqrt(got.size))
    assert abs(got.mean() - ref.mean()) < 4 * standard_error, (got.mean(), ref.mean(), standard_error)


@cuda
def test_cuda_graph_replay_equals_the_eager_rollout() -> None:
    twins = generate_twins(8, seed=2, preset="hard")
    net, params = fleet_policy("actor_critic", len(twins))
    params = {n: p.cuda() for n, p in params.items()}
    eager, graphed = (DeviceCollector(TorchTwinCartPole(twins, envs_per_twin=3, device="cuda"), net, 16)
                      for _ in range(2))
    eager.reset(seed=1)
    graphed.reset(seed=1)
    graphed.capture(params, warmup=2)  # the warm-up collects advance it by two rollouts
    for _ in range(2):
        eager.collect(params)
    for _ in range(2):
        want, got = eager.collect(params), graphed.collect(params)
        for name in ("obs", "actions", "logprobs", "values", "next_obs", "dones", "episode_lengths"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), msg=name)


@cuda
def test_device_rollout_never_waits_for_the_host() -> None:
    """No step of a rollout reads a value back (an .item(), a nonzero, a copy to the CPU would raise here)."""
    twins = generate_twins(16, seed=2, preset="hard")
    net, params = fleet_policy("actor_critic", len(twins))
    params = {n: p.cuda() for n, p in params.items()}
    collector = DeviceCollector(TorchTwinCartPole(twins, envs_per_twin=4, device="cuda"), net, 32)
    collector.reset(seed=0)
    collector.collect(params)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ro = collector.collect(params)
        collector.permutations(128)  # the PPO epochs' orderings are drawn there too
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ro.dones.sum().item() > 0
