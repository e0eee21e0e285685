"""Generate the values table of a chart README from the `# --` comments in its values.yaml.

helm-docs conventions: a `# -- text` comment (continued by following `#` lines) directly above a
key documents it; a documented key that holds a map is one row (its children are not listed);
an undocumented key must hold a map whose keys are documented. Usage:

    python scripts/chart_docs.py CHART_DIR...          rewrite README.md between the markers
    python scripts/chart_docs.py --check CHART_DIR...  exit 1 when a README is stale or a key undocumented
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

START = "<!-- values:start -->"
END = "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")


class UndocumentedError(ValueError):
    """A values.yaml key without a `# --` comment, outside a documented map."""


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted path, description) of every documented key, in file order."""
    rows: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] | None = None
    covered: int | None = None  # indent of a documented map whose children need no comment
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment is not None:
            comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY.match(raw)
        if not match:
            if not stripped:
                comment = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [match["key"]])
        stack.append((indent, match["key"]))
        if covered is not None and indent > covered:
            comment = None
            continue
        covered = None
        if comment is not None:
            rows.append((path, " ".join(comment)))
            covered = indent
        comment = None
    return rows


def all_leaf_paths(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        out: list[str] = []
        for key, value in values.items():
            out += all_leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [prefix]


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def check_documented(values: dict[str, Any], rows: list[tuple[str, str]]) -> None:
    documented = [path for path, _ in rows]
    for leaf in all_leaf_paths(values):
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented):
            raise UndocumentedError(f"values.yaml key {leaf!r} has no `# --` comment")


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "null"


def table(chart: Path) -> str:
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = documented_keys(text)
    check_documented(values, rows)
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for path, description in rows:
        value = lookup(values, path)
        default = json.dumps(value, separators=(",", ":")).replace("|", "\\|")
        text = description.replace("|", "\\|")
        lines.append(f"| `{path}` | {type_name(value)} | `{default}` | {text} |")
    return "\n".join(lines)


def render_readme(chart: Path) -> str:
    readme = (chart / "README.md").read_text()
    if START not in readme or END not in readme:
        raise ValueError(f"{chart}/README.md lacks the {START} / {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(chart)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail instead of rewriting")
    parser.add_argument("charts", nargs="+", type=Path)
    args = parser.parse_args(argv)
    status = 0
    for chart in args.charts:
        try:
            new = render_readme(chart)
        except (UndocumentedError, ValueError) as exc:
            print(f"chart-docs: {chart}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.check:
            if new != (chart / "README.md").read_text():
                print(f"chart-docs: {chart}/README.md is stale; run make chart-docs", file=sys.stderr)
                status = 1
        else:
            (chart / "README.md").write_text(new)
    return status


if __name__ == "__main__":
    sys.exit(main())
