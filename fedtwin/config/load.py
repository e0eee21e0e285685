"""Loading the config; precedence: YAML file < environment variables < CLI flags.

Environment variables: `FEDTWIN_<KEY>` for top-level keys and `FEDTWIN_<SECTION>__<KEY>` for
nested ones, values parsed as YAML scalars (e.g. `FEDTWIN_FEDERATION__ROUNDS=30`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from fedtwin.config.kind_defaults import KIND_DEFAULTS
from fedtwin.config.model import ENV_PREFIX, Config
from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import dump_yaml, load_yaml, read_yaml

# Keys that change how a run executes but not what it computes: a resume may change them.
EXECUTION_ONLY = {"run_id", "store", "execution", "tracking", "s3", "multicluster"}


NEW_KEY_DEFAULTS = {("fleet", "kind"): "cartpole", ("train", "reward_scale"): 1.0}
"""Keys added after runs were stored: left out of the fingerprint at their defaults, so runs stored
before them resume."""


def fingerprint(config: Config) -> str:
    """Hash of everything that determines the results; a resumed run must match it."""
    data = {k: v for k, v in config.model_dump(mode="json").items() if k not in EXECUTION_ONLY}
    for (section, key), default in NEW_KEY_DEFAULTS.items():
        if data[section].get(key) == default:
            del data[section][key]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_env_value(raw: str) -> Any:
    """A YAML scalar, except YAML 1.1's on/off/yes/no stay words (`FEDTWIN_PRIVACY__MODE=off`)."""
    if not raw:
        return None
    value = load_yaml(raw)
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        return raw.strip()
    return value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`FEDTWIN_A__B=v` -> {"a": {"b": v}}; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "S3_"):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in Config.model_fields:
            continue  # other FEDTWIN_* variables (e.g. FEDTWIN_REGENERATE) are not config
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = parse_env_value(raw)
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's report into one line that names the key and the fix."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            model: type[BaseModel] = Config
            for part in err["loc"][:-1]:
                field = model.model_fields.get(str(part))
                if field is None or not isinstance(field.annotation, type):
                    break
                model = field.annotation
            valid = ", ".join(model.model_fields)
            problems.append(f"unknown key '{loc}' (valid keys here: {valid})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"'{loc}': {msg}" if loc else msg)
    return f"invalid config ({source}): " + "; ".join(problems)


def build_config(data: Mapping[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the config: file < environment < overrides (CLI flags, as a nested dict)."""
    data: dict[str, Any] = {}
    sources = []
    if path is not None:
        loaded = read_yaml(path, "config file")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys; see `fedtwin config show`")
        data = loaded
        sources.append(str(path))
    env = env_overrides(os.environ if environ is None else environ)
    if env:
        data = deep_merge(data, env)
        sources.append("environment")
    if overrides:
        data = deep_merge(data, {k: v for k, v in overrides.items() if v is not None})
        sources.append("flags")
    return build_config(with_kind_defaults(with_fleet_file_kind(data)), " + ".join(sources) or "defaults")


_FILE_KIND = re.compile(r"""^(?:kind:[ \t]*["']?([^\s"'#]+)|[ \t]*"kind":[ \t]*"([^"]+)")""", re.MULTILINE)


def with_fleet_file_kind(data: dict[str, Any]) -> dict[str, Any]:
    """`fleet.kind` from the fleet file's top-level `kind:` when the config leaves it unset, so a fleet
    file of pendulum twins (an Argo fleet ConfigMap, `--fleet-file`) needs no second mention of its
    kind. An unreadable file is left to the fleet loader, which says what is wrong with it. A null
    kind (`FEDTWIN_FLEET__KIND=`, the Argo templates' empty `kind` parameter) is unset."""
    fleet = data.get("fleet")
    if not isinstance(fleet, Mapping) or fleet.get("kind") is not None:
        return data
    unset = {**data, "fleet": {key: value for key, value in fleet.items() if key != "kind"}}
    if not isinstance(fleet.get("file"), str):
        return unset
    try:
        text = Path(fleet["file"]).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return unset
    found = _FILE_KIND.search(text)
    if found is None:
        return unset
    return {**data, "fleet": {**fleet, "kind": found.group(1) or found.group(2)}}


def with_kind_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """The twin kind's settings (`KIND_DEFAULTS`) for every `train`/`federation` key the file,
    environment and flags leave unset."""
    fleet = data.get("fleet")
    kind = fleet.get("kind") if isinstance(fleet, Mapping) else None
    out = dict(data)
    for section, defaults in KIND_DEFAULTS.get(kind.strip() if isinstance(kind, str) else "", {}).items():
        given = data.get(section, {})
        if isinstance(given, Mapping):
            out[section] = {**defaults, **given}
    return out


def config_to_yaml(config: Config) -> str:
    return dump_yaml(config.model_dump(mode="json"))


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict (CLI flags map onto config keys this way)."""
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
