"""CartPole as a twin kind: a `VectorKind` that hands its twins to today's `TwinCartPoleVectorEnv`.

The schema states `TwinSpec`'s fields with the same rules and the same fleet variation (the five
`SCALED_FIELDS` scaled in that order, then the `hard` preset's draws in `TwinSpec`'s order), so
`kinds.generate_twin(CartPoleKind(), ...)` gives the twins `twins.generate_twin` gives. The env,
its floats, random streams and compiled kernel are CartPole's own: nothing about CartPole changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gymnasium import spaces

from fedtwin.core.limits import MAX_ACTION_DELAY
from fedtwin.sim.envs import MAX_EPISODE_STEPS, TwinCartPoleVectorEnv, observation_space
from fedtwin.sim.kinds import KindTwin, Param
from fedtwin.sim.twins import (
    HARD_ACTUATOR_NOISE_MAX,
    HARD_FRICTION_CART_MAX,
    HARD_FRICTION_POLE_MAX,
    HARD_MAX_ACTION_DELAY,
    HARD_SENSOR_NOISE_MAX,
    TwinSpec,
)


def _positive(name: str, default: float, vary: str, doc: str) -> Param:
    return Param(name, default, low=0.0, low_open=True, vary=vary, doc=doc)  # type: ignore[arg-type]


def _hard(name: str, hard_max: float, doc: str) -> Param:
    return Param(name, 0.0, low=0.0, vary="hard", hard_max=hard_max, doc=doc)


class CartPoleKind:
    """gymnasium's CartPole-v1 for fleets of twins (`fedtwin.sim.envs`); the default kind."""

    name = "cartpole"
    params: tuple[Param, ...] = (
        _positive("gravity", 9.8, "scale", "gravity (m/s²)"),
        _positive("masscart", 1.0, "scale", "cart mass (kg)"),
        _positive("masspole", 0.1, "scale", "pole mass (kg)"),
        _positive("length", 0.5, "scale", "pole half-length (m)"),
        _positive("force_mag", 10.0, "scale", "push force (N)"),
        _positive("tau", 0.02, "fixed", "time step (s)"),
        _hard("friction_cart", HARD_FRICTION_CART_MAX, "cart friction (N)"),
        _hard("friction_pole", HARD_FRICTION_POLE_MAX, "pole friction (N·m·s)"),
        _hard("sensor_noise", HARD_SENSOR_NOISE_MAX, "sensor noise (std)"),
        _hard("actuator_noise", HARD_ACTUATOR_NOISE_MAX, "actuator noise (relative std)"),
        Param("action_delay", 0, low=0, high=MAX_ACTION_DELAY, integer=True, vary="hard",
              hard_max=HARD_MAX_ACTION_DELAY, doc="action delay (steps)"),
    )
    observation_space: spaces.Box = observation_space()
    action_space: spaces.Discrete = spaces.Discrete(2)
    max_episode_steps: int = MAX_EPISODE_STEPS
    solved_return: float = 475.0
    """gymnasium's reward_threshold for CartPole-v1."""

    def vector_env(
        self,
        twins: Sequence[KindTwin | TwinSpec],
        envs_per_twin: int = 1,
        max_episode_steps: int | None = None,
    ) -> TwinCartPoleVectorEnv:
        return TwinCartPoleVectorEnv(
            [to_twin_spec(t) for t in twins], envs_per_twin, max_episode_steps or MAX_EPISODE_STEPS
        )


def to_twin_spec(twin: KindTwin | TwinSpec) -> TwinSpec:
    """A `TwinSpec` (unchanged) or a cartpole `KindTwin` as the env's `TwinSpec`."""
    if isinstance(twin, TwinSpec):
        return twin
    values: dict[str, Any] = twin.as_dict()
    values["action_delay"] = int(values["action_delay"])
    return TwinSpec(id=twin.id, **values)


def to_kind_twin(spec: TwinSpec) -> KindTwin:
    """A `TwinSpec` as a cartpole `KindTwin` (values in the schema's order)."""
    names = tuple(p.name for p in CartPoleKind.params)
    return KindTwin(id=spec.id, kind=CartPoleKind.name, names=names,
                    values=tuple(float(getattr(spec, n)) for n in names))
