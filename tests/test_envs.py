"""Per-twin CartPole (fedtwin/sim/envs.py): gymnasium parity, batching independence, imperfections,
autoreset."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from collections.abc import Iterator

import gymnasium
import numpy as np
import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

import fedtwin.sim.envs as envs
from fedtwin.sim import cartpole_kernel, streams
from fedtwin.sim.envs import ENV_ID, TwinCartPoleEnv, TwinCartPoleVectorEnv
from fedtwin.sim.twins import TwinSpec, generate_twins

DEFAULT = TwinSpec(id="default")


def controller(obs: np.ndarray, rng: np.random.Generator, explore: float) -> np.ndarray:
    """A balancing policy (it survives 500 steps) with some random actions: long and short episodes."""
    greedy = (obs[..., 2] + 0.5 * obs[..., 3] + 0.05 * obs[..., 0] + 0.1 * obs[..., 1] > 0).astype(np.int64)
    flip = rng.random(greedy.shape) < explore
    return np.where(flip, 1 - greedy, greedy)


@pytest.fixture(autouse=True, params=["kernel", "numpy"])
def step_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both step paths: the compiled kernel (numba) and the NumPy ufuncs."""
    monkeypatch.setenv(cartpole_kernel.KERNEL_ENV, "numba" if request.param == "kernel" else "numpy")
    if request.param == "kernel" and cartpole_kernel.compiled_step() is None:
        pytest.fail("the compiled step is not available: install the dev extras (numba)")
    return str(request.param)


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiny pre-draw buffers, sized differently for different env sizes: refills happen often and at
    different steps, so the tests see that chunking never changes a value."""
    monkeypatch.setattr(streams, "_STREAM_BUFFER_VALUES", 100)
    monkeypatch.setattr(streams, "_NOISE_BLOCK_BYTES", 4 * streams.NOISE_SLOTS * 4 * 7)  # 7 steps for 4 envs
    yield


# ------------------------------------------------------------------------------ gymnasium parity


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_env_equals_gymnasium_cartpole_v1(seed: int) -> None:
    # Prepare
    theirs = gymnasium.make("CartPole-v1")
    ours = gymnasium.make(ENV_ID)
    rng = np.random.default_rng(seed)
    episodes, truncations, steps = 0, 0, 0

    # Execute / Assert: identical floats, rewards and episode ends, step by step, over several episodes
    obs_theirs, _ = theirs.reset(seed=seed)
    obs_ours, _ = ours.reset(seed=seed)
    assert np.array_equal(obs_theirs, obs_ours) and obs_ours.dtype == np.float32
    while episodes < 6:
        action = int(controller(obs_theirs, rng, explore=0.15 if episodes % 2 else 0.02))
        *out_theirs, _ = theirs.step(action)
        *out_ours, _ = ours.step(action)
        steps += 1
        assert np.array_equal(out_theirs[0], out_ours[0])
        assert out_theirs[1:] == out_ours[1:]
        obs_theirs = out_theirs[0]
        if out_theirs[2] or out_theirs[3]:
            episodes += 1
            truncations += out_theirs[3]
            obs_theirs, _ = theirs.reset()
            obs_ours, _ = ours.reset()
            assert np.array_equal(obs_theirs, obs_ours)
    assert truncations >= 1 and steps > 1000  # long episodes and a 500-step truncation were compared


def test_registration_survives_reimport() -> None:
    importlib.reload(envs)

    spec = gymnasium.spec(ENV_ID)

    assert spec.max_episode_steps == 500
    assert spec.entry_point == "fedtwin.sim.envs:TwinCartPoleEnv"


@pytest.mark.parametrize("n", [1, 7, 256])
def test_vector_env_equals_gymnasium_vector_env_until_first_reset(n: int) -> None:
    # Prepare: gymnasium's CartPoleVectorEnv resets NEXT_STEP, ours SAME_STEP
    theirs = CartPoleVectorEnv(num_envs=n)
    ours = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=n)
    rng = np.random.default_rng(n)
    obs_theirs, _ = theirs.reset(seed=42)
    obs_ours, _ = ours.reset(seed=42)
    assert np.array_equal(obs_theirs, obs_ours)

    # Execute / Assert
    for _ in range(100):
        actions = rng.integers(0, 2, size=n)
        obs_theirs, reward_theirs, term_theirs, trunc_theirs, _ = theirs.step(actions)
        obs_ours, reward_ours, term_ours, trunc_ours, info = ours.step(actions)
        assert np.array_equal(reward_theirs, reward_ours) and reward_ours.dtype == np.float32
        assert np.array_equal(term_theirs, term_ours) and np.array_equal(trunc_theirs, trunc_ours)
        done = term_theirs | trunc_theirs
        if done.any():
            # Terminal observations match; gymnasium's next step shows the reset states we returned now.
            assert np.array_equal(info["final_obs"], obs_theirs)
            assert np.array_equal(info["_final_obs"], done)
            assert np.array_equal(obs_ours[~done], obs_theirs[~done])
            reset_theirs, *_ = theirs.step(actions)
            assert np.array_equal(obs_ours[done], reset_theirs[done])
            return
        assert np.array_equal(obs_theirs, obs_ours)
    pytest.fail("no episode ended")


def test_one_env_vector_equals_gymnasium_single_env_across_many_episodes(small_buffers: None) -> None:
    # Prepare: autoreset draws come from the same stream as gymnasium's reset() calls
    theirs = gymnasium.make("CartPole-v1")
    ours = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=1)
    rng = np.random.default_rng(5)
    obs, _ = theirs.reset(seed=9)
    obs_ours, _ = ours.reset(seed=9)
    assert np.array_equal(obs, obs_ours[0])
    episodes = truncations = 0

    # Execute / Assert
    while episodes < 25:
        action = int(controller(obs, rng, explore=0.3 if episodes % 5 else 0.0))
        obs, reward, terminated, truncated, _ = theirs.step(action)
        obs_ours, reward_ours, term_ours, trunc_ours, info = ours.step(np.array([action]))
        assert (reward, terminated, truncated) == (reward_ours[0], term_ours[0], trunc_ours[0])
        if terminated or truncated:
            episodes += 1
            truncations += truncated
            assert np.array_equal(info["final_obs"][0], obs)
            assert info["_episode"][0] and info["episode_length"][0] == info["episode_return"][0]
            obs, _ = theirs.reset()
        assert np.array_equal(obs, obs_ours[0])
    assert truncations >= 3


def test_new_reset_bounds_draw_what_gymnasium_draws(small_buffers: None) -> None:
    # Prepare: values drawn ahead with the old bounds must not leak into the new ones
    theirs = gymnasium.make("CartPole-v1")
    ours = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=1)
    theirs.reset(seed=3)
    ours.reset(seed=3)
    for _ in range(7):
        theirs.reset()
        ours.reset()

    # Execute
    wide = {"low": -0.2, "high": 0.2}
    obs_theirs = [theirs.reset(options=wide)[0] for _ in range(3)] + [theirs.reset()[0]]
    obs_ours = [ours.reset(options=wide)[0][0] for _ in range(3)] + [ours.reset()[0][0]]

    # Assert
    assert np.array_equal(np.array(obs_theirs), np.array(obs_ours))
    assert np.abs(obs_ours[0]).max() > 0.05


def test_spaces_and_metadata_follow_gymnasium() -> None:
    env = TwinCartPoleVectorEnv([DEFAULT, TwinSpec(id="b")], envs_per_twin=3)
    theirs = CartPoleVectorEnv(num_envs=6)

    assert env.num_envs == 6
    assert env.single_observation_space == theirs.single_observation_space
    assert env.observation_space == theirs.observation_space
    assert env.action_space == theirs.action_space
    assert env.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP


# ------------------------------------------------------------------------ batching independence


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_twin_alone_equals_twin_among_others(preset: str, small_buffers: None) -> None:
    # Prepare: twin 1 alone, and twin 1 between two others, with the same seed, envs and actions
    twins = generate_twins(3, seed=5, preset=preset)
    if preset == "hard":
        assert all(t.sensor_noise > 0 and t.actuator_noise > 0 for t in twins)
        assert {t.action_delay for t in twins} == {0, 1}
    fleet = TwinCartPoleVectorEnv(twins, envs_per_twin=4)
    alone = TwinCartPoleVectorEnv([twins[1]], envs_per_twin=4)
    mine = slice(4, 8)
    obs_fleet, _ = fleet.reset(seed=[10, 11, 12])
    obs_alone, _ = alone.reset(seed=11)
    assert np.array_equal(obs_fleet[mine], obs_alone)
    rng = np.random.default_rng(0)
    finished = 0

    # Execute / Assert
    for _ in range(400):
        actions = rng.integers(0, 2, size=12)
        out_fleet = fleet.step(actions)
        out_alone = alone.step(actions[mine])
        for mine_fleet, theirs_alone in zip(out_fleet[:4], out_alone[:4], strict=True):
            assert np.array_equal(mine_fleet[mine], theirs_alone)
        if "final_obs" in out_alone[4]:
            finished += out_alone[4]["_final_obs"].sum()
            for key in ("final_obs", "_final_obs", "episode_return", "episode_length"):
                assert np.array_equal(out_fleet[4][key][mine], out_alone[4][key])
    obs, _ = fleet.reset()  # an explicit reset continues every stream alike
    assert np.array_equal(obs[mine], alone.reset()[0])
    assert finished > 30  # many resets (and buffer refills) were compared


def test_single_env_equals_one_env_vector_env_with_noise(small_buffers: None) -> None:
    # Prepare: a noisy, delayed, frictional twin
    twin = TwinSpec(id="rough", sensor_noise=0.02, actuator_noise=0.1, action_delay=1, friction_cart=0.05)
    single = TwinCartPoleEnv(twin)
    vector = TwinCartPoleVectorEnv([twin], envs_per_twin=1)
    obs, _ = single.reset(seed=4)
    assert np.array_equal(obs, vector.reset(seed=4)[0][0])
    rng = np.random.default_rng(3)
    episodes = 0

    # Execute / Assert
    while episodes < 15:
        action = int(rng.integers(2))
        obs, reward, terminated, _, _ = single.step(action)
        obs_v, reward_v, term_v, _, info = vector.step(np.array([action]))
        assert terminated == term_v[0] and reward == reward_v[0]
        if terminated:
            episodes += 1
            assert np.array_equal(obs, info["final_obs"][0])
            obs, _ = single.reset()
        assert np.array_equal(obs, obs_v[0])


def test_same_seed_same_rollout_and_other_seed_other_rollout() -> None:
    def rollout(seed: int) -> np.ndarray:
        env = TwinCartPoleVectorEnv(generate_twins(2, seed=1, preset="hard"), envs_per_twin=3)
        rng = np.random.default_rng(0)
        frames = [env.reset(seed=seed)[0]]
        frames += [env.step(rng.integers(0, 2, size=6))[0] for _ in range(80)]
        return np.stack(frames)

    first = rollout(7)

    assert np.array_equal(first, rollout(7))
    assert not np.array_equal(first, rollout(8))


def test_seeds_per_twin() -> None:
    env = TwinCartPoleVectorEnv([DEFAULT, DEFAULT], envs_per_twin=2)

    by_int, _ = env.reset(seed=5)
    by_list, _ = env.reset(seed=[5, 6])
    swapped, _ = env.reset(seed=[6, 5])

    assert np.array_equal(by_int, by_list)
    assert np.array_equal(swapped[:2], by_list[2:]) and np.array_equal(swapped[2:], by_list[:2])
    with pytest.raises(ValueError, match="one seed per twin"):
        env.reset(seed=[1, 2, 3])


# ------------------------------------------------------------------------------ per-twin physics


def barto_step(state: list[float], action: int, twin: TwinSpec) -> list[float]:
    """One Euler step of Barto, Sutton & Anderson (1983) by hand, in gymnasium's sign convention."""
    x, x_dot, theta, theta_dot = state
    force = twin.force_mag if action == 1 else -twin.force_mag
    m, ml, total = twin.masspole, twin.masspole * twin.length, twin.masspole + twin.masscart
    cos, sin = math.cos(theta), math.sin(theta)
    temp = (force + ml * theta_dot**2 * sin - twin.friction_cart * math.copysign(1.0, x_dot)) / total
    thetaacc = (twin.gravity * sin - cos * temp - twin.friction_pole * theta_dot / ml) / (
        twin.length * (4.0 / 3.0 - m * cos**2 / total)
    )
    xacc = temp - ml * thetaacc * cos / total
    tau = twin.tau
    return [x + tau * x_dot, x_dot + tau * xacc, theta + tau * theta_dot, theta_dot + tau * thetaacc]


@pytest.mark.parametrize(
    "twin",
    [
        TwinSpec(id="plain"),
        TwinSpec(id="rough", friction_cart=0.3, friction_pole=0.004, masspole=0.2, length=0.7, gravity=11.0),
    ],
)
def test_one_step_matches_hand_computed_barto_dynamics(twin: TwinSpec) -> None:
    # Prepare
    env = TwinCartPoleVectorEnv([twin], envs_per_twin=2)
    env.reset(seed=0)
    start = [[0.1, -0.3], [0.5, -0.4], [0.1, -0.05], [-0.2, 0.7]]
    env.state[:] = start

    # Execute
    env.step(np.array([1, 0]))

    # Assert
    for i, action in enumerate((1, 0)):
        expected = barto_step([row[i] for row in start], action, twin)
        assert env.state[:, i].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_physics_arrays_use_product_for_polemass_length() -> None:
    twins = [TwinSpec(id="a"), TwinSpec(id="b", masspole=0.2, length=0.6)]

    physics = TwinCartPoleVectorEnv(twins, envs_per_twin=2).physics

    assert physics.polemass_length.tolist() == [0.05, 0.05, pytest.approx(0.12), pytest.approx(0.12)]
    assert physics.total_mass.tolist() == [1.1, 1.1, pytest.approx(1.2), pytest.approx(1.2)]


@pytest.mark.parametrize("field", ["friction_cart", "friction_pole", "actuator_noise"])
def test_imperfections_change_the_dynamics(field: str) -> None:
    # Prepare: the same seed and actions, with and without the imperfection
    value = {"friction_cart": 0.1, "friction_pole": 0.003, "actuator_noise": 0.1}[field]
    env = TwinCartPoleVectorEnv([DEFAULT, TwinSpec(id="rough", **{field: value})], envs_per_twin=1)
    env.reset(seed=[3, 3])
    actions = np.random.default_rng(1).integers(0, 2, size=20)

    # Execute
    for a in actions:
        env.step(np.array([a, a]))

    # Assert: same start, different states, still close (small imperfections)
    assert not np.array_equal(env.state[:, 0], env.state[:, 1])
    assert np.abs(env.state[:, 0] - env.state[:, 1]).max() < 0.5


def test_sensor_noise_touches_observations_not_state() -> None:
    noisy = TwinCartPoleVectorEnv([TwinSpec(id="noisy", sensor_noise=0.01)], envs_per_twin=64)
    clean = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=64)
    obs_noisy, _ = noisy.reset(seed=2)
    clean.reset(seed=2)
    actions = np.zeros(64, dtype=np.int64)

    obs_noisy, *_ = noisy.step(actions)
    clean.step(actions)

    assert np.array_equal(noisy.state, clean.state)
    error = obs_noisy - noisy.state.T
    assert 0.005 < error.std() < 0.015 and abs(error.mean()) < 0.003


def test_action_delay_applies_the_action_chosen_steps_earlier() -> None:
    # Prepare: a delay of 1 applies [a0, a0, a1, a2, ...]
    delayed = TwinCartPoleVectorEnv([TwinSpec(id="slow", action_delay=1)], envs_per_twin=1)
    prompt = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=1)
    delayed.reset(seed=1)
    prompt.reset(seed=1)
    chosen = [1, 0, 0, 1, 1, 0]
    applied = [1, 1, 0, 0, 1, 1]

    # Execute / Assert
    for a_chosen, a_applied in zip(chosen, applied, strict=True):
        delayed.step(np.array([a_chosen]))
        prompt.step(np.array([a_applied]))
        assert np.array_equal(delayed.state, prompt.state)


# ------------------------------------------------------------------------- episodes and resets


def test_truncation_at_500_steps() -> None:
    env = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=4)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)

    for step in range(1, 501):
        obs, _, terminated, truncated, info = env.step(controller(obs, rng, explore=0.0))
        assert not terminated.any()
        assert truncated.all() == (step == 500)

    assert info["_episode"].all()
    assert info["episode_length"].tolist() == [500] * 4
    assert info["episode_return"].tolist() == [500.0] * 4
    assert np.abs(obs).max() <= 0.05  # every sub-env started over


def test_autoreset_returns_start_states_and_keeps_final_observations() -> None:
    # Prepare: always push right, so episodes end by the pole falling
    env = TwinCartPoleVectorEnv(generate_twins(2, seed=0), envs_per_twin=8)
    env.reset(seed=0)
    lengths = np.zeros(16, dtype=int)

    # Execute
    for _ in range(200):
        obs, reward, terminated, truncated, info = env.step(np.ones(16, dtype=np.int64))
        lengths += 1
        if info:
            break

    # Assert
    done = info["_final_obs"]
    assert np.array_equal(done, terminated | truncated) and np.array_equal(info["_episode"], done)
    final = info["final_obs"]
    assert final.shape == (16, 4) and final.dtype == np.float32
    assert ((np.abs(final[done, 0]) > 2.4) | (np.abs(final[done, 2]) > 12 * 2 * math.pi / 360)).all()
    assert np.abs(obs[done]).max() <= 0.05  # fresh start states
    assert np.array_equal(final[~done], obs[~done])
    assert np.array_equal(info["episode_length"][done], lengths[done])
    assert np.array_equal(info["episode_return"][done], lengths[done].astype(np.float32))
    assert np.array_equal(env.state.T[done].astype(np.float32), obs[done])
    assert reward.tolist() == [1.0] * 16
    # What was handed out stays as it was: later steps and resets use arrays of their own.
    kept = {key: np.copy(value) for key, value in info.items()}
    for _ in range(3):
        env.step(np.ones(16, dtype=np.int64))
    env.reset()
    assert all(np.array_equal(info[key], kept[key]) for key in kept)


def test_step_counter_rebase_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: one env shifts its int32 episode start steps every 7 steps, the other never does
    shifting = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=8, max_episode_steps=20)
    plain = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=8, max_episode_steps=20)
    shifting.reset(seed=4)
    plain.reset(seed=4)
    rng = np.random.default_rng(4)

    # Execute / Assert
    for _ in range(100):
        actions = rng.integers(0, 2, size=8)
        monkeypatch.setattr(envs, "_REBASE_STEPS", 7)
        out_shifting = shifting.step(actions)
        monkeypatch.undo()
        out_plain = plain.step(actions)
        for a, b in zip(out_shifting[:4], out_plain[:4], strict=True):
            assert np.array_equal(a, b)
        assert out_shifting[4].keys() == out_plain[4].keys()
        for key in out_plain[4]:
            assert np.array_equal(out_shifting[4][key], out_plain[4][key])
    assert shifting._t < plain._t


@pytest.mark.parametrize(
    "actions",
    [np.array([0, 2]), np.array([-1, 0]), np.array([0.0, 1.0]), np.array([0, 1, 0]), [[0, 1]]],
)
def test_invalid_actions_are_rejected(actions: object) -> None:
    env = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=2)
    env.reset(seed=0)

    with pytest.raises(ValueError, match="actions must be"):
        env.step(actions)


def test_step_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        TwinCartPoleVectorEnv([DEFAULT]).step(np.array([0]))


def test_bool_and_small_int_actions_work() -> None:
    env = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=2)
    reference = TwinCartPoleVectorEnv([DEFAULT], envs_per_twin=2)
    env.reset(seed=1)
    reference.reset(seed=1)

    env.step(np.array([True, False]))
    env.step(np.array([0, 1], dtype=np.uint8))
    reference.step(np.array([1, 0]))
    reference.step(np.array([0, 1]))

    assert np.array_equal(env.state, reference.state)


def test_envs_module_never_imports_torch() -> None:
    code = "import sys, fedtwin.sim.envs, fedtwin.sim.twins; sys.exit('torch' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

