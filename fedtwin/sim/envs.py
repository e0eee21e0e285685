"""CartPole with per-twin physics, vectorized in NumPy, with the gymnasium API.

One `TwinCartPoleVectorEnv` steps the sub-environments of many twins at once: each twin's
physics become `(n,)` arrays used in gymnasium's own CartPole expressions, so with default
physics the floats are exactly gymnasium's. Every random draw of a twin (resets, noise) comes
from that twin's own generators, so a twin's trajectory does not depend on which other twins
share the env: the fleet engine (all twins in one env) equals the pool engine (one env per twin).

`TwinCartPoleEnv` is the single-env form (`gymnasium.make("fedtwin/TwinCartPole-v0")`) and runs
the very same step code with one sub-environment.

The physics step runs as one compiled loop (`fedtwin.sim.cartpole_kernel`, when numba is installed)
or as NumPy ufuncs (`cartpole_step`); both give the same floats, so results never depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.envs.classic_control import utils as cc_utils
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fedtwin.sim.cartpole_kernel import step_kernel
from fedtwin.sim.twins import TwinSpec

ENV_ID = "fedtwin/TwinCartPole-v0"
MAX_EPISODE_STEPS = 500

THETA_THRESHOLD_RADIANS = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
RESET_LOW, RESET_HIGH = -0.05, 0.05

# Noise drawn per sub-env per step: 4 sensor, 1 actuator (a reset observation's sensor noise comes
# from a stream of its own). A fixed count keeps a twin's noise independent of the other twins'.
NOISE_SLOTS = 5
_NOISE_KEY = 0x6E6F697365  # "noise": separates a twin's noise stream from its reset stream
_NOISE_BLOCK_BYTES = 16 << 20  # pre-drawn per-step noise: up to 256 steps, at most 16 MiB
_STREAM_BUFFER_VALUES = 1 << 20  # pre-drawn values per stream, all twins together (8 MiB)
_REBASE_STEPS = 1 << 30  # step count at which episode start steps shift back towards 0 (int32)

# 0-d arrays, not Python floats: NumPy converts a Python scalar on every ufunc call.
_X_THRESHOLD = np.array(X_THRESHOLD)
_THETA_THRESHOLD = np.array(THETA_THRESHOLD_RADIANS)
_FOUR_THIRDS = np.array(4.0 / 3.0)

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]
SeedArg = int | Sequence[int] | None
StepResult = tuple[Float32Array, Float32Array, BoolArray, BoolArray, dict[str, Any]]


def _observation_space() -> spaces.Box:
    high = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD_RADIANS * 2, np.inf], dtype=np.float32)
    return spaces.Box(-high, high, dtype=np.float32)


# --- per-env physics, precomputed once ---


@dataclass(frozen=True, eq=False)
class TwinPhysics:
    """Physics of n sub-envs; sub-env i belongs to twin i // envs_per_twin.

    A parameter every sub-env shares is a 0-d array (the same IEEE operation as gymnasium's
    float, one memory stream less), otherwise a (n,) float64 array. Imperfections no twin has
    are None and skipped: subtracting a zero friction term is exact, so skipping changes no float.
    """

    twins: tuple[TwinSpec, ...]
    envs_per_twin: int
    gravity: Float64Array
    masspole: Float64Array
    total_mass: Float64Array
    polemass_length: Float64Array
    length: Float64Array
    force_mag: Float64Array
    tau: Float64Array
    friction_cart: Float64Array | None
    friction_pole: Float64Array | None
    sensor_noise: Float64Array | None
    actuator_noise: Float64Array | None
    action_delay: npt.NDArray[np.int64] | None
    noisy_twins: tuple[int, ...]
    """Twins with sensor or actuator noise: the only ones whose noise generator draws."""
    pml_and_masspole: Float64Array
    """(2, 1) or (2, n): polemass_length over masspole, to scale theta_dot**2 and cos**2 in one call."""

    @property
    def num_twins(self) -> int:
        return len(self.twins)

    @property
    def n(self) -> int:
        return self.num_twins * self.envs_per_twin

    def twin_slice(self, k: int) -> slice:
        return slice(k * self.envs_per_twin, (k + 1) * self.envs_per_twin)

    @classmethod
    def from_twins(cls, twins: Sequence[TwinSpec], envs_per_twin: int = 1) -> TwinPhysics:
        if not twins or not all(isinstance(t, TwinSpec) for t in twins):
            raise ValueError(f"twins must be a non-empty sequence of TwinSpec, got {twins!r}")
        if isinstance(envs_per_twin, bool) or not isinstance(envs_per_twin, int) or envs_per_twin < 1:
            raise ValueError(f"envs_per_twin must be an integer >= 1, got {envs_per_twin!r}")

        def per_env(values: list[float]) -> Float64Array:
            if all(v == values[0] for v in values):
                return np.array(values[0], dtype=np.float64)
            return np.repeat(np.asarray(values, dtype=np.float64), envs_per_twin)

        def optional(name: str) -> Float64Array | None:
            values = [getattr(t, name) for t in twins]
            return per_env(values) if any(values) else None

        delays = [t.action_delay for t in twins]
        pml, masspole = per_env([t.polemass_length for t in twins]), per_env([t.masspole for t in twins])
        return cls(
            twins=tuple(twins),
            envs_per_twin=envs_per_twin,
            gravity=per_env([t.gravity for t in twins]),
            masspole=masspole,
            # TwinSpec's properties are gymnasium's expressions (masspole + masscart, masspole * length).
            total_mass=per_env([t.total_mass for t in twins]),
            polemass_length=pml,
            length=per_env([t.length for t in twins]),
            force_mag=per_env([t.force_mag for t in twins]),
            tau=per_env([t.tau for t in twins]),
            friction_cart=optional("friction_cart"),
            friction_pole=optional("friction_pole"),
            sensor_noise=optional("sensor_noise"),
            actuator_noise=optional("actuator_noise"),
            action_delay=np.repeat(np.asarray(delays, dtype=np.int64), envs_per_twin)
            if any(delays)
            else None,
            noisy_twins=tuple(k for k, t in enumerate(twins) if t.sensor_noise > 0 or t.actuator_noise > 0),
            pml_and_masspole=np.stack(np.broadcast_arrays(pml, masspole)).reshape(2, -1),
        )


class _Scratch:
    """Few, reused temporaries: a step allocates only what it returns, and at N = 16384 a small
    working set is what keeps its ~30 passes over memory in cache."""

    def __init__(self, n: int) -> None:
        self.state: Float64Array | None = None
        self._views: tuple[Float64Array, ...] = ()
        self.trig = np.empty((2, n))  # cos, sin; once dead, the velocity increments and |x|, |theta|
        self.pair = np.empty((2, n))  # temp and the denominator of thetaacc
        self.tmp = np.empty(n)
        self.acc = np.empty((2, n))  # xacc, thetaacc: they update state rows 1 and 3
        self.flag = np.empty(n, dtype=np.bool_)
        self.noisy = np.empty((4, n))

    def views(self, state: Float64Array) -> tuple[Float64Array, ...]:
        """x_dot, theta, theta_dot, positions (rows 0, 2), velocities (rows 1, 3) of `state`, made once."""
        if state is not self.state:
            self.state = state
            self._views = (state[1], state[2], state[3], state[0::2], state[1::2])
        return self._views


def cartpole_step(state: Float64Array, force: Float64Array, p: TwinPhysics, s: _Scratch) -> None:
    """Advance the (4, n) state in place by one Euler step: gymnasium's expressions, per-env parameters.

    Friction follows Barto, Sutton & Anderson (1983). Every product and quotient is gymnasium's
    (in-place forms only swap commutative operands), so with zero friction every float equals
    `CartPoleEnv`/`CartPoleVectorEnv`. Ufuncs are called positionally into preallocated buffers.
    """
    mul, div, add, sub = np.multiply, np.divide, np.add, np.subtract
    x_dot, theta, theta_dot, positions, velocities = s.views(state)
    cos, sin = s.trig
    pair, tmp = s.pair, s.tmp
    temp, den = pair  # computed side by side: one multiply and one divide serve both
    np.cos(theta, cos)
    np.sin(theta, sin)
    # temp = (force + polemass_length * theta_dot**2 * sin - mu_c * sign(x_dot)) / total_mass
    # den  = length * (4/3 - masspole * cos**2 / total_mass)
    np.square(theta_dot, temp)
    np.square(cos, den)
    mul(pair, p.pml_and_masspole, pair)
    mul(temp, sin, temp)
    add(temp, force, temp)
    if p.friction_cart is not None:
        np.sign(x_dot, tmp)
        mul(tmp, p.friction_cart, tmp)
        sub(temp, tmp, temp)
    div(pair, p.total_mass, pair)
    sub(_FOUR_THIRDS, den, den)
    mul(den, p.length, den)
    # thetaacc = (g * sin - cos * temp - mu_p * theta_dot / polemass_length) / den
    xacc, thetaacc = s.acc
    mul(sin, p.gravity, thetaacc)
    mul(cos, temp, tmp)
    sub(thetaacc, tmp, thetaacc)
    if p.friction_pole is not None:
        mul(theta_dot, p.friction_pole, tmp)
        div(tmp, p.polemass_length, tmp)
        sub(thetaacc, tmp, thetaacc)
    div(thetaacc, den, thetaacc)
    # xacc = temp - polemass_length * thetaacc * cos / total_mass
    mul(thetaacc, p.polemass_length, tmp)
    mul(tmp, cos, tmp)
    div(tmp, p.total_mass, tmp)
    sub(temp, tmp, xacc)
    # Euler (gymnasium's default integrator): positions move with the old velocities.
    increments = s.trig  # cos and sin are dead now
    mul(velocities, p.tau, increments)
    add(positions, increments, positions)
    mul(s.acc, p.tau, s.acc)
    add(velocities, s.acc, velocities)


def _kernel_args(p: TwinPhysics) -> tuple[Any, ...]:
    """`step_kernel`'s physics arguments: every parameter as an (n,) C-contiguous array.

    Always the same array type, shared value or not: numba compiles one machine-code version per
    combination of argument types, and each costs ~1 s.
    """

    def per_env(values: Float64Array | None) -> Float64Array:
        return np.array(np.broadcast_to(np.zeros(()) if values is None else values, (p.n,)), order="C")

    return (per_env(p.gravity), per_env(p.masspole), per_env(p.total_mass), per_env(p.polemass_length),
            per_env(p.length), per_env(p.tau), per_env(p.friction_cart), per_env(p.friction_pole),
            p.friction_cart is not None, p.friction_pole is not None, X_THRESHOLD, THETA_THRESHOLD_RADIANS,
            float(_FOUR_THIRDS))


def _terminated(state: Float64Array, s: _Scratch) -> BoolArray:
    """|x| > 2.4 or |theta| > 12°: the truth value of gymnasium's four comparisons, in fewer passes."""
    abs_x, abs_theta = np.abs(s.views(state)[3], s.trig)
    out = np.greater(abs_x, _X_THRESHOLD)
    np.greater(abs_theta, _THETA_THRESHOLD, s.flag)
    return np.logical_or(out, s.flag, out)


def _check_actions(actions: Any, n: int) -> np.ndarray:
    """0/1 actions as an integer array usable as take() indices; anything else is a ValueError."""
    act = np.asarray(actions)
    if act.shape != (n,) or act.dtype.kind not in "biu":
        raise ValueError(f"actions must be an integer array of shape ({n},), got {act.dtype} {act.shape}")
    if act.dtype.kind == "b":
        return act.view(np.uint8)
    bits = np.bitwise_or.reduce(act)
    if not 0 <= bits <= 1:  # a negative value makes the OR negative, a value >= 2 makes it >= 2
        raise ValueError(f"actions must be 0 (push left) or 1 (push right), got values {np.unique(act)}")
    return act


class _DelayLine:
    """Actions reach the cart `delay` steps late; an episode starts with the line full of its first action."""

    def __init__(self, delays: npt.NDArray[np.int64]) -> None:
        n = delays.size
        self.size = int(delays.max()) + 1
        self.history = np.zeros((self.size, n), dtype=np.uint8)
        # applied action at flat index ((pos - delay) % size) * n + env == (offset + pos * n) % (size * n)
        self.offset = ((self.size - delays) % self.size) * n + np.arange(n)
        self.pos = 0
        self.fresh = np.ones(n, dtype=np.bool_)

    def restart(self, idx: IndexArray | None = None) -> None:
        if idx is None:
            self.fresh[:] = True
        else:
            self.fresh[idx] = True

    def push(self, actions: np.ndarray) -> np.ndarray:
        n = self.fresh.size
        self.pos = (self.pos + 1) % self.size
        if self.fresh.any():
            cols = np.flatnonzero(self.fresh)
            self.history[:, cols] = actions[cols]
            self.fresh[:] = False
        self.history[self.pos] = actions
        flat = self.offset + self.pos * n
        flat %= self.size * n
        return self.history.ravel()[flat]


class _NoiseSource:
    """Per-step Gaussian noise of the noisy twins, pre-drawn in blocks of steps from each one's generator.

    A twin's stream holds NOISE_SLOTS * envs_per_twin float32 normals per step, in step order, and
    NumPy's normals do not depend on how a stream is chunked, so the block size (which depends on
    the env's size) never changes a twin's noise; an explicit reset simply goes on with the stream.
    """

    def __init__(self, p: TwinPhysics) -> None:
        self.p = p
        self.block_steps = max(1, min(256, _NOISE_BLOCK_BYTES // (4 * NOISE_SLOTS * p.n)))
        # One contiguous block per twin, so each twin's draw lands in place (a scattered write of
        # every twin's few envs into a (steps, slots, n) block costs more than the draws).
        shape = (p.num_twins, self.block_steps, NOISE_SLOTS, p.envs_per_twin)
        self.block = np.zeros(shape, dtype=np.float32)
        self.step = np.empty((NOISE_SLOTS, p.num_twins, p.envs_per_twin), dtype=np.float32)
        self.pos = self.block_steps
        self.generators: dict[int, np.random.Generator] = {}

    def seed(self, generators: dict[int, np.random.Generator]) -> None:
        self.generators = generators
        self.pos = self.block_steps

    def next_step(self) -> Float32Array:
        """(NOISE_SLOTS, n) normals for this step (zero for twins without noise)."""
        if self.pos == self.block_steps:
            for k, gen in self.generators.items():
                gen.standard_normal(dtype=np.float32, out=self.block[k])
            self.pos = 0
        np.copyto(self.step, self.block[:, self.pos].transpose(1, 0, 2))
        self.pos += 1
        return self.step.reshape(NOISE_SLOTS, self.p.n)


def _noise_generators(entropy: int | None) -> tuple[np.random.Generator, np.random.Generator]:
    """A twin's step-noise and reset-noise generators, derived from its seed, apart from its reset draws."""
    step_seq, reset_seq = np.random.SeedSequence(entropy, spawn_key=(_NOISE_KEY,)).spawn(2)
    return np.random.default_rng(step_seq), np.random.default_rng(reset_seq)


class _TwinStream:
    """Each twin's values, drawn ahead in blocks from that twin's own generator, taken as (4, c) blocks.

    A twin whose c sub-envs start over reads its next 4c values as a (4, c) block, as a call
    `draw(size=(4, c))` would. A NumPy Generator yields the same sequence of values however the
    draws are chunked (nothing is cached between calls), so drawing ahead changes nothing, and a
    vectorized gather replaces a Python loop over the twins with finished episodes. Twins without
    a generator read zeros.
    """

    def __init__(self, num_twins: int, envs_per_twin: int) -> None:
        self.num_twins, self.envs_per_twin = num_twins, envs_per_twin
        self.need = 4 * envs_per_twin  # the most one twin can consume in one step
        self.size = max(4 * self.need, min(64 * self.need, _STREAM_BUFFER_VALUES // num_twins))
        self.buf = np.zeros((num_twins, self.size))
        self.ptr = np.full(num_twins, self.size, dtype=np.intp)
        self.generators: dict[int, np.random.Generator] = {}

    def seed(self, generators: dict[int, np.random.Generator]) -> None:
        self.generators = generators
        self.buf[:] = 0.0
        self.ptr[:] = self.size
        self._refill(range(self.num_twins))

    def _draw(self, gen: np.random.Generator, size: int) -> Float64Array:
        return gen.standard_normal(size)

    def _refill(self, twins: Sequence[int] | range) -> None:
        for k in twins:
            left = self.size - int(self.ptr[k])
            gen = self.generators.get(k)
            if gen is not None:
                self.buf[k, :left] = self.buf[k, self.size - left :]
                self.buf[k, left:] = self._draw(gen, self.size - left)
            self.ptr[k] = 0

    def _consumed(self, twins: IndexArray, counts: IndexArray) -> None:
        """Twins `twins` (distinct) used the next 4 * counts values."""
        self.ptr[twins] += 4 * counts
        short = twins[self.ptr[twins] > self.size - self.need]
        if short.size:
            self._refill(short.tolist())

    def _consumed_one(self, values: int) -> None:
        """`_consumed` for a single twin, with Python ints: at small N the array calls would dominate."""
        self.ptr[0] = stop = int(self.ptr[0]) + values
        if stop > self.size - self.need:
            self._refill((0,))

    def take_all(self) -> Float64Array:
        """(4, n) values for every sub-env (an explicit reset)."""
        k, m = self.num_twins, self.envs_per_twin
        flat = (np.arange(k) * self.size + self.ptr)[:, None] + np.arange(4 * m)
        values = self.buf.ravel()[flat].reshape(k, 4, m).transpose(1, 0, 2).reshape(4, k * m)
        self._consumed(np.arange(k), np.full(k, m, dtype=np.intp))
        return values

    def take(self, idx: IndexArray) -> Float64Array:
        """(4, m) values for the sorted sub-envs `idx`, each twin's in sub-env order."""
        m = idx.size
        if self.num_twins == 1:
            start = int(self.ptr[0])
            values = self.buf[0, start : start + 4 * m].reshape(4, m).copy()  # a refill moves buf
            self._consumed_one(4 * m)
            return values
        # idx is sorted, so each twin's finished envs form a run; all work is O(m), not O(twins).
        twin = idx // self.envs_per_twin
        first = np.empty(m, dtype=np.bool_)
        first[0] = True
        np.not_equal(twin[1:], twin[:-1], out=first[1:])
        starts = first.nonzero()[0]
        counts = np.empty(starts.size, dtype=np.intp)
        np.subtract(starts[1:], starts[:-1], out=counts[:-1])
        counts[-1] = m - starts[-1]
        per_env = np.repeat(counts, counts)
        rank = np.arange(m) - np.repeat(starts, counts)
        flat = (twin * self.size + self.ptr[twin] + rank) + np.arange(4)[:, None] * per_env
        values = self.buf.ravel()[flat]
        self._consumed(twin[starts], counts)
        return values


class _ResetStream(_TwinStream):
    """Start states: `uniform(low, high)` from each twin's reset generator (gymnasium's `np_random`).

    uniform() spends exactly one 64-bit draw per value, so new bounds can rewind each generator to
    its first unconsumed draw (PCG64 `advance`) and the values stay those gymnasium would draw.
    """

    def __init__(self, num_twins: int, envs_per_twin: int) -> None:
        super().__init__(num_twins, envs_per_twin)
        self.low, self.high = RESET_LOW, RESET_HIGH
        self.origins: dict[int, dict[str, Any]] = {}
        self.consumed = np.zeros(num_twins, dtype=np.int64)

    def seed(self, generators: dict[int, np.random.Generator]) -> None:
        self.origins = {k: g.bit_generator.state for k, g in generators.items()}
        self.consumed[:] = 0
        super().seed(generators)

    def _draw(self, gen: np.random.Generator, size: int) -> Float64Array:
        return gen.uniform(self.low, self.high, size=size)

    def _consumed(self, twins: IndexArray, counts: IndexArray) -> None:
        self.consumed[twins] += 4 * counts
        super()._consumed(twins, counts)

    def _consumed_one(self, values: int) -> None:
        self.consumed[0] += values
        super()._consumed_one(values)

    def set_bounds(self, low: float, high: float) -> None:
        if (low, high) == (self.low, self.high):
            return
        self.low, self.high = low, high
        for k, gen in self.generators.items():  # forget the values drawn with the old bounds
            gen.bit_generator.state = self.origins[k]
            gen.bit_generator.advance(int(self.consumed[k]))
        self.ptr[:] = self.size
        self._refill(range(self.num_twins))


def _rows(param: Float64Array, idx: IndexArray) -> Float64Array:
    return param if param.ndim == 0 else param[idx]


class _Simulator:
    """State and imperfections of n sub-envs: the one step path of both env classes."""

    def __init__(self, physics: TwinPhysics) -> None:
        self.p = physics
        self.s = _Scratch(physics.n)
        self.state = np.zeros((4, physics.n))
        self.delay = _DelayLine(physics.action_delay) if physics.action_delay is not None else None
        self.noise = _NoiseSource(physics) if physics.noisy_twins else None
        self.reset_noise = (
            _TwinStream(physics.num_twins, physics.envs_per_twin)
            if physics.sensor_noise is not None
            else None
        )
        fm = physics.force_mag
        # force = ±force_mag is exactly gymnasium's np.sign(action - 0.5) * force_mag: one take() per step.
        self.force_table = np.array([-fm, fm] if fm.ndim == 0 else [-1.0, 1.0])
        self.kernel = step_kernel  # the compiled step (fedtwin.sim.cartpole_kernel), or None: the NumPy path
        self.kernel_args = _kernel_args(physics) if self.kernel is not None else None

    def seed_noise(self, entropies: Sequence[int | None]) -> None:
        """Noise generators of the noisy twins, from their seeds' entropy (None: fresh entropy)."""
        if self.noise is None:
            return
        step_gens, reset_gens = {}, {}
        for k in self.p.noisy_twins:
            step_gens[k], reset_gens[k] = _noise_generators(entropies[k])
        self.noise.seed(step_gens)
        if self.reset_noise is not None:
            sensing = [k for k, t in enumerate(self.p.twins) if t.sensor_noise > 0]
            self.reset_noise.seed({k: reset_gens[k] for k in sensing})

    def observe(
        self, state: Float64Array, sensor_z: np.ndarray | None = None, sensor_std: Float64Array | None = None
    ) -> Float32Array:
        """(m, 4) float32 observations of (4, m) states; sensor noise never enters the state.

        Like gymnasium's `state.T.astype(np.float32)` the result is the transpose of a C-ordered
        (4, m) array: a C-ordered (m, 4) copy would cost more than all the rest of the observation.
        """
        if sensor_z is None or sensor_std is None:
            return state.astype(np.float32).T
        noisy = self.s.noisy if state.shape == self.s.noisy.shape else np.empty(state.shape)
        np.multiply(sensor_z, sensor_std, noisy)
        np.add(noisy, state, noisy)
        return noisy.astype(np.float32).T

    def start_all(self, values: Float64Array) -> Float32Array:
        """Every sub-env starts over from `values` (4, n): an explicit reset."""
        self.state[:] = values
        if self.delay is not None:
            self.delay.restart()
        if self.reset_noise is None:
            return self.observe(self.state)
        return self.observe(self.state, self.reset_noise.take_all(), self.p.sensor_noise)

    def step(self, actions: np.ndarray) -> tuple[Float32Array, BoolArray]:
        """Apply checked 0/1 actions: (observations before any reset, terminated)."""
        p, s = self.p, self.s
        if self.delay is not None:
            actions = self.delay.push(actions)
        z = self.noise.next_step() if self.noise is not None else None
        force = self.force_table.take(actions, mode="clip")
        if p.force_mag.ndim:
            np.multiply(force, p.force_mag, force)
        if z is not None and p.actuator_noise is not None:
            np.multiply(z[4], p.actuator_noise, s.tmp)
            np.add(s.tmp, 1.0, s.tmp)
            np.multiply(force, s.tmp, force)
        if self.kernel is not None and self.kernel_args is not None:
            terminated = np.empty(p.n, dtype=np.bool_)
            obs = np.empty((4, p.n), dtype=np.float32)  # (4, n) C-ordered, like NumPy's observations
            self.kernel(self.state, force, *self.kernel_args, obs, z is None, terminated)
            if z is None:
                return obs.T, terminated
        else:
            cartpole_step(self.state, force, p, s)
            terminated = _terminated(self.state, s)
            if z is None:
                return self.observe(self.state), terminated
        return self.observe(self.state, z[0:4], p.sensor_noise), terminated

    def restart(self, idx: IndexArray, values: Float64Array, obs: Float32Array) -> Float32Array:
        """Sub-envs `idx` start over from `values` (4, m); returns `obs` with their reset observations."""
        self.state[:, idx] = values
        if self.delay is not None:
            self.delay.restart(idx)
        std = self.p.sensor_noise
        out = obs.T.copy()  # (4, n), C-ordered like every observation; cheaper than a second cast
        if self.reset_noise is None or std is None:
            out[:, idx] = values
        else:
            out[:, idx] = values + self.reset_noise.take(idx) * _rows(std, idx)
        return out.T


def _twin_seeds(seed: SeedArg, num_twins: int) -> list[int | None]:
    if seed is None:
        return [None] * num_twins
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return [int(seed) + k for k in range(num_twins)]
    seeds = list(seed)
    if len(seeds) != num_twins:
        raise ValueError(f"reset(seed=[...]) needs one seed per twin ({num_twins}), got {len(seeds)}")
    return [int(s) for s in seeds]


class TwinCartPoleVectorEnv(VectorEnv[Float32Array, np.ndarray, np.ndarray]):
    """
    ## Description

    gymnasium's CartPole (Barto, Sutton & Anderson, 1983) for a fleet of digital twins: `num_envs =
    len(twins) * envs_per_twin` sub-environments, sub-env `i` simulating twin `i // envs_per_twin`,
    all stepped at once in NumPy arrays (no Python loop over sub-environments).

    ## Action Space

    `MultiDiscrete([2] * num_envs)`: per sub-env 0 pushes the cart left, 1 right, with the twin's `force_mag`.

    ## Observation Space

    `(num_envs, 4)` float32:

    | Num | Observation           | Min                 | Max               |
    |-----|-----------------------|---------------------|-------------------|
    | 0   | Cart Position         | -4.8                | 4.8               |
    | 1   | Cart Velocity         | -Inf                | Inf               |
    | 2   | Pole Angle            | ~ -0.418 rad (-24°) | ~ 0.418 rad (24°) |
    | 3   | Pole Angular Velocity | -Inf                | Inf               |

    A twin with `sensor_noise` sees `state + sensor_noise * N(0, 1)` per dimension; the state stays exact.
    Like gymnasium's, the array is the transpose of a C-ordered (4, num_envs) array.

    ## Rewards

    +1 for every step, including the terminating one.

    ## Starting State

    Each state variable uniform in `(-0.05, 0.05)` (`options={"low": .., "high": ..}` changes the bounds).

    ## Episode End

    1. Termination: pole angle beyond ±12° or cart position beyond ±2.4 (of the true state).
    2. Truncation: `max_episode_steps` (500) steps.

    Autoreset is `SAME_STEP`: `step()` returns the reset observation of a finished sub-env and puts
    the observation it ended in into `info["final_obs"]` (`(num_envs, 4)` float32; rows where
    `info["_final_obs"]` is False equal the returned observation). `info["episode_return"]`,
    `info["episode_length"]` and their mask `info["_episode"]` report finished episodes. These keys
    are present only when some sub-env finished.

    ## Per-twin physics

    Each `TwinSpec` field becomes a `(num_envs,)` array (or one scalar when all twins share it)
    used in gymnasium's expressions, in gymnasium's operation order, so default physics reproduce
    `CartPoleVectorEnv` float for float:

    - `gravity`, `masscart`, `masspole`, `length` (half pole), `force_mag`, `tau` (Euler step);
    - `friction_cart` / `friction_pole`: Barto et al.'s friction terms,
      `temp = (F + ml θ'² sinθ - μc sgn(x')) / M`,
      `θ'' = (g sinθ - cosθ temp - μp θ' / ml) / (l (4/3 - m cos²θ / M))`;
    - `actuator_noise`: force `F (1 + σ N(0, 1))`; `action_delay` `d`: the cart feels the action chosen
      `d` steps earlier (an episode starts with the line full of its first action).

    ## Seeding

    Every twin has its own generators: `reset(seed=s)` seeds twin `k` with `s + k` (twin 0 with `s`,
    so one default twin resets exactly like `CartPoleVectorEnv` seeded with `s`), `reset(seed=[...])`
    gives one seed per twin. Resets of finished sub-envs draw from their twin's generator, noise from
    the twin's noise generator (derived from the same seed), so a twin's trajectory is the same alone
    or among any other twins, given the same `envs_per_twin`, seed and actions. Reset values are
    drawn ahead in blocks, so `np_random` (twin 0's generator) runs ahead of what was consumed.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": [],
        "render_fps": 50,
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    def __init__(
        self, twins: Sequence[TwinSpec], envs_per_twin: int = 1, max_episode_steps: int = MAX_EPISODE_STEPS
    ) -> None:
        if (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be an integer >= 1, got {max_episode_steps!r}")
        self.twins: tuple[TwinSpec, ...] = tuple(twins)
        self.physics = TwinPhysics.from_twins(self.twins, envs_per_twin)
        self.envs_per_twin = envs_per_twin
        self.num_envs = self.physics.n
        self.max_episode_steps = max_episode_steps
        self.render_mode = None

        self.single_action_space = spaces.Discrete(2)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = _observation_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        self._sim = _Simulator(self.physics)
        self._resets = _ResetStream(self.physics.num_twins, envs_per_twin)
        self._seeded = False
        # Episode lengths as (step count - start step): no per-env counter to bump every step. Every
        # step pays 1, so an episode's return is its length: no return accumulator either.
        self._t = 0
        self._start = np.zeros(self.num_envs, dtype=np.int32)
        self._ones = np.ones(self.num_envs, dtype=np.float32)  # copying it beats np.ones()

    @property
    def state(self) -> Float64Array:
        """The true (4, num_envs) float64 state, rows x, x_dot, theta, theta_dot."""
        return self._sim.state

    def reset(
        self, *, seed: SeedArg = None, options: dict[str, Any] | None = None
    ) -> tuple[Float32Array, dict]:
        """Reset every sub-env; `seed` is an int (twin k gets seed + k), one int per twin, or None."""
        sim = self._sim
        low, high = cc_utils.maybe_parse_reset_bounds(options, RESET_LOW, RESET_HIGH)
        if seed is not None or not self._seeded:
            generators: dict[int, np.random.Generator] = {}
            entropies: list[int | None] = []
            for k, s in enumerate(_twin_seeds(seed, self.physics.num_twins)):
                generators[k], entropy = seeding.np_random(s)
                entropies.append(entropy)
            self._resets.low, self._resets.high = low, high
            self._resets.seed(generators)
            sim.seed_noise(entropies)
            # The base class's np_random is twin 0's generator, as in a one-twin gymnasium env.
            self._np_random, self._np_random_seed = generators[0], entropies[0]
            self._seeded = True
        else:
            self._resets.set_bounds(low, high)
        # New arrays, not zeroed ones: the old ones may be held by an earlier step's info.
        self._t = 0
        self._start = np.zeros(self.num_envs, dtype=np.int32)
        return sim.start_all(self._resets.take_all()), {}

    def step(self, actions: np.ndarray) -> StepResult:
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        obs, terminated = self._sim.step(_check_actions(actions, self.num_envs))
        reward = self._ones.copy()
        if self._t == _REBASE_STEPS:  # keep the int32 step counts far from overflow
            self._start -= self._t
            self._t = 0
        self._t += 1
        # length = t - start >= max_episode_steps, i.e. start <= t - max_episode_steps
        truncated = np.less_equal(self._start, self._t - self.max_episode_steps)
        done = np.logical_or(terminated, truncated)
        idx = done.nonzero()[0]
        if not idx.size:
            return obs, reward, terminated, truncated, {}
        # SAME_STEP autoreset: finished sub-envs start over now, drawing only from their twins' streams.
        length = np.subtract(self._t, self._start)
        info = {
            "final_obs": obs,
            "_final_obs": done,
            "episode_return": length.astype(np.float32),
            "episode_length": length,
            "_episode": done.copy(),
        }
        self._start[idx] = self._t
        obs = self._sim.restart(idx, self._resets.take(idx), obs)
        return obs, reward, terminated, truncated, info

    def __repr__(self) -> str:
        return (
            f"TwinCartPoleVectorEnv(twins={self.physics.num_twins}, envs_per_twin={self.envs_per_twin}, "
            f"num_envs={self.num_envs})"
        )


def make_vector_env(
    twins: Sequence[TwinSpec], envs_per_twin: int = 1, max_episode_steps: int = MAX_EPISODE_STEPS
) -> TwinCartPoleVectorEnv:
    """Convenience constructor; the trainers' single entry point to the simulator."""
    return TwinCartPoleVectorEnv(twins, envs_per_twin=envs_per_twin, max_episode_steps=max_episode_steps)


class TwinCartPoleEnv(gymnasium.Env[npt.NDArray[np.float32], int]):
    """
    ## Description

    One twin's CartPole as a plain `gymnasium.Env`, registered as `fedtwin/TwinCartPole-v0` (with a
    500-step `TimeLimit`). It runs `TwinCartPoleVectorEnv`'s step code with one sub-environment, and
    resets from `self.np_random` like gymnasium's `CartPoleEnv`, so with default physics
    `gymnasium.make("fedtwin/TwinCartPole-v0")` and `gymnasium.make("CartPole-v1")` give identical
    observations, rewards, terminations and truncations for the same seed and actions.

    Action space, observation space, rewards and episode end are those of `TwinCartPoleVectorEnv`.
    Noise and resets use the vector env's per-twin streams, so a twin here and the same twin alone
    in `TwinCartPoleVectorEnv` (one sub-env, same seed) agree step for step, noise included, when
    episodes are restarted with `reset()` as they end.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": [], "render_fps": 50}

    def __init__(self, twin: TwinSpec | None = None, render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"TwinCartPoleEnv does not render (render_mode={render_mode!r})")
        self.twin = twin if twin is not None else TwinSpec(id="default")
        self.physics = TwinPhysics.from_twins([self.twin], 1)
        self.action_space = spaces.Discrete(2)
        self.observation_space = _observation_space()
        self.render_mode = None
        self._sim = _Simulator(self.physics)
        self._has_state = False
        self.steps_beyond_terminated: int | None = None

    @property
    def state(self) -> Float64Array:
        """The true state (x, x_dot, theta, theta_dot) as float64."""
        return self._sim.state[:, 0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        low, high = cc_utils.maybe_parse_reset_bounds(options, RESET_LOW, RESET_HIGH)
        values = self.np_random.uniform(low=low, high=high, size=(4,))[:, None]
        if seed is not None or not self._has_state:
            seed_value = self.np_random_seed  # -1 when np_random was set directly
            self._sim.seed_noise([seed_value if seed_value >= 0 else None])
        self._has_state = True
        self.steps_beyond_terminated = None
        return self._sim.start_all(values)[0], {}

    def step(
        self, action: int | np.integer | np.ndarray
    ) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (push left) or 1 (push right), got {action!r}")
        if not self._has_state:
            raise RuntimeError("call reset() before step()")
        obs, terminated_array = self._sim.step(np.array([int(action)]))
        terminated = bool(terminated_array[0])
        reward = 1.0
        if terminated:
            if self.steps_beyond_terminated is None:
                self.steps_beyond_terminated = 0
            else:
                if self.steps_beyond_terminated == 0:
                    gymnasium.logger.warn(
                        "You are calling 'step()' even though this environment has already returned "
                        "terminated = True. You should always call 'reset()' once you receive "
                        "'terminated = True'"
                    )
                self.steps_beyond_terminated += 1
                reward = 0.0
        return obs[0], reward, terminated, False, {}


def register_envs() -> None:
    """Register `fedtwin/TwinCartPole-v0`; importing fedtwin.sim.envs twice must not warn or fail."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID, entry_point=f"{__name__}:TwinCartPoleEnv", max_episode_steps=MAX_EPISODE_STEPS
        )


register_envs()
