"""Policy spec, flat parameter layout and safetensors model files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save as st_save

from fedtwin.config import TrainConfig
from fedtwin.core.errors import FedtwinError
from fedtwin.learn.train import policy_spec
from fedtwin.policy.layout import (
    LayoutError,
    PolicySpec,
    greedy_actions,
    layout_for,
    params_from_bytes,
    params_to_bytes,
    params_to_bytes_many,
    read_header,
)
from fedtwin.policy.network import build_policy, init_params

PPO = PolicySpec("actor_critic", (64, 64))
REF = PolicySpec("reinforce", (32, 16))


def test_policy_spec_from_train_config() -> None:
    assert policy_spec(TrainConfig()) == PPO
    assert policy_spec(TrainConfig(algo="reinforce")) == REF
    assert policy_spec(TrainConfig(hidden=[8])) == PolicySpec("actor_critic", (8,))


def test_param_counts_by_hand() -> None:
    # REINFORCE reference net 4-32-16-2: (4*32+32) + (32*16+16) + (16*2+2)
    assert layout_for(REF).size == 160 + 528 + 34 == 722
    # PPO actor 4-64-64-2 plus critic 4-64-64-1
    actor = (4 * 64 + 64) + (64 * 64 + 64) + (64 * 2 + 2)
    critic = (4 * 64 + 64) + (64 * 64 + 64) + (64 * 1 + 1)
    assert layout_for(PPO).size == actor + critic == 9155
    assert layout_for(REF).names == (
        "actor.0.weight",
        "actor.0.bias",
        "actor.2.weight",
        "actor.2.bias",
        "actor.4.weight",
        "actor.4.bias",
    )
    assert layout_for(PPO).names[6:] == tuple(n.replace("actor", "critic") for n in layout_for(REF).names)


@pytest.mark.parametrize("spec", [PPO, REF, PolicySpec("actor_critic", (5, 7, 3), obs_dim=6, act_dim=3)],
                         ids=["ppo", "reinforce", "three-layers"])
def test_layout_matches_module_order(spec: PolicySpec) -> None:
    """The layout is computed without building the network; it must be the module's own."""
    module = build_policy(spec, seed=0)
    layout = layout_for(spec)
    assert [(n, tuple(p.shape)) for n, p in module.named_parameters()] == list(
        zip(layout.names, layout.shapes, strict=True)
    )


def test_layout_round_trip_and_views() -> None:
    layout = layout_for(REF)
    vector = np.arange(layout.size, dtype=np.float32)

    named = layout.to_dict(vector)

    np.testing.assert_array_equal(named["actor.0.weight"], np.arange(128).reshape(32, 4))
    np.testing.assert_array_equal(named["actor.0.bias"], np.arange(128, 160))
    np.testing.assert_array_equal(named["actor.4.bias"], [720, 721])
    np.testing.assert_array_equal(layout.from_dict(named), vector)
    # Leading (twin) dimensions pass through, for NumPy and torch alike.
    stacked = np.stack([vector, -vector])
    assert layout.to_dict(stacked)["actor.2.weight"].shape == (2, 16, 32)
    np.testing.assert_array_equal(layout.from_dict(layout.to_dict(stacked)), stacked)
    assert layout.to_dict(torch.as_tensor(stacked))["actor.0.weight"].shape == (2, 32, 4)


def test_layout_rejects_wrong_vector_size() -> None:
    with pytest.raises(LayoutError, match=r"expected \(\.\.\., 722\)"):
        layout_for(REF).to_dict(np.zeros(721, dtype=np.float32))


def test_init_deterministic_and_cleanrl_scaled() -> None:
    rng_state = torch.random.get_rng_state()

    a, b, c = init_params(PPO, 3), init_params(PPO, 3), init_params(PPO, 4)

    assert torch.equal(torch.random.get_rng_state(), rng_state), "init must not touch the global RNG"
    assert a.dtype == np.float32 and a.shape == (9155,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    named = layout_for(PPO).to_dict(a)
    w0 = named["actor.0.weight"].astype(np.float64)  # (64, 4): orthonormal columns times sqrt(2)
    np.testing.assert_allclose(w0.T @ w0, 2.0 * np.eye(4), atol=1e-5)
    out = named["actor.4.weight"].astype(np.float64)  # (2, 64): orthonormal rows times 0.01
    np.testing.assert_allclose(out @ out.T, 1e-4 * np.eye(2), atol=1e-9)
    value = named["critic.4.weight"].astype(np.float64)  # (1, 64): unit row
    np.testing.assert_allclose(value @ value.T, [[1.0]], atol=1e-5)
    assert all(not named[n].any() for n in named if n.endswith("bias"))


def test_safetensors_round_trip(tmp_path) -> None:
    vector = init_params(PPO, 0)

    data = params_to_bytes(vector, PPO, {"round": "3"})
    loaded, spec = params_from_bytes(data)

    assert spec == PPO
    assert loaded.dtype == np.float32
    assert loaded.tobytes() == vector.tobytes()
    assert read_header(data)["__metadata__"] == {"policy": PPO.to_json(), "round": "3"}
    np.testing.assert_array_equal(params_from_bytes(data, PPO)[0], vector)
    # A file on disk opens with the safetensors library itself.
    path = tmp_path / "global.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="np") as f:
        assert list(f.keys()) == sorted(layout_for(PPO).names)
        assert json.loads(f.metadata()["policy"])["hidden"] == [64, 64]


@pytest.mark.parametrize("spec", [PPO, REF, PolicySpec("actor_critic", (8, 4), 3, 1, "gaussian")])
def test_a_shard_of_model_files_is_each_file_byte_for_byte(spec: PolicySpec) -> None:
    """The train step writes a shard's files from one save and one gather: the very bytes (and so the
    sha256s) `params_to_bytes` gives each row, which the aggregator parses back to the same floats."""
    matrix = np.random.default_rng(0).standard_normal((5, layout_for(spec).size)).astype(np.float32)
    files = params_to_bytes_many(matrix, spec)
    assert files == [params_to_bytes(row, spec) for row in matrix]
    for row, data in zip(matrix, files, strict=True):
        assert np.array_equal(params_from_bytes(data, spec)[0], row)
    assert params_to_bytes_many(matrix[:0], spec) == []
    with pytest.raises(LayoutError, match="expected"):
        params_to_bytes_many(matrix[:, 1:], spec)


def test_file_is_safetensors_not_pickle(tmp_path) -> None:
    path = tmp_path / "update.safetensors"
    path.write_bytes(params_to_bytes(init_params(REF, 0), REF))

    raw = path.read_bytes()

    assert raw[:1] != b"\x80", "pickle protocol marker"
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    entry = header["actor.0.weight"]
    assert (entry["dtype"], entry["shape"]) == ("F32", [32, 4])
    assert entry["data_offsets"][1] - entry["data_offsets"][0] == 32 * 4 * 4
    assert len(raw) == 8 + length + 722 * 4


def _tensors(spec: PolicySpec) -> dict[str, np.ndarray]:
    return {n: np.ascontiguousarray(v) for n, v in layout_for(spec).to_dict(init_params(spec, 0)).items()}


def test_wrong_name_shape_dtype_rejected() -> None:
    renamed = _tensors(REF)
    renamed["actor.9.bias"] = renamed.pop("actor.4.bias")
    reshaped = _tensors(REF)
    reshaped["actor.2.weight"] = np.zeros((16, 31), dtype=np.float32)
    wide = _tensors(REF)
    wide["actor.0.bias"] = wide["actor.0.bias"].astype(np.float64)

    with pytest.raises(
        LayoutError, match=r"missing tensors \['actor.4.bias'\].*unexpected tensors \['actor.9.bias'\]"
    ):
        params_from_bytes(st_save(renamed), REF)
    with pytest.raises(LayoutError, match=r"actor.2.weight has shape \[16, 31\], expected \[16, 32\]"):
        params_from_bytes(st_save(reshaped), REF)
    with pytest.raises(LayoutError, match=r"actor.0.bias has dtype F64, expected float32"):
        params_from_bytes(st_save(wide), REF)


def test_spec_mismatch_and_garbage_rejected() -> None:
    data = params_to_bytes(init_params(PPO, 0), PPO)

    with pytest.raises(LayoutError, match="expected PolicySpec"):
        params_from_bytes(data, PolicySpec("actor_critic", (32, 32)))
    with pytest.raises(LayoutError, match="no 'policy' metadata"):
        params_from_bytes(st_save(_tensors(REF)))
    with pytest.raises(LayoutError, match="not a safetensors"):
        params_from_bytes(b"\x80\x04\x95 pickle bytes")
    with pytest.raises(LayoutError, match="shape"):
        params_to_bytes(np.zeros(10, dtype=np.float32), PPO)
    assert issubclass(LayoutError, FedtwinError)


def test_greedy_actions_match_module_and_batch() -> None:
    spec = PolicySpec("actor_critic", (8, 8))
    module = build_policy(spec, seed=1)
    vectors = np.stack([init_params(spec, s) for s in (1, 2)])
    vectors[1] *= 50.0  # make twin 1 disagree with twin 0 somewhere
    obs = np.random.default_rng(0).normal(size=(2, 64, 4)).astype(np.float32)

    single = greedy_actions(spec, vectors[0], obs[0])
    batched = greedy_actions(spec, vectors, obs)

    with torch.no_grad():
        expected = module(torch.as_tensor(obs[0])).argmax(-1).numpy()
    np.testing.assert_array_equal(single, expected)
    np.testing.assert_array_equal(batched[0], single)
    np.testing.assert_array_equal(batched[1], greedy_actions(spec, vectors[1], obs[1]))
    assert single.shape == (64,) and set(np.unique(batched)) <= {0, 1}
