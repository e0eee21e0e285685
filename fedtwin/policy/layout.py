"""The policy's spec and the flat float32 parameter vector that moves between steps (NumPy, no torch).

Updates travel as one vector with a fixed, named layout, so aggregation is one matrix operation
and model files are safetensors with the policy spec in their metadata (never pickle). The torch
network these vectors belong to is in `network.py`; this module names its parameters without it.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedtwin.core.errors import FedtwinError
from fedtwin.core.limits import MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH

PolicyKind = Literal["actor_critic", "reinforce"]
ActionKind = Literal["categorical", "gaussian"]
LOG_STD = "actor.log_std"
"""A gaussian policy's state-independent log standard deviation, one per action dimension."""


class LayoutError(FedtwinError):
    """A parameter vector or model file does not match the policy's named layout."""


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed to rebuild the network a parameter vector belongs to."""

    kind: PolicyKind
    """`actor_critic` (PPO: actor + separate critic) or `reinforce` (actor only)."""
    hidden: tuple[int, ...]
    """Hidden layer sizes, shared by actor and critic."""
    obs_dim: int = 4
    act_dim: int = 2
    """Categorical: the number of actions (logits); gaussian: the action's dimensions (means)."""
    action: ActionKind = "categorical"
    """`categorical` (a discrete action space) or `gaussian` (a Box: mean head + state-independent
    `actor.log_std`, as CleanRL's ppo_continuous_action)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.kind not in get_args(PolicyKind):
            raise LayoutError(f"policy kind {self.kind!r} is not one of {get_args(PolicyKind)}")
        if self.action not in get_args(ActionKind):
            raise LayoutError(f"policy action {self.action!r} is not one of {get_args(ActionKind)}")
        min_act = 2 if self.action == "categorical" else 1
        if not self.hidden or min(self.hidden) < 1 or self.obs_dim < 1 or self.act_dim < min_act:
            raise LayoutError(
                f"policy sizes must be positive with act_dim >= {min_act} "
                f"(hidden={list(self.hidden)}, obs_dim={self.obs_dim}, act_dim={self.act_dim})"
            )
        # A model file declares its own network: bounded before any memory follows the numbers.
        if len(self.hidden) > MAX_HIDDEN_LAYERS or max(self.hidden) > MAX_HIDDEN_WIDTH:
            raise LayoutError(f"hidden layer sizes must be 1 to {MAX_HIDDEN_WIDTH}, at most "
                              f"{MAX_HIDDEN_LAYERS} layers (got {list(self.hidden)[:MAX_HIDDEN_LAYERS + 1]})")
        if max(self.obs_dim, self.act_dim) > MAX_HIDDEN_WIDTH:
            raise LayoutError(f"obs_dim and act_dim must be at most {MAX_HIDDEN_WIDTH} "
                              f"(got {self.obs_dim}, {self.act_dim})")

    def to_json(self) -> str:
        data: dict[str, Any] = {**asdict(self), "hidden": list(self.hidden)}
        if self.action == "categorical":  # model files written before gaussian policies stay byte-identical
            del data["action"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PolicySpec:
        try:
            data = json.loads(text)
            hidden = data["hidden"]
            if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS + 1:
                raise ValueError(f"hidden must be a list of at most {MAX_HIDDEN_LAYERS} sizes")
            return cls(data["kind"], tuple(hidden), int(data["obs_dim"]), int(data["act_dim"]),
                       data.get("action", "categorical"))
        except (ValueError, KeyError, TypeError) as exc:
            raise LayoutError(f"policy metadata {text!r} is not a valid policy spec ({exc})") from exc


# --------------------------------------------------------------------------------- flat layout
@dataclass(frozen=True)
class ParamLayout:
    """Ordered parameter names and shapes: how a flat vector maps onto named tensors."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def to_dict(self, vector: Any) -> dict[str, Any]:
        """Views of `vector` (NumPy or torch, shape (..., P)) as named tensors of shape (..., *shape)."""
        if vector.shape[-1:] != (self.size,):
            raise LayoutError(
                f"parameter vector has shape {tuple(vector.shape)}, expected (..., {self.size}) "
                "for this policy"
            )
        lead = tuple(vector.shape[:-1])
        out: dict[str, Any] = {}
        offset = 0
        for name, shape, n in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = vector[..., offset : offset + n].reshape(*lead, *shape)
            offset += n
        return out

    def from_dict(self, named: Mapping[str, Any]) -> np.ndarray:
        """Inverse of `to_dict`: named arrays of shape (..., *shape) -> float32 (..., P)."""
        self.check(
            {k: tuple(v.shape) for k, v in named.items()},
            {k: str(v.dtype) for k, v in named.items()},
            lead=True,
        )
        arrays = [np.asarray(named[name], dtype=np.float32) for name in self.names]
        lead = arrays[0].shape[: arrays[0].ndim - len(self.shapes[0])]
        return np.concatenate([a.reshape(*lead, -1) for a in arrays], axis=-1)

    def check(
        self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], lead: bool = False
    ) -> None:
        """Raise a LayoutError naming every missing, unexpected or wrongly shaped tensor."""
        problems = []
        missing = [n for n in self.names if n not in shapes]
        extra = sorted(set(shapes) - set(self.names))
        if missing:
            problems.append(f"missing tensors {missing}")
        if extra:
            problems.append(f"unexpected tensors {extra}")
        leads = set()
        for name, expected in zip(self.names, self.shapes, strict=True):
            if name not in shapes:
                continue
            got = tuple(shapes[name])
            tail = got[len(got) - len(expected) :] if lead else got
            if tail != expected or (lead and len(got) < len(expected)):
                problems.append(f"{name} has shape {list(got)}, expected {list(expected)}")
            leads.add(got[: len(got) - len(expected)])
            if dtypes.get(name, "float32").lower() not in ("float32", "f32", "torch.float32"):
                problems.append(f"{name} has dtype {dtypes[name]}, expected float32")
        if len(leads) > 1:
            problems.append(f"tensors have different leading dimensions {sorted(leads)}")
        if problems:
            raise LayoutError("parameters do not match the policy layout: " + "; ".join(problems))


@lru_cache(maxsize=32)
def layout_for(spec: PolicySpec) -> ParamLayout:
    """`PolicyNet(spec).named_parameters()`'s names and shapes, computed without building the network,
    so a model file is checked against its declared layout before any memory is spent on it."""
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    heads = [("actor", spec.act_dim)] + ([("critic", 1)] if spec.kind == "actor_critic" else [])
    for head, out in heads:
        sizes = (spec.obs_dim, *spec.hidden, out)
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            names += [f"{head}.{2 * i}.weight", f"{head}.{2 * i}.bias"]  # Linear, Tanh, Linear, ...
            shapes += [(n_out, n_in), (n_out,)]
        if head == "actor" and spec.action == "gaussian":
            names.append(LOG_STD)  # one more weight: every strategy averages it like the others
            shapes.append((spec.act_dim,))
    return ParamLayout(tuple(names), tuple(shapes))



# ----------------------------------------------------------------------------- safetensors I/O
def params_to_bytes(vector: np.ndarray, spec: PolicySpec, metadata: dict[str, str] | None = None) -> bytes:
    """Named float32 tensors plus `{"policy": spec json}` metadata, in safetensors format."""
    layout = layout_for(spec)
    vector = np.asarray(vector)
    if vector.shape != (layout.size,):
        raise LayoutError(f"parameter vector has shape {vector.shape}, expected ({layout.size},) for {spec}")
    meta = dict(metadata or {})
    if "policy" in meta:
        raise LayoutError("metadata key 'policy' is reserved for the policy spec")
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise LayoutError(f"safetensors metadata must map str to str; bad keys {bad}")
    tensors = {n: np.ascontiguousarray(a) for n, a in layout.to_dict(vector.astype(np.float32)).items()}
    return st_save(tensors, metadata={"policy": spec.to_json(), **meta})


def params_to_bytes_many(matrix: np.ndarray, spec: PolicySpec) -> list[bytes]:
    """`params_to_bytes` of each row of a [K, P] matrix (a fleet shard's updates), byte for byte.

    Every row's file has the same header; only the payload differs. The first row is saved by
    safetensors, which fixes the header and where each tensor's bytes go; the other rows' payloads are
    that one gather of their float32 values, so the shard costs one save and one indexing step.
    """
    matrix = np.asarray(matrix)
    layout = layout_for(spec)
    if matrix.ndim != 2 or matrix.shape[1] != layout.size:
        raise LayoutError(f"update matrix has shape {matrix.shape}, expected (K, {layout.size}) for {spec}")
    if not len(matrix):
        return []
    first = params_to_bytes(matrix[0], spec)
    (length,) = struct.unpack("<Q", first[:8])
    header = read_header(first)
    header.pop("__metadata__", None)
    head = 8 + length  # safetensors pads its header to 8 bytes: the payload is float32-aligned
    files = np.empty((len(matrix) - 1, head + 4 * layout.size), dtype=np.uint8)
    files[:, :head] = np.frombuffer(first, dtype=np.uint8, count=head)
    payload = files[:, head:].view("<f4")
    offset = 0
    for name, n in zip(layout.names, layout.sizes, strict=True):
        start = header[name]["data_offsets"][0] // 4
        payload[:, start : start + n] = matrix[1:, offset : offset + n]
        offset += n
    return [first] + [row.tobytes() for row in files]


def read_header(data: bytes) -> dict[str, Any]:
    """The safetensors JSON header (8-byte little-endian length, then JSON); no tensor data is read."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if length > len(data) - 8:
            raise ValueError("header length exceeds the data")
        header = json.loads(data[8 : 8 + length])
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (struct.error, ValueError) as exc:
        raise LayoutError(f"not a safetensors model file ({exc})") from exc
    return header


def params_from_bytes(data: bytes, spec: PolicySpec | None = None) -> tuple[np.ndarray, PolicySpec]:
    """Parse and check a model file; `spec=None` trusts the spec recorded in the file."""
    header = read_header(data)
    meta = header.pop("__metadata__", None) or {}
    file_spec = PolicySpec.from_json(meta["policy"]) if "policy" in meta else None
    if spec is None:
        if file_spec is None:
            raise LayoutError("model file has no 'policy' metadata; pass the expected policy spec")
        spec = file_spec
    elif file_spec is not None and file_spec != spec:
        raise LayoutError(f"model file holds policy {file_spec}, expected {spec}")
    layout = layout_for(spec)
    try:
        shapes = {n: tuple(e["shape"]) for n, e in header.items()}
        dtypes = {n: str(e["dtype"]) for n, e in header.items()}
    except (KeyError, TypeError) as exc:
        raise LayoutError(f"not a safetensors model file (bad tensor entry: {exc})") from exc
    layout.check(shapes, dtypes)
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for truncated data
        raise LayoutError(f"model file is corrupt ({exc})") from exc
    return layout.from_dict(tensors), spec


# ---------------------------------------------------------------------------------- evaluation
def actor_logits(spec: PolicySpec, vector: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Actor logits (gaussian: means) in NumPy: `vector` (P,) with `obs` (n, D), or per twin (K, P)
    with (K, n, D)."""
    named = layout_for(spec).to_dict(np.asarray(vector, dtype=np.float32))
    h = np.asarray(obs, dtype=np.float32)
    depth = len(spec.hidden) + 1
    for i in range(depth):
        weight, bias = named[f"actor.{2 * i}.weight"], named[f"actor.{2 * i}.bias"]
        h = h @ np.swapaxes(weight, -1, -2) + bias[..., None, :]
        if i < depth - 1:
            h = np.tanh(h)
    return h


def greedy_actions(spec: PolicySpec, vector: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Evaluation actions: the argmax (categorical) or the mean (gaussian, float32 (..., A), for the
    caller to clip to the action space); batched over twins when `vector` is (K, P) and `obs` (K, n, D)."""
    out = actor_logits(spec, vector, obs)
    return out.argmax(axis=-1) if spec.action == "categorical" else out
