"""Fleet files: a fleet's twins as YAML (user files) or JSON (a run's stored copy), read and written.

PyYAML's safe_load/safe_dump only: a fleet file must never execute code. Every error names the
file (or the S3 key) it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import dump_yaml, parse_yaml, read_yaml, write_atomic
from fedtwin.core.limits import MAX_EVAL_TWINS, MAX_TRAINING_TWINS
from fedtwin.sim import kind_registry, kinds
from fedtwin.sim.kinds import KindTwin
from fedtwin.sim.twins import DEFAULT_KIND, FLEET_KEYS, Fleet, Twin, TwinSpec, check_unique


def _parse_twin_list(value: Any, key: str, source: str | Path, kind: Any = None) -> list[Twin]:
    if not isinstance(value, list):
        raise ConfigError(
            f"fleet file {source}: '{key}' must be a list of twins (`- id: pole-07`), "
            f"got {type(value).__name__}; fix the file"
        )
    limit = MAX_TRAINING_TWINS if key == "twins" else MAX_EVAL_TWINS
    if len(value) > limit:
        raise ConfigError(f"fleet file {source}: '{key}' lists {len(value):,} twins, more than the {limit:,} "
                          "a run takes; split the fleet into several runs")
    twins = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"fleet file {source}: {key}[{i}] must be a mapping of fields (`- id: ...`), got {entry!r}; "
                "fix the file"
            )
        try:
            twins.append(TwinSpec.from_dict(entry) if kind is None else kinds.twin_from_dict(kind, entry))
        except ConfigError as exc:
            raise ConfigError(f"fleet file {source}: {key}[{i}]: {exc}") from None
    return twins


def fleet_from_data(data: Any, source: str | Path, kind: str | None = None) -> Fleet:
    """A fleet from parsed YAML; every error names `source` (a file name or an S3 key).

    The file's optional `kind:` (default cartpole) must agree with `kind` (the config's `fleet.kind`)
    when that is given."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"fleet file {source} must be a mapping with a 'twins:' list, got {type(data).__name__}; "
            "see `fedtwin twins generate` for the format"
        )
    unknown = sorted(str(k) for k in data if k not in FLEET_KEYS)
    if unknown:
        raise ConfigError(
            f"fleet file {source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(FLEET_KEYS)}"
        )
    if "twins" not in data:
        raise ConfigError(f"fleet file {source} has no 'twins:' list; add one (see `fedtwin twins generate`)")
    file_kind = data.get("kind", DEFAULT_KIND)
    if not isinstance(file_kind, str) or not file_kind.strip():
        raise ConfigError(f"fleet file {source}: kind must be a twin kind's name (e.g. pendulum), "
                          f"got {file_kind!r}; fix the file")
    if kind is not None and file_kind != kind:
        raise ConfigError(f"fleet file {source} holds {file_kind} twins but fleet.kind is {kind}; "
                          f"set fleet.kind: {file_kind} (--kind {file_kind}) or use a {kind} fleet")
    impl = None
    if file_kind != DEFAULT_KIND:
        try:
            impl = kind_registry.get_kind(file_kind)
        except ConfigError as exc:
            raise ConfigError(f"fleet file {source}: kind: {exc}") from None
    train = _parse_twin_list(data["twins"], "twins", source, impl)
    if not train:
        raise ConfigError(f"fleet file {source}: 'twins' is empty; list at least one twin")
    # `validation:` with nothing under it is YAML null: an empty set, not an error.
    validation = _parse_twin_list(data.get("validation") or [], "validation", source, impl)
    heldout = _parse_twin_list(data.get("heldout") or [], "heldout", source, impl)
    try:
        return Fleet(train=train, validation=validation, heldout=heldout, kind=file_kind)
    except ConfigError as exc:
        raise ConfigError(f"fleet file {source}: {exc}") from None


def load_fleet(path: str | Path, kind: str | None = None) -> Fleet:
    """`twins:` (required) plus optional `kind:`, `validation:`/`heldout:`; absent sets are empty for the
    caller. `kind`: the kind the file must hold (the config's `fleet.kind`)."""
    return fleet_from_data(read_yaml(path, "fleet file"), path, kind)


def parse_fleet(text: str, source: str, kind: str | None = None) -> Fleet:
    """A fleet from YAML text read elsewhere (e.g. a run's twins.yaml in S3); errors name `source`.

    Text in JSON form (YAML 1.2 is a superset; `fleet_to_json` writes a run's copy so) takes the JSON
    parser, much faster than YAML for a large fleet, whose copy every step reads.
    """
    if text.startswith("{"):
        try:
            return fleet_from_data(json.loads(text), source, kind)
        except (ValueError, RecursionError):
            pass  # a YAML flow mapping: the YAML parser says what is wrong with it
    return fleet_from_data(parse_yaml(text, "fleet file", source), source, kind)


def load_twins(path: str | Path) -> list[Twin]:
    """The `twins:` list of a file (a fleet file's `validation:`/`heldout:` are checked but not returned)."""
    return load_fleet(path).train


def _twin_dict(twin: Twin) -> dict[str, Any]:
    if isinstance(twin, KindTwin):
        return twin.to_dict(kind_registry.kind_of([twin]))
    return dict(twin.to_dict())


def _twins_yaml(twins: Sequence[Twin]) -> list[dict[str, Any]]:
    return [_twin_dict(t) for t in twins]


def _kind_entry(kind: str) -> dict[str, Any]:
    """`kind:` first in a fleet's file, left out for cartpole (files and stored copies of older runs
    stay byte-identical)."""
    return {} if kind == DEFAULT_KIND else {"kind": kind}


def dump_fleet(fleet: Fleet) -> str:
    """YAML text of a fleet, readable by `load_fleet`."""
    data = {
        **_kind_entry(fleet.kind),
        "twins": _twins_yaml(fleet.train),
        "validation": _twins_yaml(fleet.validation),
        "heldout": _twins_yaml(fleet.heldout),
    }
    return dump_yaml(data)


def fleet_to_json(fleet: Fleet) -> str:
    """A run's stored copy of its fleet (twins.yaml): JSON, which is also YAML, one twin per line, so
    it stays readable and `parse_fleet` reads it with the JSON parser, not the much slower YAML one."""
    sets = {"twins": fleet.train, "validation": fleet.validation, "heldout": fleet.heldout}
    body = ",\n".join(
        f" {json.dumps(key)}: [" + ",".join(f"\n  {json.dumps(_twin_dict(t))}" for t in twins) + "\n ]"
        for key, twins in sets.items()
    )
    head = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in _kind_entry(fleet.kind).items())
    return "{\n" + head + body + "\n}\n"


def dump_twins(twins: Sequence[Twin], kind: str = DEFAULT_KIND) -> str:
    """YAML text of a plain `twins:` file (with `kind:` first for a kind other than cartpole)."""
    check_unique(twins, "the twin list")
    return dump_yaml({**_kind_entry(kind), "twins": _twins_yaml(twins)})


def save_twins(twins: Sequence[Twin], path: str | Path, kind: str = DEFAULT_KIND) -> None:
    write_atomic(path, dump_twins(twins, kind).encode())


def save_fleet(fleet: Fleet, path: str | Path) -> None:
    write_atomic(path, dump_fleet(fleet).encode())
