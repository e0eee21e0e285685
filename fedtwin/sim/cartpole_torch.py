"""CartPole twins stepped in torch, on any device: the fleet's physics without leaving the GPU.

`TorchTwinCartPole` runs the equations of `fedtwin.sim.envs.TwinCartPoleVectorEnv` (gymnasium's
CartPole with each twin's masses, lengths, force, gravity, Euler step, Barto et al.'s friction,
sensor and actuator noise, action delay) on (4, n) tensors: float64 by default on the CPU, where a
step agrees with the NumPy env to rounding (torch's `sin`/`cos` are not glibc's, so not bit for
bit), float32 by default on CUDA. Episodes end and restart in the same step (gymnasium's
`SAME_STEP` autoreset, as in the NumPy env), without any data-dependent shape or host read, so a
whole rollout can stay on the device (and be captured in a CUDA graph).

Random numbers (start states, noise) come from a counter-based generator evaluated on the device:
each value is a hash of (the twin's key, its sub-env, a stream, the env's step counter, a slot).
So, as in the NumPy env, a twin's trajectory depends only on its seed and actions, never on which
other twins share the env; but the streams are *not* NumPy's: this is a separate, non-bit-exact
backend. The NumPy/numba env stays the default and the exact reference.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fedtwin.sim.cartpole import RESET_HIGH, RESET_LOW, THETA_THRESHOLD_RADIANS, X_THRESHOLD, TwinPhysics
from fedtwin.sim.streams import NOISE_SLOTS
from fedtwin.sim.twins import TwinSpec

MAX_EPISODE_STEPS = 500
"""gymnasium's CartPole-v1 limit, as in fedtwin.sim.envs (which imports gymnasium; this module does not)."""

# Stream tags of the counter-based generator: each (stream, counter, slot) is used at most once.
STREAM_RESET = 1
STREAM_RESET_NOISE = 2
STREAM_STEP_NOISE = 3
STREAM_POLICY = 4
"""For callers (the device rollout's action sampling); the env never uses it."""
STREAM_SHUFFLE = 5
"""For callers (the device rollout's minibatch orderings); the env never uses it."""

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # 2^64 / phi as a signed int64 (SplitMix64's increment)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)


def _wrap(value: int) -> int:
    """A Python int reduced to a signed int64 (a torch scalar must fit one)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic; uint64 lacks shifts)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer on int64 tensors (wrapping products): a bijection of 64-bit words."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def seed_key(seed: int) -> int:
    """A 64-bit key for one twin's seed, as a signed int64 Python int."""
    key = mix64(torch.tensor([seed & ((1 << 63) - 1)], dtype=torch.int64) + _GOLDEN).item()
    return int(key)


def counter_bits(keys: torch.Tensor, stream: int, counter: torch.Tensor, slots: int) -> torch.Tensor:
    """(slots, n) random int64 words: a hash of (per-env key, stream, counter, slot); no state kept.

    `keys` (n,) int64 identifies twin and sub-env; `counter` is a 0-d int64 tensor (on the device,
    so advancing it needs no host value). Nested SplitMix64 rounds: for fixed other inputs each
    round is a bijection of the one that varies, so distinct counters or slots never collide.
    """
    base = mix64(keys + (counter * _GOLDEN + _wrap(stream * _M1)))
    slot = torch.arange(1, slots + 1, dtype=torch.int64, device=keys.device).unsqueeze(1)
    return mix64(base.unsqueeze(0) + slot * _GOLDEN)


def to_uniform(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uniforms in [0, 1) from random words: 53 bits for float64, 24 for float32 (exact in the type)."""
    mantissa = 53 if dtype == torch.float64 else 24
    return _shr(bits, 64 - mantissa).to(dtype) * (2.0**-mantissa)


def to_normal(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Standard normals by Box-Muller from 2m words -> m values (first half radius, second angle)."""
    m = bits.shape[0] // 2
    u1, u2 = to_uniform(bits[:m], dtype), to_uniform(bits[m:], dtype)
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * math.pi) * u2)


def env_keys(seeds: Sequence[int], envs_per_twin: int, device: torch.device) -> torch.Tensor:
    """(n,) int64 keys: twin k's seed mixed with its sub-env index (a twin's keys ignore other twins)."""
    twin = torch.tensor([seed_key(s) for s in seeds], dtype=torch.int64, device=device)
    sub = torch.arange(envs_per_twin, dtype=torch.int64, device=device)
    return mix64(twin.repeat_interleave(envs_per_twin) ^ (sub.repeat(len(seeds)) * _M2))


# --- per-env physics ---


@dataclass(frozen=True, eq=False)
class TorchPhysics:
    """Per sub-env parameter tensors (n,) in the env's dtype; sub-env i simulates twin i // envs_per_twin.

    Imperfections no twin has are None and skipped (subtracting a zero friction term is exact).
    """

    n: int
    gravity: torch.Tensor
    masspole: torch.Tensor
    total_mass: torch.Tensor
    polemass_length: torch.Tensor
    length: torch.Tensor
    force_mag: torch.Tensor
    tau: torch.Tensor
    friction_cart: torch.Tensor | None
    friction_pole: torch.Tensor | None
    sensor_noise: torch.Tensor | None
    actuator_noise: torch.Tensor | None
    action_delay: torch.Tensor | None
    """(n,) int64 steps, or None when no twin has a delay."""

    @classmethod
    def from_twins(
        cls, twins: Sequence[TwinSpec], envs_per_twin: int, device: torch.device, dtype: torch.dtype
    ) -> TorchPhysics:
        """The NumPy env's `TwinPhysics` (its checks, its float64 values) as (n,) tensors.

        Cast once from float64: float32 parameters are the float64 ones rounded, as a float32 env's.
        """
        p = TwinPhysics.from_twins(twins, envs_per_twin)

        def per_env(values: np.ndarray) -> torch.Tensor:
            kind = torch.int64 if values.dtype.kind in "iu" else dtype
            return torch.from_numpy(np.array(np.broadcast_to(values, (p.n,)))).to(device=device, dtype=kind)

        def optional(values: np.ndarray | None) -> torch.Tensor | None:
            return None if values is None else per_env(values)

        return cls(
            n=p.n, gravity=per_env(p.gravity), masspole=per_env(p.masspole), total_mass=per_env(p.total_mass),
            polemass_length=per_env(p.polemass_length), length=per_env(p.length),
            force_mag=per_env(p.force_mag), tau=per_env(p.tau), friction_cart=optional(p.friction_cart),
            friction_pole=optional(p.friction_pole), sensor_noise=optional(p.sensor_noise),
            actuator_noise=optional(p.actuator_noise), action_delay=optional(p.action_delay),
        )


def physics_step(state: torch.Tensor, force: torch.Tensor, p: TorchPhysics) -> torch.Tensor:
    """One Euler step of the (4, n) state with the applied force (n,); returns the new state.

    The NumPy env's `cartpole_step` expressions in its order of operations (Barto et al.'s friction):
    temp = (ml θ'² sinθ + F - μc sgn(x')) / M,
    θ'' = (g sinθ - cosθ temp - μp θ' / ml) / (l (4/3 - m cos²θ / M)),  x'' = temp - ml θ'' cosθ / M.
    """
    x, x_dot, theta, theta_dot = state.unbind(0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    temp = theta_dot * theta_dot * p.polemass_length * sin + force
    if p.friction_cart is not None:
        temp = temp - torch.sign(x_dot) * p.friction_cart
    temp = temp / p.total_mass
    den = (4.0 / 3.0 - cos * cos * p.masspole / p.total_mass) * p.length
    thetaacc = sin * p.gravity - cos * temp
    if p.friction_pole is not None:
        thetaacc = thetaacc - theta_dot * p.friction_pole / p.polemass_length
    thetaacc = thetaacc / den
    xacc = temp - thetaacc * p.polemass_length * cos / p.total_mass
    return torch.stack((x + x_dot * p.tau, x_dot + xacc * p.tau, theta + theta_dot * p.tau,
                        theta_dot + thetaacc * p.tau))


def terminated(state: torch.Tensor) -> torch.Tensor:
    """|x| > 2.4 or |theta| > 12° of the true state, (n,) bool."""
    return (state[0].abs() > X_THRESHOLD) | (state[2].abs() > THETA_THRESHOLD_RADIANS)


class TorchStep(NamedTuple):
    """One step of every sub-env, all on the env's device."""

    obs: torch.Tensor
    """(n, 4) float32: the reset observation where an episode ended (SAME_STEP autoreset)."""
    reward: torch.Tensor
    """(n,) float32 ones: +1 every step."""
    terminated: torch.Tensor
    """(n,) bool."""
    truncated: torch.Tensor
    """(n,) bool: the episode reached `max_episode_steps`."""
    final_obs: torch.Tensor
    """(n, 4) float32 observation the step led to, before any reset (equals `obs` where not done)."""
    episode_length: torch.Tensor
    """(n,) int32 length of the episode that ended at this step, 0 where none ended."""


def _check_seeds(seed: int | Sequence[int], num_twins: int) -> list[int]:
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an int or one int per twin, got {seed!r}")
    if isinstance(seed, int):
        return [seed + k for k in range(num_twins)]
    seeds = [int(s) for s in seed]
    if len(seeds) != num_twins:
        raise ValueError(f"reset(seed=[...]) needs one seed per twin ({num_twins}), got {len(seeds)}")
    return seeds


class TorchTwinCartPole:
    """n = len(twins) * envs_per_twin CartPole sub-envs as tensors on `device` (see the module doc).

    `reset(seed=s)` keys twin k with s + k (or one seed per twin), like the NumPy env; `step(actions)`
    takes (n,) 0/1 integer actions on the device and returns a `TorchStep`. Actions are not checked
    (that would read them back to the host): values other than 0/1 push like 1.
    """

    def __init__(self, twins: Sequence[TwinSpec], envs_per_twin: int = 1,
                 max_episode_steps: int = MAX_EPISODE_STEPS, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        steps = max_episode_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"max_episode_steps must be an integer >= 1, got {max_episode_steps!r}")
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.float32 if self.device.type == "cuda" else torch.float64
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.dtype = dtype
        self.twins = tuple(twins)
        self.envs_per_twin = envs_per_twin
        self.p = TorchPhysics.from_twins(self.twins, envs_per_twin, self.device, dtype)
        self.num_envs = n = self.p.n
        self.max_episode_steps = max_episode_steps
        self.low, self.high = RESET_LOW, RESET_HIGH
        self.state = torch.zeros(4, n, dtype=dtype, device=self.device)
        self.keys: torch.Tensor | None = None
        self.counter = torch.zeros((), dtype=torch.int64, device=self.device)
        """Calls to reset/step so far: the generator's counter (a device tensor: no host value per step)."""
        self.length = torch.zeros(n, dtype=torch.int32, device=self.device)
        self._ones = torch.ones(n, dtype=torch.float32, device=self.device)
        delay = self.p.action_delay
        self._delay_size = int(delay.max().item()) + 1 if delay is not None else 0
        self._history = torch.zeros(self._delay_size, n, dtype=torch.int64, device=self.device)
        self._fresh = torch.ones(n, dtype=torch.bool, device=self.device)
        self._rows = torch.arange(self._delay_size, device=self.device).unsqueeze(1)
        self._noisy = self.p.sensor_noise is not None or self.p.actuator_noise is not None

    def _draw(self, stream: int, slots: int) -> torch.Tensor:
        assert self.keys is not None
        return counter_bits(self.keys, stream, self.counter, slots)

    def _start_values(self) -> torch.Tensor:
        u = to_uniform(self._draw(STREAM_RESET, 4), self.dtype)
        return self.low + (self.high - self.low) * u

    def _observe(self, state: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """(n, 4) float32 of (4, n) states; sensor noise `std * z` never enters the state."""
        if z is not None and self.p.sensor_noise is not None:
            state = state + z * self.p.sensor_noise
        return state.t().to(torch.float32).contiguous()

    def _reset_noise(self) -> torch.Tensor | None:
        if self.p.sensor_noise is None:
            return None
        return to_normal(self._draw(STREAM_RESET_NOISE, 8), self.dtype)

    def reset(self, *, seed: int | Sequence[int] | None = None, low: float = RESET_LOW,
              high: float = RESET_HIGH) -> torch.Tensor:
        """Restart every sub-env; `seed` as the NumPy env (None: keep going, or fresh entropy at first)."""
        if seed is not None or self.keys is None:
            base = seed if seed is not None else secrets.randbits(62)
            self.keys = env_keys(_check_seeds(base, len(self.twins)), self.envs_per_twin, self.device)
            self.counter.zero_()
        self.low, self.high = float(low), float(high)
        self.state.copy_(self._start_values())
        obs = self._observe(self.state, self._reset_noise())
        self.length.zero_()
        self._fresh.fill_(True)
        self.counter.add_(1)
        return obs

    def _delayed(self, actions: torch.Tensor) -> torch.Tensor:
        """The action each cart feels now: chosen `delay` steps ago; a fresh episode fills the line."""
        assert self.p.action_delay is not None
        size = self._delay_size
        self._history.copy_(torch.where(self._fresh, actions, self._history))
        pos = self.counter % size
        self._history.copy_(torch.where(self._rows == pos, actions, self._history))
        applied = (pos - self.p.action_delay) % size
        return self._history.gather(0, applied.unsqueeze(0)).squeeze(0)

    def step(self, actions: torch.Tensor) -> TorchStep:
        """Advance every sub-env with (n,) integer 0/1 actions on the device."""
        if self.keys is None:
            raise RuntimeError("call reset() before step()")
        p = self.p
        actions = actions.reshape(self.num_envs).to(torch.int64)
        if p.action_delay is not None:
            actions = self._delayed(actions)
        force = torch.where(actions == 0, -p.force_mag, p.force_mag)
        z = to_normal(self._draw(STREAM_STEP_NOISE, 2 * NOISE_SLOTS), self.dtype) if self._noisy else None
        if z is not None and p.actuator_noise is not None:
            force = force * (z[4] * p.actuator_noise + 1.0)
        self.state.copy_(physics_step(self.state, force, p))
        term = terminated(self.state)
        final_obs = self._observe(self.state, None if z is None else z[:4])
        self.length.add_(1)
        trunc = self.length >= self.max_episode_steps
        done = term | trunc
        episode_length = torch.where(done, self.length, 0)
        # SAME_STEP autoreset with static shapes: every sub-env's start values are drawn, the done ones used.
        start = self._start_values()
        self.state.copy_(torch.where(done, start, self.state))
        reset_z = self._reset_noise()
        obs = torch.where(done.unsqueeze(1), self._observe(start, reset_z), final_obs)
        self.length.masked_fill_(done, 0)
        self._fresh.copy_(done)
        self.counter.add_(1)
        return TorchStep(obs, self._ones.clone(), term, trunc, final_obs, episode_length)

    def __repr__(self) -> str:
        return (f"TorchTwinCartPole(twins={len(self.twins)}, envs_per_twin={self.envs_per_twin}, "
                f"device={self.device}, dtype={self.dtype})")
