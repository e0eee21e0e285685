"""Digital twins: the physics of one device (`TwinSpec`), deterministic fleets, held-out sets, YAML I/O.

A twin's physics depends only on the fleet seed and its id (sha256, never Python's `hash()`), so a
twin generated alone, in a fleet of 10 or of 10 000, on a laptop or in a pod, is the same device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import check_dns_label
from fedtwin.core.limits import MAX_ACTION_DELAY, MAX_TRAINING_TWINS
from fedtwin.core.seeding import derive_seed
from fedtwin.sim import kind_registry, kinds

Preset = Literal["default", "hard"]
PRESETS: tuple[str, ...] = ("default", "hard")

# Parameters perturbed by `spread` in every preset, in the order the twin's generator draws them.
SCALED_FIELDS: tuple[str, ...] = ("gravity", "masscart", "masspole", "length", "force_mag")

# Upper bounds of the `hard` preset's imperfections (each drawn uniformly from 0).
# Barto et al. (1983) simulate mu_c = 5e-4 N and mu_p = 2e-6 N·m·s: so small that their effect is
# below 1e-4 of the 10 N push and twins would not differ. Lab cart-poles measure Coulomb cart
# friction of tenths of a newton and pole damping of a few 1e-3 N·m·s, so the preset spans
# 0 .. 0.1 N (1 % of the push) and 0 .. 3e-3 N·m·s: small, physical, and visible in trajectories.
HARD_FRICTION_CART_MAX = 0.1
HARD_FRICTION_POLE_MAX = 3e-3
HARD_SENSOR_NOISE_MAX = 0.02
HARD_ACTUATOR_NOISE_MAX = 0.1
HARD_MAX_ACTION_DELAY = 1

FLEET_KEYS: tuple[str, ...] = ("kind", "twins", "validation", "heldout")
DEFAULT_KIND = kind_registry.DEFAULT_KIND


@dataclass(frozen=True)
class TwinSpec:
    """Physics of one device; the defaults are gymnasium's CartPole-v1 exactly."""

    id: str
    """DNS-1123 label: it becomes a pod label and an S3 key."""
    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5
    """Half the pole's length, as in gymnasium."""
    force_mag: float = 10.0
    tau: float = 0.02
    """Seconds between state updates (Euler step)."""
    friction_cart: float = 0.0
    """Coulomb friction of the cart on the track, mu_c of Barto et al. (1983), in N."""
    friction_pole: float = 0.0
    """Friction of the pole on the cart, mu_p of Barto et al. (1983), in N·m·s."""
    sensor_noise: float = 0.0
    """Std of Gaussian noise added to each observation dimension (the state stays exact)."""
    actuator_noise: float = 0.0
    """Relative std of Gaussian noise on the applied force: force * (1 + actuator_noise * N(0, 1))."""
    action_delay: int = 0
    """Steps between choosing an action and the cart feeling it."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise ConfigError(f"twin id must be a string, got {self.id!r}; fix it in the fleet file")
        try:
            check_dns_label(self.id, "twin id")
        except ValueError as exc:
            raise ConfigError(f"{exc}; fix it in the fleet file") from None
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                self._fail(name, "must be a number", value)
            value = float(value)
            if not math.isfinite(value):
                self._fail(name, "must be finite", value)
            if name in _POSITIVE_FIELDS and value <= 0:
                self._fail(name, "must be > 0", value)
            if name not in _POSITIVE_FIELDS and value < 0:
                self._fail(name, "must be >= 0", value)
            object.__setattr__(self, name, value)  # ints from YAML become floats: one type per field
        delay = self.action_delay
        if isinstance(delay, bool) or not isinstance(delay, int | np.integer):
            self._fail("action_delay", "must be an integer (steps)", delay)
        if delay < 0:
            self._fail("action_delay", "must be >= 0", delay)
        if delay > MAX_ACTION_DELAY:
            self._fail("action_delay", f"must be at most {MAX_ACTION_DELAY} steps (no episode lasts longer)",
                       delay)
        object.__setattr__(self, "action_delay", int(delay))

    def _fail(self, name: str, rule: str, value: object) -> None:
        raise ConfigError(f"twin {self.id!r}: {name} {rule}, got {value!r}; fix it in the fleet file")

    @property
    def total_mass(self) -> float:
        """Cart plus pole; a property so a perturbed mass can never leave it stale."""
        return self.masspole + self.masscart

    @property
    def polemass_length(self) -> float:
        """masspole * length (gymnasium's phys2d has `+` here: that bug is tested against)."""
        return self.masspole * self.length

    @property
    def is_default_physics(self) -> bool:
        """True when the twin is gymnasium's CartPole-v1 (ids aside)."""
        return all(getattr(self, f.name) == f.default for f in dataclasses.fields(self) if f.name != "id")

    def to_dict(self) -> dict[str, Any]:
        """The id plus every field that differs from the default: short, readable fleet files."""
        out: dict[str, Any] = {"id": self.id}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "id" and value != f.default:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TwinSpec:
        """Build a twin from a mapping; unknown keys are errors (a typo must not become a default)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a twin must be a mapping of fields, got {data!r}; see the fleet file format")
        unknown = sorted(str(k) for k in data if k not in _FIELD_NAMES)
        twin = f"twin {data.get('id')!r}: " if "id" in data else ""
        if unknown:
            raise ConfigError(
                f"{twin}unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(_FIELD_NAMES)}"
            )
        if "id" not in data:
            raise ConfigError(f"a twin has no 'id' (fields given: {', '.join(map(str, data))}); add one")
        return cls(**{str(k): v for k, v in data.items()})


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TwinSpec))
_FLOAT_FIELDS: tuple[str, ...] = tuple(n for n in _FIELD_NAMES if n not in ("id", "action_delay"))
_POSITIVE_FIELDS = frozenset({"gravity", "masscart", "masspole", "length", "force_mag", "tau"})


def twin_ids(count: int, prefix: str = "twin") -> list[str]:
    """`prefix-000` ... ; the width grows past 1000 twins so ids still sort in order."""
    width = max(3, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


def generate_twin(twin_id: str, seed: int, spread: float = 0.15, preset: Preset = "default") -> TwinSpec:
    """One twin from (seed, id) alone, so it is the same device whatever fleet it is generated in."""
    rng = np.random.default_rng(derive_seed(seed, twin_id))
    base = TwinSpec(id=twin_id)
    factors = rng.uniform(1.0 - spread, 1.0 + spread, size=len(SCALED_FIELDS))
    values: dict[str, Any] = {
        name: float(getattr(base, name) * factor) for name, factor in zip(SCALED_FIELDS, factors, strict=True)
    }
    if preset == "hard":
        values["friction_cart"] = float(rng.uniform(0.0, HARD_FRICTION_CART_MAX))
        values["friction_pole"] = float(rng.uniform(0.0, HARD_FRICTION_POLE_MAX))
        values["sensor_noise"] = float(rng.uniform(0.0, HARD_SENSOR_NOISE_MAX))
        values["actuator_noise"] = float(rng.uniform(0.0, HARD_ACTUATOR_NOISE_MAX))
        values["action_delay"] = int(rng.integers(0, HARD_MAX_ACTION_DELAY + 1))
    return TwinSpec(id=twin_id, **values)


def _check_generation(count: int, spread: float, preset: str) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_TRAINING_TWINS:
        raise ConfigError(f"twin count must be an integer from 0 to {MAX_TRAINING_TWINS:,}, got {count!r}")
    if not (isinstance(spread, int | float) and 0.0 <= spread < 1.0):
        raise ConfigError(f"spread must be in [0, 1), got {spread!r}; e.g. 0.15 for ±15 %")
    if preset not in PRESETS:
        raise ConfigError(f"unknown fleet preset {preset!r}; choose one of {', '.join(PRESETS)}")


def generate_twins(
    count: int, seed: int, spread: float = 0.15, preset: Preset = "default", prefix: str = "twin"
) -> list[TwinSpec]:
    """`count` twins `prefix-000`...: each physical parameter scaled by U(1-spread, 1+spread)."""
    _check_generation(count, spread, preset)
    return [generate_twin(twin_id, seed, spread, preset) for twin_id in twin_ids(count, prefix)]


Twin = Any
"""A `TwinSpec` (cartpole fleets, as always) or a `KindTwin` (any other kind)."""


@dataclass
class Fleet:
    """Twins that train, twins that decide early stopping, and twins seen only in the final report.

    All of one kind (`kind`: a name or `module:Class`, as the config's `fleet.kind`): cartpole twins
    are `TwinSpec`s, other kinds' are `KindTwin`s.
    """

    train: list[Twin]
    validation: list[Twin] = field(default_factory=list)
    heldout: list[Twin] = field(default_factory=list)
    kind: str = DEFAULT_KIND

    def __post_init__(self) -> None:
        check_unique(self.all_twins(), "the fleet")

    def all_twins(self) -> list[Twin]:
        return [*self.train, *self.validation, *self.heldout]

    def all_ids(self) -> list[str]:
        return [t.id for t in self.all_twins()]

    def select(self, selection: Sequence[str], where: str = "the training fleet") -> list[Twin]:
        """Training twins named by ids or by `FIRST..LAST` ranges in fleet order (a shard's short name)."""
        position = {t.id: i for i, t in enumerate(self.train)}
        chosen: list[Twin] = []
        for item in selection:
            first, sep, last = item.partition(RANGE)
            for end in (first, last) if sep else (first,):
                if end not in position:
                    raise ConfigError(f"twin {end!r} is not in {where}")
            if sep and position[last] < position[first]:
                raise ConfigError(f"twin range {item!r} runs backwards; name the first twin first")
            chosen += self.train[position[first] : position[last if sep else first] + 1]
        return chosen


RANGE = ".."
"""Twin ids are DNS labels (no dots), so `FIRST..LAST` can only be a range."""


def shard_names(ids: Sequence[str], size: int) -> list[str]:
    """Consecutive shards of `size` twins, each named `ID` (one twin) or `FIRST..LAST`: short names for
    Argo nodes and pod labels whatever the shard size (Fleet.select reads them back)."""
    shards = [ids[i : i + size] for i in range(0, len(ids), size)]
    return [s[0] if len(s) == 1 else f"{s[0]}{RANGE}{s[-1]}" for s in shards]


def check_unique(twins: Iterable[Twin], where: str) -> None:
    """Ids key S3 objects and pods, so a duplicate would silently overwrite another twin's update."""
    seen: set[str] = set()
    for twin in twins:
        if twin.id in seen:
            raise ConfigError(f"twin id {twin.id!r} appears twice in {where}; give each twin its own id")
        seen.add(twin.id)


def make_fleet(
    count: int,
    seed: int,
    spread: float = 0.15,
    preset: Preset = "default",
    validation_count: int = 4,
    heldout_count: int = 8,
    kind: str = DEFAULT_KIND,
) -> Fleet:
    """Generated fleet; prefixes twin/val/heldout give the three sets different ids, hence physics.

    A kind other than cartpole draws its twins by its own schema (`kinds.generate_twins`, the same rule)."""
    return Fleet(
        train=generate_kind_twins(kind, count, seed, spread, preset, prefix="twin"),
        validation=generate_kind_twins(kind, validation_count, seed, spread, preset, prefix="val"),
        heldout=generate_kind_twins(kind, heldout_count, seed, spread, preset, prefix="heldout"),
        kind=kind,
    )


def generate_kind_twins(
    kind: str, count: int, seed: int, spread: float = 0.15, preset: Preset = "default", prefix: str = "twin"
) -> list[Twin]:
    """`generate_twins` for a kind by name: cartpole's `TwinSpec`s, or the kind's own `KindTwin`s."""
    if kind == DEFAULT_KIND:
        return list(generate_twins(count, seed, spread, preset, prefix))
    _check_generation(count, spread, preset)
    return list(kinds.generate_twins(kind_registry.get_kind(kind), count, seed, spread, preset, prefix))
