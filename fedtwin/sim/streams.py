"""Each twin's random numbers (start states, sensor and actuator noise), from its own generators.

A twin's streams are seeded from that twin's seed alone and drawn ahead in blocks, so a twin's
trajectory does not depend on which other twins share the env: the fleet engine (all twins in one
env) equals the pool engine (one env per twin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedtwin.sim.cartpole import RESET_HIGH, RESET_LOW, Float32Array, Float64Array, IndexArray, TwinPhysics

# Noise drawn per sub-env per step: 4 sensor, 1 actuator (a reset observation's sensor noise comes
# from a stream of its own). A fixed count keeps a twin's noise independent of the other twins'.
NOISE_SLOTS = 5
_NOISE_KEY = 0x6E6F697365  # "noise": separates a twin's noise stream from its reset stream
_NOISE_BLOCK_BYTES = 16 << 20  # pre-drawn per-step noise: up to 256 steps, at most 16 MiB
_STREAM_BUFFER_VALUES = 1 << 20  # pre-drawn values per stream, all twins together (8 MiB)


class NoiseSource:
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


def noise_generators(entropy: int | None) -> tuple[np.random.Generator, np.random.Generator]:
    """A twin's step-noise and reset-noise generators, derived from its seed, apart from its reset draws."""
    step_seq, reset_seq = np.random.SeedSequence(entropy, spawn_key=(_NOISE_KEY,)).spawn(2)
    return np.random.default_rng(step_seq), np.random.default_rng(reset_seq)


class TwinStream:
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


class ResetStream(TwinStream):
    """Start states: `uniform(low, high)` from each twin's reset generator (gymnasium's `np_random`).

    uniform() spends exactly one 64-bit draw per value, so new bounds can rewind each generator to
    its first unconsumed draw (PCG64 `advance`) and the values stay those gymnasium would draw.
    """

    def __init__(self, num_twins: int, envs_per_twin: int) -> None:
        super().__init__(num_twins, envs_per_twin)
        self.low, self.high = RESET_LOW, RESET_HIGH
        self.origins: dict[int, Any] = {}
        """Each twin's generator state when seeded (opaque: PCG64's state dict)."""
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
            bits = gen.bit_generator
            if not isinstance(bits, np.random.PCG64):  # gymnasium's seeding makes PCG64 generators
                raise TypeError(f"new reset bounds rewind PCG64 generators, got {type(bits).__name__}")
            bits.state = self.origins[k]
            bits.advance(int(self.consumed[k]))
        self.ptr[:] = self.size
        self._refill(range(self.num_twins))
