"""What every layer reads and writes alike: YAML, DNS-1123 names, files written atomically.

The config, fleet files and the local store share these, so they live below all three (like
`errors.py`, this module imports nothing else of fedtwin's).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fedtwin.core.errors import ConfigError

# ------------------------------------------------------------------------------------ names
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_dns_label(value: str, what: str) -> str:
    """Run ids and twin ids become pod labels and S3 keys, so they must be DNS-1123 labels."""
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


# ------------------------------------------------------------------------------------- YAML
YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
"""The floats YAML 1.2 has and PyYAML's YAML 1.1 rules read as strings: an exponent without a dot or
without a sign (`1e-3`, `2.5E4`)."""


class SafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader where PyYAML has it (a 1024-twin fleet file parses in a tenth of the time,
    and every step of a run parses the run's config and fleet), reading `1e-3` as a number."""


class SafeDumper(yaml.SafeDumper):
    """Quotes the strings SafeLoader would read as numbers (a twin id `1e3`), so files round-trip."""


for _yaml_class in (SafeLoader, SafeDumper):
    _yaml_class.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+.0123456789"))


def dump_yaml(data: Any, sort_keys: bool = False) -> str:
    return yaml.dump(data, Dumper=SafeDumper, sort_keys=sort_keys)


def load_yaml(text: str) -> Any:
    """Safe-load YAML text (no code runs, YAML 1.2 floats); errors are PyYAML's."""
    return yaml.load(text, Loader=SafeLoader)


def parse_yaml(text: str, what: str, source: str | Path) -> Any:
    """Safe-load YAML text or raise one ConfigError naming `what`, where it came from and the line."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} {source} is not valid YAML{where}; fix the syntax") from exc


def read_yaml(path: str | Path, what: str) -> Any:
    """Read a YAML file or raise one ConfigError naming the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}; check the path") from exc
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start} is {byte:#04x}); pass a YAML "
                          "file") from exc
    return parse_yaml(text, what, path)


# ---------------------------------------------------------------------------- atomic files
def durable_temp(path: Path, data: bytes) -> str:
    """`data` fsynced in a temporary file next to `path`; the caller renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: str | Path, data: bytes) -> None:
    """Temp file + rename: a crash never leaves a half-written file behind, only the old one or the new."""
    target = Path(path)
    tmp = durable_temp(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
