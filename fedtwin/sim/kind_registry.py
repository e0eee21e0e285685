"""Finding a twin kind by name, and refusing one that breaks the protocol, in one line each.

`get_kind(spec)` accepts a built-in name (`pendulum`, `acrobot`), `module:attr` (a kind class or
instance, or a gymnasium env class or factory), or the name of an entry point in the group
`fedtwin.twins` of an installed package:

    [project.entry-points."fedtwin.twins"]
    thermal = "fedtwin_thermal:ThermalKind"
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Sequence
from typing import Any, NoReturn, cast

import gymnasium
import numpy as np
from gymnasium import spaces

from fedtwin.core.errors import ConfigError
from fedtwin.sim.gym_kind import GymnasiumKind
from fedtwin.sim.kinds import AnyKind, Param

ENTRY_POINT_GROUP = "fedtwin.twins"
BUILTIN_KINDS: dict[str, str] = {
    "acrobot": "fedtwin.sim.acrobot:AcrobotKind",
    "cartpole": "fedtwin.sim.cartpole_kind:CartPoleKind",
    "pendulum": "fedtwin.sim.pendulum:PendulumKind",
}
"""Built-in kinds by name, imported on first use."""
DEFAULT_KIND = "cartpole"
_BY_NAME: dict[str, AnyKind] = {}
"""The kind this process last resolved under each kind name: a `module:Class` kind's twins carry only
the kind's name, and the trainers find the run's kind object by it (`kind_of`)."""
_KIND_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def get_kind(spec: str) -> AnyKind:
    """The kind named `spec`: a built-in, `module:attr`, or an entry point of group `fedtwin.twins`.

    Returns a checked `TwinKind` or `VectorKind` (a gymnasium env class or factory comes wrapped in a
    `GymnasiumKind`).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"twin kind must be a name or module:Class, got {spec!r}")
    spec = spec.strip()
    kind = _find_kind(spec)
    _BY_NAME[kind.name] = kind
    return kind


def kind_of(twins: Sequence[Any]) -> AnyKind:
    """The kind of a run's twins: cartpole for `TwinSpec`s, else the kind named by the `KindTwin`s (the
    object this process resolved for the run, so a `module:Class` kind is found by its name)."""
    names = {getattr(t, "kind", DEFAULT_KIND) for t in twins}
    if len(names) != 1:
        raise ConfigError(f"twins of kinds {', '.join(sorted(names))} cannot train together; "
                          "a run has one kind")
    name = names.pop()
    return _BY_NAME.get(name) or get_kind(name)


def _find_kind(spec: str) -> AnyKind:
    if spec in BUILTIN_KINDS:
        return _as_kind(_import(BUILTIN_KINDS[spec], spec), spec, name=spec)
    if ":" in spec:
        return _as_kind(_import(spec, spec), spec, name=None)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                obj = ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"twin kind {spec!r}: entry point {ep.value!r} failed to load "
                    f"({_line(exc)}); reinstall the package that provides it"
                ) from None
            return _as_kind(obj, f"entry point {spec!r} ({ep.value})", name=spec)
    known = sorted(
        {*BUILTIN_KINDS, *(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))}
    )
    raise ConfigError(
        f"unknown twin kind {spec!r}; choose one of {', '.join(known)}, or name your own "
        f"as module:Class or an entry point in group {ENTRY_POINT_GROUP}"
    )


def _line(exc: BaseException) -> str:
    """An exception as one short line (a user's import error can span many)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _import(target: str, spec: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"twin kind {spec!r} must be module:Class (e.g. mypkg.twins:MotorKind)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"twin kind {spec!r}: cannot import {module_name!r} ({_line(exc)}); "
            "install the package that provides it or fix the name"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"twin kind {spec!r}: module {module_name!r} has no {attr!r}; fix the name")
        obj = getattr(obj, part)
    return obj


def _as_kind(obj: Any, source: str, name: str | None) -> AnyKind:
    """A kind object from what a name pointed at: a kind class or instance, or a gymnasium env factory.

    A kind found by a name (built-in, entry point) must be called that name: twins and runs record it.
    """
    kind = _make_kind(obj, source, name)
    if name is not None and kind.name != name:
        raise ConfigError(
            f"twin kind {source} calls itself {kind.name!r}; register it under that name "
            f"(or set its name to {name!r})"
        )
    return kind


def _make_kind(obj: Any, source: str, name: str | None) -> AnyKind:
    if isinstance(obj, GymnasiumKind):
        return obj
    if isinstance(obj, type) and issubclass(obj, gymnasium.Env):
        return GymnasiumKind.from_factory(obj, name=name or obj.__name__.lower(), source=source)
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(
                f"twin kind {source}: {obj.__name__}() failed ({_line(exc)}); "
                "a kind class must be constructible without arguments"
            ) from None
    elif callable(obj) and not hasattr(obj, "params") and inspect.isfunction(obj):
        return GymnasiumKind.from_factory(
            obj, name=name or obj.__name__.lower().replace("_", "-"), source=source
        )
    check_kind(obj, source)
    return cast(AnyKind, obj)


def check_kind(kind: Any, source: str) -> None:
    """Refuse, with one line naming the part and the fix, an object that is neither a `TwinKind` nor a
    `VectorKind`."""

    def fail(what: str) -> NoReturn:
        raise ConfigError(f"twin kind {source} breaks the protocol: {what}; see fedtwin.sim.kinds.TwinKind")

    name = getattr(kind, "name", None)
    if not isinstance(name, str) or not _KIND_NAME.match(name):
        fail(f"name must be a lowercase DNS label like 'thermal', got {name!r}")
    params = getattr(kind, "params", None)
    if not isinstance(params, tuple | list) or not all(isinstance(p, Param) for p in params):
        fail("params must be a tuple of fedtwin.sim.kinds.Param")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        fail(f"params repeats a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    if "action_delay" in names and not next(p for p in params if p.name == "action_delay").integer:
        fail("the action_delay parameter must be integer=True")
    if not isinstance(getattr(kind, "observation_space", None), spaces.Box):
        fail("observation_space must be a gymnasium.spaces.Box (one twin's observation)")
    if not isinstance(getattr(kind, "action_space", None), spaces.Box | spaces.Discrete):
        fail("action_space must be a gymnasium.spaces.Box or Discrete (one twin's action)")
    steps = getattr(kind, "max_episode_steps", None)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        fail(f"max_episode_steps must be an integer >= 1, got {steps!r}")
    if callable(getattr(kind, "vector_env", None)):
        try:
            inspect.signature(kind.vector_env).bind([], envs_per_twin=1, max_episode_steps=None)
        except TypeError:
            fail("vector_env() must take (twins, envs_per_twin=..., max_episode_steps=...) (see VectorKind)")
        return  # a VectorKind brings its own env
    for attr, minimum in (("state_dim", 1), ("noise_slots", 0)):
        value = getattr(kind, attr, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            fail(f"{attr} must be an integer >= {minimum}, got {value!r}")
    noise_params = getattr(kind, "noise_params", None)
    if not isinstance(noise_params, tuple | list) or not set(noise_params) <= set(names):
        fail(f"noise_params must be a tuple of parameter names, got {noise_params!r}")
    if getattr(kind, "noise_dist", None) not in ("normal", "uniform"):
        fail(f"noise_dist must be 'normal' or 'uniform', got {getattr(kind, 'noise_dist', None)!r}")
    for method, arity in (("reset", 4), ("step", 4)):
        fn = getattr(kind, method, None)
        if not callable(fn):
            fail(f"{method}() is missing")
        try:
            inspect.signature(fn).bind(*([None] * arity))
        except TypeError:
            fail(f"{method}() must take {arity} arguments (see TwinKind.{method})")
        except ValueError:
            pass  # no signature to inspect (a builtin): calling it will tell
    derive = getattr(kind, "derive", None)
    if derive is not None and not callable(derive):
        fail("derive must be a method taking a dict of parameter values")


def try_kind(kind: AnyKind, twin: Any) -> None:
    """Reset one twin's env and take one step, so a kind that breaks at run time (a user's exception,
    outputs of the wrong shape) is refused in one line when the run starts, not in every training job."""
    from fedtwin.sim.kind_env import make_vector_env  # the env module imports this one

    try:
        env = make_vector_env(kind, [twin])
        env.reset(seed=0)
        space = kind.action_space
        if isinstance(space, spaces.Discrete):
            action = np.full(1, int(space.start), dtype=np.int64)
        else:
            box = cast(spaces.Box, space)
            action = np.zeros((1, *box.shape), dtype=np.float32).clip(box.low, box.high)
        env.step(action)
        env.close()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"twin kind {kind.name}: a twin's first reset and step failed ({_line(exc)}); "
                          "fix the kind's reset()/step() (see fedtwin.sim.kinds.TwinKind)") from None


def kind_package(kind: AnyKind) -> str | None:
    """`distribution==version` of the installed package a user's kind comes from (recorded with a run:
    which simulator version trained it), or None for a built-in kind or a module outside any package."""
    module = type(kind).__module__
    if isinstance(kind, GymnasiumKind):
        module = getattr(kind.factory, "__module__", module) or module
    top = module.split(".")[0]
    if top == "fedtwin":
        return None
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
