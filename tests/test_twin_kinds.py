"""Twin kinds (fedtwin/sim/: kinds, kind_registry, kind_env, pendulum, acrobot, gym_kind): gymnasium
parity step by step, per-twin physics, range errors, finding kinds, the protocol check, seeds."""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import gymnasium
import numpy as np
import pytest

from fedtwin.core.errors import ConfigError
from fedtwin.sim import kind_env, kind_registry, kinds
from fedtwin.sim.acrobot import AcrobotKind
from fedtwin.sim.gym_kind import GymnasiumKind
from fedtwin.sim.kind_env import KindVectorEnv, make_vector_env
from fedtwin.sim.kind_registry import get_kind
from fedtwin.sim.kinds import Param, generate_twin, generate_twins, make_twin, twin_from_dict
from fedtwin.sim.pendulum import PendulumKind
from fedtwin.sim.scalar_math import square_like_scalar

PENDULUM, ACROBOT = PendulumKind(), AcrobotKind()


def pendulum_actions(rng: np.random.Generator, n: int, dtype: Any = np.float32) -> np.ndarray:
    """Torques beyond the ±2 range too, so the clip is exercised."""
    return rng.uniform(-2.5, 2.5, size=(n, 1)).astype(dtype)


def acrobot_actions(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pump energy (torque along theta2') with some random actions: episodes that reach the goal."""
    greedy = np.where(obs[:, 5] > 0, 2, 0)
    return np.where(rng.random(len(obs)) < 0.2, rng.integers(0, 3, len(obs)), greedy)


def drive_in_lockstep(
    env: Any, theirs: list[gymnasium.Env], seed: int, steps: int, act: Any
) -> dict[str, int]:
    """Step our vector env and one gymnasium env per twin (seeded seed + k, reset as episodes end) with
    the same actions; assert every observation, reward, flag and final observation equal, exactly."""
    obs, _ = env.reset(seed=seed)
    their_obs = np.stack([e.reset(seed=seed + k)[0] for k, e in enumerate(theirs)])
    np.testing.assert_array_equal(obs, their_obs)
    counts = {"terminated": 0, "truncated": 0}
    for t in range(steps):
        actions = act(obs)
        obs, reward, terminated, truncated, info = env.step(actions)
        for k, e in enumerate(theirs):
            o, r, te, tr, _ = e.step(actions[k])
            assert (reward[k], terminated[k], truncated[k]) == (r, te, tr), f"step {t}, twin {k}"
            if te or tr:
                np.testing.assert_array_equal(info["final_obs"][k], o, err_msg=f"step {t}, twin {k}")
                assert info["episode_length"][k] == e.get_wrapper_attr("_elapsed_steps")
                o, _ = e.reset()
                counts["terminated" if te else "truncated"] += 1
            np.testing.assert_array_equal(obs[k], o, err_msg=f"step {t}, twin {k}")
    return counts


# ------------------------------------------------------------------------------ gymnasium parity


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pendulum_equals_gymnasium_pendulum_v1_per_twin(dtype: Any) -> None:
    # Prepare: 4 default twins, one Pendulum-v1 per twin; float64 actions keep gymnasium in float64
    n, rng = 4, np.random.default_rng(0)
    env = make_vector_env(PENDULUM, [make_twin(PENDULUM, f"p-{k}") for k in range(n)])
    theirs = [gymnasium.make("Pendulum-v1") for _ in range(n)]
    # Execute / Assert: 5 episodes each, every float equal
    counts = drive_in_lockstep(env, theirs, 7, 1000, lambda obs: pendulum_actions(rng, n, dtype))
    assert counts == {"terminated": 0, "truncated": 5 * n}


def test_acrobot_equals_gymnasium_acrobot_v1_per_twin() -> None:
    # Prepare
    n, rng = 3, np.random.default_rng(1)
    env = make_vector_env(ACROBOT, [make_twin(ACROBOT, f"a-{k}") for k in range(n)])
    theirs = [gymnasium.make("Acrobot-v1") for _ in range(n)]
    # Execute
    counts = drive_in_lockstep(env, theirs, 11, 1200, lambda obs: acrobot_actions(obs, rng))
    # Assert: episodes ended both ways, each exactly as gymnasium's
    assert counts["terminated"] >= n


@pytest.mark.parametrize("book_or_nips", ["book", "nips"])
def test_acrobot_derivatives_equal_gymnasiums_on_many_states(book_or_nips: str) -> None:
    # Prepare: states across the whole range; a lock-step run may take thousands of steps to
    # reveal one differently rounded square, these 20,000 states meet dozens of them
    from gymnasium.envs.classic_control.acrobot import AcrobotEnv

    rng = np.random.default_rng(12)
    m = 20_000
    high = np.array([np.pi, np.pi, 4 * np.pi, 9 * np.pi])
    states = rng.uniform(-high, high, size=(m, 4))
    torque = rng.choice([-1.0, 0.0, 1.0], m)
    theirs = AcrobotEnv()
    theirs.book_or_nips = book_or_nips
    kind = AcrobotKind()
    kind.book_or_nips = book_or_nips
    env = make_vector_env(kind, [make_twin(kind, "a-0")], envs_per_twin=m)
    # Execute
    ours = np.stack(kind._dsdt(list(states.T), torque, env.params))
    expected = np.array([theirs._dsdt(np.append(s, a))[:4] for s, a in zip(states, torque, strict=True)])
    # Assert
    np.testing.assert_array_equal(ours.T, expected)


def test_non_default_physics_equal_gymnasium_with_the_same_constants() -> None:
    # Prepare: per-twin masses, lengths, gravity, dt set on gymnasium's envs as attributes
    twins = [
        make_twin(PENDULUM, "p-0", mass=1.3, length=0.8, gravity=9.81, dt=0.04),
        make_twin(PENDULUM, "p-1", mass=0.7, length=1.15),
    ]
    theirs = []
    for t in twins:
        e = gymnasium.make("Pendulum-v1", g=t["gravity"])
        e.unwrapped.m, e.unwrapped.l, e.unwrapped.dt = t["mass"], t["length"], t["dt"]
        theirs.append(e)
    rng = np.random.default_rng(2)
    drive_in_lockstep(make_vector_env(PENDULUM, twins), theirs, 5, 450, lambda obs: pendulum_actions(rng, 2))
    # Acrobot: gymnasium has one moment of inertia for both links and a goal for l1 = 1
    a_twins = [
        make_twin(
            ACROBOT,
            "a-0",
            link_mass_1=1.2,
            link_mass_2=0.9,
            link_com_1=0.45,
            link_com_2=0.55,
            link_moi_1=1.1,
            link_moi_2=1.1,
        ),
        make_twin(ACROBOT, "a-1", link_mass_2=1.3, link_com_2=0.4, link_moi_1=0.8, link_moi_2=0.8),
    ]
    a_theirs = []
    for t in a_twins:
        e = gymnasium.make("Acrobot-v1")
        for attr, name in [
            ("LINK_MASS_1", "link_mass_1"),
            ("LINK_MASS_2", "link_mass_2"),
            ("LINK_COM_POS_1", "link_com_1"),
            ("LINK_COM_POS_2", "link_com_2"),
            ("LINK_MOI", "link_moi_1"),
        ]:
            setattr(e.unwrapped, attr, t[name])
        a_theirs.append(e)
    drive_in_lockstep(
        make_vector_env(ACROBOT, a_twins), a_theirs, 9, 700, lambda obs: acrobot_actions(obs, rng)
    )


@pytest.mark.parametrize(
    ("kind", "env_id", "options"),
    [
        (PENDULUM, "Pendulum-v1", {"x_init": 0.5, "y_init": 0.25}),
        (ACROBOT, "Acrobot-v1", {"low": -0.3, "high": 0.2}),
    ],
    ids=["pendulum", "acrobot"],
)
def test_reset_options_draw_what_gymnasium_draws(kind: Any, env_id: str, options: dict[str, float]) -> None:
    env = make_vector_env(kind, [make_twin(kind, f"t-{k}") for k in range(3)])
    theirs = [gymnasium.make(env_id) for _ in range(3)]
    obs, _ = env.reset(seed=30, options=options)
    expected = np.stack([e.reset(seed=30 + k, options=options)[0] for k, e in enumerate(theirs)])
    np.testing.assert_array_equal(obs, expected)
    np.testing.assert_array_equal(env.state.T, np.stack([e.unwrapped.state for e in theirs]))


def test_several_envs_per_twin_draw_from_the_twins_generator_in_sub_env_order() -> None:
    # Prepare: one twin, 3 sub-envs; gymnasium's Acrobot reset draws 4 values per call
    env = KindVectorEnv(ACROBOT, [make_twin(ACROBOT, "a-0")], envs_per_twin=3)
    gen = np.random.default_rng(np.random.SeedSequence(4))
    # Execute
    obs, _ = env.reset(seed=4)
    # Assert
    expected = np.stack([gen.uniform(-0.1, 0.1, size=4).astype(np.float32) for _ in range(3)])
    np.testing.assert_array_equal(env.state.T, expected.astype(np.float64))
    np.testing.assert_array_equal(obs[:, 4:], expected[:, 2:])


def test_square_like_scalar_is_the_scalar_power_where_x_times_x_is_not() -> None:
    # Prepare: many values; x*x and C's pow(x, 2) disagree on a few of them
    rng = np.random.default_rng(3)
    x64 = rng.normal(size=200_000) * np.exp(rng.uniform(-4, 4, 200_000))
    x32 = x64.astype(np.float32)
    scalar64 = np.array([np.float64(v) ** 2 for v in x64])
    scalar32 = np.array([v**2 for v in x32], dtype=np.float32)
    # Execute / Assert
    assert (x64 * x64 != scalar64).any() or (x32 * x32 != scalar32).any(), "no disagreement to test on"
    np.testing.assert_array_equal(square_like_scalar(x64), scalar64)
    np.testing.assert_array_equal(square_like_scalar(x32), scalar32)


# ------------------------------------------------------------------------------ per-twin physics


@pytest.mark.parametrize("kind", [PENDULUM, ACROBOT], ids=lambda k: k.name)
def test_twins_differ_and_a_twin_is_the_same_alone_or_in_a_fleet(
    kind: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: hard-preset twins (noise, delay, damping) with distinct physics; noise blocks so small
    # that the fleet draws a block per step and the lone twin one per few steps
    monkeypatch.setattr(kind_env, "_NOISE_BLOCK_VALUES", kind.noise_slots * 2 * 7)
    twins = generate_twins(kind, 5, seed=3, preset="hard")
    fleet = make_vector_env(kind, twins, envs_per_twin=2)
    alone = make_vector_env(kind, [twins[2]], envs_per_twin=2)
    rng = np.random.default_rng(4)
    fleet.reset(seed=[10, 11, 12, 13, 14])
    alone.reset(seed=[12])
    # Execute: every twin gets the same actions
    trace_fleet, trace_alone = [], []
    for _ in range(260):
        if kind is PENDULUM:
            a = np.repeat(pendulum_actions(rng, 1), 2, axis=0)
        else:
            a = np.repeat(rng.integers(0, 3, 1), 2)
        obs = fleet.step(np.tile(a, (5, 1)) if kind is PENDULUM else np.tile(a, 5))[0]
        trace_fleet.append(obs.copy())
        trace_alone.append(alone.step(a)[0])
    f, a1 = np.stack(trace_fleet), np.stack(trace_alone)
    # Assert: twin 2 alone equals twin 2 in the fleet; twins with the same actions but other physics differ
    np.testing.assert_array_equal(f[:, 4:6], a1)
    for k in range(5):
        for j in range(k + 1, 5):
            assert not np.array_equal(f[:, 2 * k], f[:, 2 * j]), (k, j)
    assert len({t.values for t in twins}) == 5


def test_physics_change_the_dynamics_not_only_the_seed() -> None:
    # Prepare: two pendulums, same seed and actions, one heavier and longer
    env = make_vector_env(
        PENDULUM, [make_twin(PENDULUM, "p-0"), make_twin(PENDULUM, "p-1", mass=2.0, length=1.4)]
    )
    obs, _ = env.reset(seed=[5, 5])
    np.testing.assert_array_equal(obs[0], obs[1])
    # Execute
    for _ in range(3):
        obs, *_ = env.step(np.full((2, 1), 1.5, dtype=np.float32))
    # Assert
    assert obs[0, 2] != obs[1, 2]


def test_action_delay_applies_the_earlier_command() -> None:
    # Prepare: a delayed twin and a prompt one fed the same commands one step later
    env = make_vector_env(PENDULUM, [make_twin(PENDULUM, "p-0", action_delay=1), make_twin(PENDULUM, "p-1")])
    env.reset(seed=[8, 8])
    commands = np.random.default_rng(5).uniform(-2, 2, 60).astype(np.float32)
    # Execute: the line starts full of the first command
    for t in range(60):
        prompt = commands[max(t - 1, 0)]
        obs, *_ = env.step(np.array([[commands[t]], [prompt]], dtype=np.float32))
        # Assert
        np.testing.assert_array_equal(obs[0], obs[1])


# ------------------------------------------------------------------------------ parameters and ranges


def test_parameters_outside_their_range_are_refused_naming_twin_field_and_fix() -> None:
    with pytest.raises(ConfigError) as exc:
        make_twin(PENDULUM, "pend-007", mass=-1.0)
    message = str(exc.value)
    assert "pend-007" in message and "mass" in message and "(0, inf)" in message and "fleet file" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"'a-1': action_delay = 1.5 must be an integer"):
        make_twin(ACROBOT, "a-1", action_delay=1.5)
    with pytest.raises(ConfigError, match=r"dt = 2.0 is outside the valid range \(0, 1\]"):
        make_twin(ACROBOT, "a-1", dt=2.0)
    with pytest.raises(
        ConfigError, match=r"unknown field\(s\) mas for kind pendulum; valid fields: id, mass"
    ):
        twin_from_dict(PENDULUM, {"id": "p-1", "mas": 2.0})
    with pytest.raises(ConfigError, match="DNS-1123"):
        make_twin(PENDULUM, "Pend_1")


def test_generation_scales_the_scale_parameters_and_the_hard_preset_adds_flaws() -> None:
    # Execute
    plain = generate_twins(PENDULUM, 20, seed=1, spread=0.2)
    hard = generate_twins(PENDULUM, 20, seed=1, spread=0.2, preset="hard")
    # Assert: scaled within ±20 %, hard-only parameters at their defaults unless preset hard
    for t in plain:
        assert 0.8 * 1.0 <= t["mass"] <= 1.2 and 8.0 <= t["gravity"] <= 12.0
        assert t["damping"] == t["sensor_noise"] == t["action_delay"] == 0.0 and t["dt"] == 0.05
    assert len({t["mass"] for t in plain}) == 20
    assert all(0 <= t["damping"] <= 0.05 and t["action_delay"] in (0.0, 1.0) for t in hard)
    assert any(t["sensor_noise"] > 0 for t in hard)
    assert [t["mass"] for t in hard] == [t["mass"] for t in plain]  # same scale draws come first
    # A twin is the same device whatever fleet it is generated in
    assert generate_twin(PENDULUM, "twin-007", seed=1, spread=0.2) == plain[7]


def test_twin_round_trips_through_its_fleet_file_mapping() -> None:
    twin = make_twin(ACROBOT, "a-3", link_mass_2=1.25, action_delay=1)
    data = twin.to_dict(ACROBOT)
    assert data == {"id": "a-3", "link_mass_2": 1.25, "action_delay": 1}
    assert twin_from_dict(ACROBOT, data) == twin


# ------------------------------------------------------------------------------ finding kinds


def test_registry_module_class_and_unknown_kinds() -> None:
    assert isinstance(get_kind("pendulum"), PendulumKind)
    assert isinstance(get_kind("acrobot"), AcrobotKind)
    assert isinstance(get_kind("fedtwin.sim.acrobot:AcrobotKind"), AcrobotKind)
    with pytest.raises(
        ConfigError, match=r"^unknown twin kind 'pendlum'; choose one of acrobot, .*module:Class"
    ):
        get_kind("pendlum")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        get_kind("no_such_module:Kind")
    with pytest.raises(ConfigError, match="has no 'Nope'"):
        get_kind("fedtwin.sim.pendulum:Nope")


def test_a_gymnasium_env_class_is_a_kind_through_gymnasiums_vector_env() -> None:
    # Prepare: gymnasium's own PendulumEnv named as module:Class; its keyword `g` is the parameter
    kind = get_kind("gymnasium.envs.classic_control.pendulum:PendulumEnv")
    assert isinstance(kind, GymnasiumKind)
    assert [p.name for p in kind.params] == ["g"] and kind.max_episode_steps == 200
    twins = [make_twin(kind, "p-0"), make_twin(kind, "p-1", g=9.0)]
    ours = make_vector_env(PENDULUM, [make_twin(PENDULUM, "p-0"), make_twin(PENDULUM, "p-1", gravity=9.0)])
    theirs = make_vector_env(kind, twins)
    # Execute / Assert: the same floats, and the same episode info keys
    np.testing.assert_array_equal(ours.reset(seed=2)[0], theirs.reset(seed=2)[0])
    rng = np.random.default_rng(6)
    for t in range(201):
        a = pendulum_actions(rng, 2)
        o1, r1, te1, tr1, i1 = ours.step(a)
        o2, r2, te2, tr2, i2 = theirs.step(a)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        assert (tr1 == tr2).all() and (te1 == te2).all()
        if t == 199:
            np.testing.assert_array_equal(i1["final_obs"], i2["final_obs"])
            np.testing.assert_array_equal(i1["episode_return"], i2["episode_return"])
            np.testing.assert_array_equal(i1["episode_length"], [200, 200])


def test_a_gymnasium_factory_function_needs_its_episode_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a factory taking its physics as keywords, bare and wrapped with its limit
    def windy_pendulum(g: float = 10.0, render_mode: str | None = None) -> gymnasium.Env:
        return gymnasium.envs.classic_control.pendulum.PendulumEnv(g=g)

    wrapped = GymnasiumKind("windy", windy_pendulum, [Param("g", 10.0, low=0.0, low_open=True)], 50)
    module = _register(monkeypatch, windy_pendulum=windy_pendulum, windy=wrapped)
    # Execute / Assert
    with pytest.raises(
        ConfigError, match=r"no episode limit known for windy_pendulum; wrap it as GymnasiumKind"
    ):
        get_kind(f"{module}:windy_pendulum")
    kind = get_kind(f"{module}:windy")
    assert kind is wrapped
    env = make_vector_env(kind, [make_twin(kind, "w-0", g=3.0)])
    env.reset(seed=0)
    for _ in range(50):
        *_, truncated, info = env.step(np.zeros((1, 1), dtype=np.float32))
    assert truncated.all() and info["episode_length"].tolist() == [50]
    with pytest.raises(ConfigError, match=r"'w-1': g = -1.0 is outside the valid range \(0, inf\)"):
        make_twin(kind, "w-1", g=-1.0)


class _Sketch:
    """A minimal valid kind; tests break one part at a time."""

    name = "sketch"
    params = (Param("gain", 1.0, low=0.0),)
    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)
    max_episode_steps = 5
    state_dim = 1
    noise_slots = 0
    noise_params = ()
    noise_dist = "normal"

    def reset(self, p: Any, rngs: Any, options: Any, noise: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((1, len(rngs))), np.zeros((len(rngs), 1), dtype=np.float32)

    def step(self, state: np.ndarray, actions: np.ndarray, p: Any, noise: Any) -> tuple[Any, ...]:
        n = state.shape[1]
        return state, np.zeros((n, 1), dtype=np.float32), np.ones(n), np.zeros(n, dtype=bool)


def _register(monkeypatch: pytest.MonkeyPatch, **classes: type) -> str:
    module = types.ModuleType("user_kinds_for_test")
    for name, cls in classes.items():
        setattr(module, name, cls)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def test_a_user_class_that_breaks_the_protocol_is_refused_with_the_part_to_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_limit = type("NoLimit", (_Sketch,), {"max_episode_steps": None})
    bad_step = type("BadStep", (_Sketch,), {"step": lambda self, state: None})
    bad_space = type("BadSpace", (_Sketch,), {"observation_space": gymnasium.spaces.Discrete(3)})
    bad_out = type(
        "BadOut",
        (_Sketch,),
        {"step": lambda self, s, a, p, z: (s, np.zeros((1, 2), np.float32), np.ones(1), np.zeros(1, bool))},
    )
    module = _register(
        monkeypatch, Sketch=_Sketch, NoLimit=no_limit, BadStep=bad_step, BadSpace=bad_space, BadOut=bad_out
    )
    assert get_kind(f"{module}:Sketch").name == "sketch"
    with pytest.raises(
        ConfigError, match=r"NoLimit breaks the protocol: max_episode_steps must be an integer"
    ):
        get_kind(f"{module}:NoLimit")
    with pytest.raises(ConfigError, match=r"breaks the protocol: step\(\) must take 4 arguments"):
        get_kind(f"{module}:BadStep")
    with pytest.raises(ConfigError, match=r"observation_space must be a gymnasium\.spaces\.Box"):
        get_kind(f"{module}:BadSpace")
    monkeypatch.setitem(kind_registry.BUILTIN_KINDS, "other", f"{module}:Sketch")
    with pytest.raises(ConfigError, match=r"calls itself 'sketch'; register it under that name"):
        get_kind("other")
    kind = get_kind(f"{module}:BadOut")
    env = make_vector_env(kind, [make_twin(kind, "s-0")])
    env.reset(seed=0)
    with pytest.raises(
        ConfigError, match=r"step\(\) returned obs as float32 \(1, 2\), expected float32 \(1, 1\)"
    ):
        env.step(np.zeros(1, dtype=np.int64))


def test_a_kind_that_brings_its_own_vector_env_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the schema of _Sketch and a vector_env (as CartPole's adapter will have), no reset/step
    made: list[tuple[Any, ...]] = []

    class OwnEnv:
        name, params, max_episode_steps = "own", _Sketch.params, 5
        observation_space, action_space = _Sketch.observation_space, _Sketch.action_space

        def vector_env(self, twins: Any, envs_per_twin: int = 1, max_episode_steps: int | None = None) -> str:
            made.append((tuple(t.id for t in twins), envs_per_twin, max_episode_steps))
            return "its env"

    module = _register(monkeypatch, OwnEnv=OwnEnv)
    kind = get_kind(f"{module}:OwnEnv")
    # Execute / Assert
    assert make_vector_env(kind, [make_twin(kind, "o-0")], envs_per_twin=3) == "its env"
    assert made == [(("o-0",), 3, None)]


def test_a_run_has_one_kind() -> None:
    with pytest.raises(ConfigError, match="'a-0' is not a pendulum twin"):
        make_vector_env(PENDULUM, [make_twin(ACROBOT, "a-0")])


# ------------------------------------------------------------------------------ seeds


@pytest.mark.parametrize("kind", [PENDULUM, ACROBOT], ids=lambda k: k.name)
def test_a_seed_reproduces_a_noisy_fleet_and_another_seed_does_not(kind: Any) -> None:
    twins = generate_twins(kind, 4, seed=0, preset="hard", spread=0.3)

    def rollout(seed: int) -> np.ndarray:
        env, rng = make_vector_env(kind, twins, envs_per_twin=2), np.random.default_rng(0)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for _ in range(120):
            a = pendulum_actions(rng, 8) if kind is PENDULUM else rng.integers(0, 3, 8)
            out.append(env.step(a)[0])
        return np.stack(out)

    first = rollout(21)
    np.testing.assert_array_equal(first, rollout(21))
    assert not np.array_equal(first, rollout(22))
    assert math.isfinite(float(first.sum()))


# ------------------------------------------------------------------- CartPole as a kind (phase 2)
def test_cartpole_kind_generates_the_twins_cartpole_generates() -> None:
    from fedtwin.sim import twins as cp_twins
    from fedtwin.sim.cartpole_kind import CartPoleKind, to_kind_twin, to_twin_spec

    kind = get_kind("cartpole")
    assert isinstance(kind, CartPoleKind)
    for preset in ("default", "hard"):
        ours = kinds.generate_twins(kind, 200, seed=11, spread=0.2, preset=preset)
        theirs = cp_twins.generate_twins(200, seed=11, spread=0.2, preset=preset)
        assert [to_twin_spec(t) for t in ours] == theirs
        assert [to_kind_twin(t) for t in theirs] == ours


@pytest.mark.parametrize(("field", "value"), [("gravity", 0.0), ("masspole", -1.0), ("tau", 0.0),
                                              ("friction_cart", -0.1), ("action_delay", 501),
                                              ("action_delay", 1.5), ("sensor_noise", float("nan"))])
def test_cartpole_kind_refuses_what_twinspec_refuses(field: str, value: float) -> None:
    from fedtwin.sim.twins import TwinSpec

    with pytest.raises(ConfigError, match=f"twin 'p': {field}"):
        kinds.make_twin(get_kind("cartpole"), "p", **{field: value})
    with pytest.raises(ConfigError, match=f"twin 'p': {field}"):
        TwinSpec(id="p", **{field: value})


def test_cartpole_kind_env_is_the_cartpole_env() -> None:
    from fedtwin.sim.envs import TwinCartPoleVectorEnv
    from fedtwin.sim.twins import generate_twins as cp_generate

    kind = get_kind("cartpole")
    specs = cp_generate(3, seed=2, preset="hard")
    ours = make_vector_env(kind, kinds.generate_twins(kind, 3, seed=2, preset="hard"), envs_per_twin=2)
    theirs = TwinCartPoleVectorEnv(specs, envs_per_twin=2)
    a, _ = ours.reset(seed=4)
    b, _ = theirs.reset(seed=4)
    rng = np.random.default_rng(0)
    for _ in range(60):
        act = rng.integers(0, 2, size=6)
        a, ra, ta, ua, _ = ours.step(act)
        b, rb, tb, ub, _ = theirs.step(act)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(ta | ua, tb | ub)
