"""Argo's template language, as much of it as fedtwin's templates and the conformance cases use.

Two evaluators, as in Argo: `{{=...}}` tags and `retryStrategy.expression` are expr-lang
(`util/expr/env/env.go` GetFuncMap: `asInt`, `asFloat`, `toJson`, `jsonpath`, `sprig`), and `when`
is govaluate after substitution, with bare words read as strings (`steps.go` shouldExecute). Simple
tags `{{name}}` are looked up in a flat scope (`util/template/simple_template.go`). A reference
without a value raises `Unresolved` where Argo would refuse or requeue forever; with `lenient`, the
tag is left in place as Argo's `Replace(..., allowUnresolved=true)` leaves it, for a later pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

TAG = re.compile(r"\{\{\s*(=)?\s*(.*?)\s*\}\}")


class Unsupported(Exception):
    """The template uses an Argo feature this executor does not implement."""


class Unresolved(Exception):
    """A `{{...}}` reference has no value in scope (Argo would refuse the workflow or requeue forever)."""


# ------------------------------------------------------------------------ expression evaluation
TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||\?\?|[-+*/<>!?:.\[\](),]))"
)


def _tokens(source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    source = source.strip()
    while pos < len(source):
        match = TOKEN.match(source, pos)
        if not match or match.end() == pos:
            raise SyntaxError(f"cannot tokenize {source[pos:]!r} in {source!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _sprig_trunc(n: int, s: str) -> str:
    return s[:n] if n >= 0 else s[n:]


SPRIG: dict[str, Callable[..., Any]] = {
    "trimAll": lambda cutset, s: s.strip(cutset),
    "trunc": _sprig_trunc,
    "replace": lambda old, new, s: s.replace(old, new),
    "default": lambda default, value: value or default,
    "trim": lambda s: s.strip(),
}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "asInt": lambda v: int(v),
    "asFloat": lambda v: float(v),
    "string": lambda v: v if isinstance(v, str) else json.dumps(v),
    "toJson": lambda v: json.dumps(v, separators=(",", ":")),
}


class Expression:
    """Recursive-descent evaluator for the expr-lang subset the templates use (and govaluate `when`).

    With `bare_strings` (govaluate mode), an unknown bare identifier is its own name as a string,
    the way Argo turns govaluate variables into strings.
    """

    def __init__(self, source: str, env: Mapping[str, Any], bare_strings: bool = False) -> None:
        self.source, self.env, self.bare = source, env, bare_strings
        self.toks = _tokens(source)
        self.i = 0

    def value(self) -> Any:
        result = self._ternary()
        if self.i != len(self.toks):
            raise SyntaxError(f"unexpected {self.toks[self.i][1]!r} in {self.source!r}")
        return result

    def _peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise SyntaxError(f"unexpected end of {self.source!r}")
        tok = self.toks[self.i]
        if expected is not None and tok[1] != expected:
            raise SyntaxError(f"expected {expected!r}, got {tok[1]!r} in {self.source!r}")
        self.i += 1
        return tok

    def _ternary(self) -> Any:
        cond = self._or()
        if self._peek() == "?":
            self._take("?")
            then = self._ternary()
            self._take(":")
            otherwise = self._ternary()
            return then if cond else otherwise
        return cond

    def _or(self) -> Any:
        left = self._and()
        while self._peek() in ("||", "??"):
            op = self._take()[1]
            right = self._and()
            left = (left or right) if op == "||" else (right if left is None else left)
        return left

    def _and(self) -> Any:
        left = self._cmp()
        while self._peek() == "&&":
            self._take()
            right = self._cmp()
            left = left and right
        return left

    def _cmp(self) -> Any:
        left = self._add()
        op = self._peek()
        if op in ("==", "!=", "<", ">", "<=", ">="):
            self._take()
            right = self._add()
            compare = {
                "==": lambda a, b: a == b,
                "!=": lambda a, b: a != b,
                "<": lambda a, b: a < b,
                ">": lambda a, b: a > b,
                "<=": lambda a, b: a <= b,
                ">=": lambda a, b: a >= b,
            }
            return compare[op](left, right)
        return left

    def _add(self) -> Any:
        left = self._unary()
        while self._peek() in ("+", "-"):
            op = self._take()[1]
            right = self._unary()
            if op == "-" and (isinstance(left, str) or isinstance(right, str)):
                raise SyntaxError(f"'-' between strings in {self.source!r} (hyphenated bare word?)")
            left = left + right if op == "+" else left - right
        return left

    def _unary(self) -> Any:
        if self._peek() == "!":
            self._take()
            return not self._unary()
        if self._peek() == "-":
            self._take()
            return -self._unary()
        return self._postfix()

    def _postfix(self) -> Any:
        value, name = self._primary()
        while self._peek() in (".", "[", "("):
            op = self._take()[1]
            if op == ".":
                key = self._take()[1]
                value, name = self._member(value, key, f"{name}.{key}")
            elif op == "[":
                key = self._ternary()
                self._take("]")
                value, name = self._member(value, key, f"{name}[{key!r}]")
            else:
                args = []
                while self._peek() != ")":
                    args.append(self._ternary())
                    if self._peek() == ",":
                        self._take(",")
                self._take(")")
                if not callable(value):
                    raise Unresolved(f"{name} is not a function in {self.source!r}")
                value, name = value(*args), f"{name}(...)"
        return value

    def _member(self, value: Any, key: Any, name: str) -> tuple[Any, str]:
        if isinstance(value, Mapping) and key in value:
            return value[key], name
        if isinstance(value, list) and isinstance(key, int):
            return value[key], name
        raise Unresolved(f"{name} is not defined (in {self.source!r})")

    def _primary(self) -> tuple[Any, str]:
        kind, text = self._take()
        if kind == "num":
            return (float(text) if "." in text else int(text)), text
        if kind == "str":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape"), text
        if text == "(":
            value = self._ternary()
            self._take(")")
            return value, "(...)"
        if kind == "name":
            if text in ("true", "false"):
                return text == "true", text
            if text == "nil":
                return None, text
            if text in FUNCTIONS:
                return FUNCTIONS[text], text
            if text == "sprig":
                return SPRIG, text
            if text in self.env:
                return self.env[text], text
            if self.bare:
                return text, text
            raise Unresolved(f"{text} is not defined (in {self.source!r})")
        raise SyntaxError(f"unexpected {text!r} in {self.source!r}")


class Nested(Mapping[str, Any]):
    """A flat scope {"a.b.c": v} seen as nested maps {"a": {"b": {"c": v}}}, lazily (an expression
    reads a few names; building the whole tree for each one would cost more than evaluating it)."""

    def __init__(self, flat: Mapping[str, Any], prefix: str = "") -> None:
        self.flat, self.prefix = flat, prefix

    def __getitem__(self, key: str) -> Any:
        full = self.prefix + str(key)
        if full in self.flat:
            return self.flat[full]
        deeper = full + "."
        if any(k.startswith(deeper) for k in self.flat):
            return Nested(self.flat, deeper)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        seen = {k[len(self.prefix):].split(".")[0] for k in self.flat if k.startswith(self.prefix)}
        return iter(sorted(seen))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def nested(flat: Mapping[str, Any]) -> Mapping[str, Any]:
    """{"a.b.c": v} -> {"a": {"b": {"c": v}}} (the environment of an expression)."""
    return Nested(flat)


def evaluate(source: str, scope: Mapping[str, Any]) -> Any:
    return Expression(source, nested(scope)).value()


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


def substitute(text: str, scope: Mapping[str, Any], lenient: bool = False) -> str:
    """Replace every `{{tag}}` and `{{=expression}}`; a missing reference raises Unresolved, or with
    `lenient` leaves its tag for a later pass."""

    def one(match: re.Match[str]) -> str:
        is_expr, body = match.group(1), match.group(2)
        try:
            if is_expr:
                return as_text(evaluate(body, scope))
            if body not in scope:
                raise Unresolved(f"{{{{{body}}}}} has no value here")
            return as_text(scope[body])
        except Unresolved:
            if lenient:
                return match.group(0)
            raise

    return TAG.sub(one, text)


def deep_substitute(obj: Any, scope: Mapping[str, Any], lenient: bool = False) -> Any:
    """Substitute in keys and values of nested data, like Argo does on the template's JSON."""
    if isinstance(obj, str):
        return substitute(obj, scope, lenient)
    if isinstance(obj, list):
        return [deep_substitute(v, scope, lenient) for v in obj]
    if isinstance(obj, dict):
        return {
            deep_substitute(k, scope, lenient): deep_substitute(v, scope, lenient) for k, v in obj.items()
        }
    return obj


def condition(text: str) -> bool:
    """A substituted `when` (govaluate: bare words are strings)."""
    result = Expression(text, {}, bare_strings=True).value()
    if not isinstance(result, bool):
        raise SyntaxError(f"`when` {text!r} is not a boolean expression")
    return result
