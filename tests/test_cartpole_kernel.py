"""The compiled CartPole step (fedtwin/sim/cartpole_kernel.py) gives the NumPy path's floats, bit for bit.

tests/test_envs.py runs every env test on both paths (gymnasium parity included); this file compares
the two paths directly, step by step, on fleets with per-twin physics and every imperfection.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fedtwin.sim import cartpole_kernel
from fedtwin.sim.envs import TwinCartPoleVectorEnv
from fedtwin.sim.twins import generate_twins
from tests.test_envs import controller


@pytest.fixture(autouse=True)
def kernel_available(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every env of these tests runs the compiled step, however small."""
    monkeypatch.setenv(cartpole_kernel.KERNEL_ENV, "numba")
    if cartpole_kernel.compiled_step() is None:
        pytest.fail("the compiled step is not available: install the dev extras (numba)")


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_kernel_and_numpy_paths_give_the_same_floats(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Identical observations, rewards, terminations, truncations, episode records and states, with
    per-twin physics (and for `hard`, friction, noise and delay): the path never changes a result."""
    twins = generate_twins(6, seed=3, preset=preset)
    compiled = TwinCartPoleVectorEnv(twins, envs_per_twin=5)
    monkeypatch.setenv(cartpole_kernel.KERNEL_ENV, "numpy")
    plain = TwinCartPoleVectorEnv(twins, envs_per_twin=5)
    assert compiled._sim.kernel is not None and plain._sim.kernel is None
    obs, _ = compiled.reset(seed=7)
    assert np.array_equal(obs, plain.reset(seed=7)[0])
    rng = np.random.default_rng(1)
    finished = 0

    for _ in range(600):
        actions = controller(obs, rng, explore=0.3)
        out_compiled, out_plain = compiled.step(actions), plain.step(actions)
        for a, b in zip(out_compiled[:4], out_plain[:4], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert out_compiled[4].keys() == out_plain[4].keys()
        for key in out_compiled[4]:
            assert np.array_equal(out_compiled[4][key], out_plain[4][key]), key
        assert np.array_equal(compiled.state, plain.state)
        finished += int(out_compiled[4].get("_episode", np.zeros(1, bool)).sum())
        obs = out_compiled[0]
    assert finished > 20  # many autoresets compared too


def test_kernel_sign_is_numpys_sign() -> None:
    """The friction term's sign(x_dot): numba's own np.sign gives -0.0 for -0.0, NumPy gives 0.0."""
    values = np.array([-0.0, 0.0, math.nan, -3.5, 2.0, -math.inf])
    for value, want in zip(values, np.sign(values), strict=True):
        got = cartpole_kernel._sign(float(value))
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want), value


def test_kernel_can_be_switched_off_by_environment() -> None:
    code = "import sys, fedtwin.sim.cartpole_kernel as k; sys.exit(k.kernel_for(1 << 20) is not None)"
    env = {**os.environ, cartpole_kernel.KERNEL_ENV: "numpy"}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_small_envs_take_the_numpy_path_and_never_import_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a small env (a one-twin pod, the aggregator's validation) runs NumPy: loading numba
    and its cached kernel would cost the process more than the kernel saves; a large env compiles."""
    monkeypatch.delenv(cartpole_kernel.KERNEL_ENV)
    small = TwinCartPoleVectorEnv(generate_twins(4, seed=0), envs_per_twin=2)
    large = TwinCartPoleVectorEnv(generate_twins(cartpole_kernel.KERNEL_MIN_ENVS, seed=0), envs_per_twin=1)
    assert small._sim.kernel is None and large._sim.kernel is not None
    code = ("import sys, numpy as np; from fedtwin.sim.envs import TwinCartPoleVectorEnv; "
            "from fedtwin.sim.twins import generate_twins; "
            "env = TwinCartPoleVectorEnv(generate_twins(8, seed=0)); env.reset(seed=0); "
            "env.step(np.ones(8, dtype=np.int64)); sys.exit('numba' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != cartpole_kernel.KERNEL_ENV}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_one_machine_code_version_serves_every_fleet() -> None:
    """Shared and per-twin parameters reach the kernel as the same array type: numba compiles one
    version (~1 s each) instead of one per mix of shared and per-twin parameters."""
    for twins in (generate_twins(1, seed=0, spread=0.0), generate_twins(4, seed=1),
                  generate_twins(4, seed=2, preset="hard")):
        env = TwinCartPoleVectorEnv(twins, envs_per_twin=3)
        env.reset(seed=0)
        env.step(np.ones(env.num_envs, dtype=np.int64))
    assert len(cartpole_kernel.compiled_step().signatures) == 1


def test_warm_up_compiles_the_version_the_envs_run() -> None:
    """The image build's `python -m fedtwin.sim.cartpole_kernel` must leave the machine code the envs
    use in numba's cache: its arguments have the simulator's types, so no second version appears."""
    assert cartpole_kernel.warm_up()
    env = TwinCartPoleVectorEnv(generate_twins(2, seed=0), envs_per_twin=2)
    env.reset(seed=0)
    env.step(np.ones(env.num_envs, dtype=np.int64))
    assert len(cartpole_kernel.compiled_step().signatures) == 1
