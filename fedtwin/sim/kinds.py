"""Twin kinds: what a fleet's digital twins simulate, and how a user brings their own simulator.

A *kind* names a physical system (`pendulum`, `acrobot`, a user's thermal zone) and holds everything
fedtwin needs to federate a policy over twins of it: the parameter schema (names, defaults, valid
ranges, how fleet generation varies them), one twin's observation and action spaces (shared by every
twin of a run, so one policy fits all), the episode limit, and a vectorized `reset`/`step` over
arrays of twins with per-twin physics. `fedtwin.sim.kind_env.KindVectorEnv` turns a kind into a
gymnasium vector env (seeds, per-twin random streams, autoreset, time limit, action delay).

`fedtwin.sim.kind_registry.get_kind` finds a kind by name: a built-in, `module:Class`, or an
entry point in the group `fedtwin.twins` of an installed package. A simulator that only exists as a
gymnasium env class or factory taking its parameters as keyword arguments works too, through
`fedtwin.sim.gym_kind.GymnasiumKind` (gymnasium's SyncVectorEnv: one Python env per sub-env, so
slower than a vectorized kind).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import check_dns_label
from fedtwin.core.limits import MAX_ACTION_DELAY
from fedtwin.core.seeding import derive_seed

PRESETS: tuple[str, ...] = ("default", "hard")
Vary = Literal["fixed", "scale", "hard"]

Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Param:
    """One physical parameter of a kind: default, valid range, and how fleet generation varies it."""

    name: str
    default: float
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    """True: the range excludes `low` (a mass must be > 0, not >= 0)."""
    integer: bool = False
    vary: Vary = "fixed"
    """`scale`: each generated twin gets default * U(1 - spread, 1 + spread); `hard`: the `hard` preset
    draws U(0, hard_max) (integers 0..hard_max), the `default` preset keeps the default; `fixed`: default."""
    hard_max: float = 0.0
    doc: str = ""

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z][a-z0-9_]*$", self.name) or self.name == "id":
            raise ValueError(f"parameter name {self.name!r} must be a lowercase identifier other than 'id'")
        if self.vary not in ("fixed", "scale", "hard"):
            raise ValueError(f"parameter {self.name}: vary must be fixed, scale or hard, got {self.vary!r}")
        if self.problem(self.default) is not None:
            raise ValueError(f"parameter {self.name}: default {self.default!r} {self.problem(self.default)}")

    def range_text(self) -> str:
        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high == math.inf else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"

    def problem(self, value: object) -> str | None:
        """Why `value` is not valid for this parameter, or None."""
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            return "must be a number" if not self.integer else "must be an integer"
        if self.integer and not float(value).is_integer():
            return "must be an integer"
        v = float(value)
        if not math.isfinite(v):
            return "must be finite"
        if v < self.low or v > self.high or (self.low_open and v == self.low):
            return f"is outside the valid range {self.range_text()}"
        return None


def action_delay_param(doc: str, hard_max: int = 1) -> Param:
    """The `action_delay` parameter every built-in kind has: whole steps between a command and its effect
    (0 by default, up to `hard_max` in the `hard` preset, bounded by the run limits)."""
    return Param("action_delay", 0, low=0, high=MAX_ACTION_DELAY, integer=True, vary="hard",
                 hard_max=hard_max, doc=doc)


@runtime_checkable
class TwinKind(Protocol):
    """What a vectorized kind provides; `check_kind` verifies it and says which part is missing.

    Arrays are over sub-envs (`n` of them; several per twin when `envs_per_twin` > 1):

    - `params`: the schema. `ParamArrays` hands each parameter to `reset`/`step` as a `(n,)` float64
      array, or a 0-d array when every sub-env shares the value (same floats, less memory traffic).
    - `state_dim`: the float64 state is `(state_dim, n)`, one column per sub-env, owned by the env.
    - `noise_slots` / `noise_params` / `noise_dist`: per step, a twin whose `noise_params` are not all
      zero gets `noise_slots` values per sub-env from its own noise stream ("normal": N(0, 1),
      "uniform": U[0, 1)); `noise` is then `(noise_slots, n)` (zeros for quiet twins), else None.
    - `reset(p, rngs, options, noise)`: start states of the m sub-envs `p` describes, drawing from
      `rngs[j]` (the generator of sub-env j's twin, in sub-env order, so a twin's draws never depend
      on other twins); returns the `(state_dim, m)` state and `(m, *obs_shape)` observations.
    - `step(state, actions, p, noise)`: returns the new `(state_dim, n)` state, observations,
      float64 rewards `(n,)` and bool `terminated` `(n,)`. Time limits are the env's job.
    - optional `derive(values) -> dict[str, float]`: per-twin constants computed once in Python
      floats (as gymnasium computes them), handed to `step` in `p` beside the parameters.
    - an integer parameter named `action_delay` delays each twin's actions by that many steps (the env
      does it: an episode starts with the line full of its first action).
    """

    name: str
    params: tuple[Param, ...]
    observation_space: spaces.Box
    action_space: spaces.Space[Any]
    max_episode_steps: int
    state_dim: int
    noise_slots: int
    noise_params: tuple[str, ...]
    noise_dist: str

    def reset(
        self,
        p: Any,
        rngs: Sequence[np.random.Generator],
        options: dict[str, Any] | None,
        noise: Float64Array | None,
    ) -> tuple[Float64Array, np.ndarray]: ...

    def step(
        self, state: Float64Array, actions: np.ndarray, p: Any, noise: Float64Array | None
    ) -> tuple[Float64Array, np.ndarray, Float64Array, BoolArray]: ...


@runtime_checkable
class VectorKind(Protocol):
    """A kind that brings its own vector env (CartPole's tuned env, a `GymnasiumKind`): the schema,
    spaces and limit of `TwinKind`, and `vector_env`, which must honour `KindVectorEnv`'s contract
    (seeds twin k with seed + k, SAME_STEP autoreset, the same info keys)."""

    name: str
    params: tuple[Param, ...]
    observation_space: spaces.Box
    action_space: spaces.Space[Any]
    max_episode_steps: int

    def vector_env(
        self, twins: Sequence[KindTwin], envs_per_twin: int = 1, max_episode_steps: int | None = None
    ) -> Any: ...


AnyKind = TwinKind | VectorKind


@dataclass(frozen=True)
class KindTwin:
    """One device of a kind: its id and every parameter's value, in the schema's order."""

    id: str
    kind: str
    names: tuple[str, ...]
    values: tuple[float, ...]

    def __getitem__(self, name: str) -> float:
        try:
            return self.values[self.names.index(name)]
        except ValueError:
            raise KeyError(f"{self.kind} twins have no parameter {name!r}") from None

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values, strict=True))

    def to_dict(self, kind: AnyKind) -> dict[str, Any]:
        """The id plus every parameter that differs from its default: short fleet files."""
        out: dict[str, Any] = {"id": self.id}
        for param, value in zip(kind.params, self.values, strict=True):
            if value != param.default:
                out[param.name] = int(value) if param.integer else value
        return out


def make_twin(kind: AnyKind, twin_id: str, **values: Any) -> KindTwin:
    """A twin with the kind's defaults overridden by `values`; each value is checked against its range."""
    if not isinstance(twin_id, str):
        raise ConfigError(f"twin id must be a string, got {twin_id!r}; fix it in the fleet file")
    try:
        check_dns_label(twin_id, "twin id")
    except ValueError as exc:
        raise ConfigError(f"{exc}; fix it in the fleet file") from None
    names = tuple(p.name for p in kind.params)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"twin {twin_id!r}: unknown field(s) {', '.join(unknown)} for kind {kind.name}; "
            f"valid fields: id, {', '.join(names)}"
        )
    out: list[float] = []
    for param in kind.params:
        value = values.get(param.name, param.default)
        why = param.problem(value)
        if why is not None:
            raise ConfigError(
                f"twin {twin_id!r}: {param.name} = {value!r} {why} for kind {kind.name}; "
                f"set a value in {param.range_text()} in the fleet file"
            )
        out.append(float(int(value)) if param.integer else float(value))
    return KindTwin(id=twin_id, kind=kind.name, names=names, values=tuple(out))


def twin_from_dict(kind: AnyKind, data: Mapping[str, Any]) -> KindTwin:
    """A twin from a fleet file's mapping (`id` plus parameters); a typo is an error, not a default."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a twin must be a mapping of fields, got {data!r}; see the fleet file format")
    if "id" not in data:
        raise ConfigError(f"a twin has no 'id' (fields given: {', '.join(map(str, data))}); add one")
    fields = {str(k): v for k, v in data.items() if k != "id"}
    return make_twin(kind, data["id"], **fields)


def generate_twin(
    kind: AnyKind, twin_id: str, seed: int, spread: float = 0.15, preset: str = "default"
) -> KindTwin:
    """One twin from (seed, id) alone, like CartPole's: first the `scale` factors, then the `hard` draws,
    in schema order, from a generator seeded by the fleet seed and the id."""
    if not (isinstance(spread, int | float) and not isinstance(spread, bool) and 0.0 <= spread < 1.0):
        raise ConfigError(f"spread must be in [0, 1), got {spread!r}; e.g. 0.15 for ±15 %")
    if preset not in PRESETS:
        raise ConfigError(f"unknown fleet preset {preset!r}; choose one of {', '.join(PRESETS)}")
    rng = np.random.default_rng(derive_seed(seed, twin_id))
    scaled = [p for p in kind.params if p.vary == "scale"]
    factors = rng.uniform(1.0 - spread, 1.0 + spread, size=len(scaled))
    values: dict[str, Any] = {p.name: float(p.default * f) for p, f in zip(scaled, factors, strict=True)}
    if preset == "hard":
        for p in kind.params:
            if p.vary == "hard":
                values[p.name] = (
                    int(rng.integers(0, int(p.hard_max) + 1))
                    if p.integer
                    else float(rng.uniform(0.0, p.hard_max))
                )
    return make_twin(kind, twin_id, **values)


def generate_twins(
    kind: AnyKind,
    count: int,
    seed: int,
    spread: float = 0.15,
    preset: str = "default",
    prefix: str = "twin",
) -> list[KindTwin]:
    """`count` twins `prefix-000`...; each is the same device whatever fleet it is generated in."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"twin count must be an integer >= 0, got {count!r}")
    width = max(3, len(str(count - 1)))
    return [generate_twin(kind, f"{prefix}-{i:0{width}d}", seed, spread, preset) for i in range(count)]


def kind_params_table(kind: AnyKind) -> list[dict[str, Any]]:
    """The schema as plain rows (docs, `twins` CLI output, the report's physics plot in phase 2)."""
    return [
        {"name": p.name, "default": p.default, "range": p.range_text(), "vary": p.vary, "doc": p.doc}
        for p in kind.params
    ]


def policy_sizes(kind: AnyKind) -> tuple[int, Literal["categorical", "gaussian"], int]:
    """(observation size, action kind, action size) of a policy for this kind's twins: a Discrete action
    space takes a categorical policy over its `n` actions, a 1-d Box a gaussian one of its size."""
    obs_shape = tuple(kind.observation_space.shape or ())
    space = kind.action_space
    if len(obs_shape) != 1:
        raise ConfigError(f"twin kind {kind.name}: observations of shape {obs_shape} are not a vector; "
                          "give the kind a 1-d observation_space")
    if isinstance(space, spaces.Discrete):
        return int(obs_shape[0]), "categorical", int(space.n)
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return int(obs_shape[0]), "gaussian", int(space.shape[0])
    raise ConfigError(f"twin kind {kind.name}: action space {space} is neither Discrete nor a 1-d Box; "
                      "give the kind one of those")
