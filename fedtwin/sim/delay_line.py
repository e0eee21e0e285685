"""The action delay of a twin: its commands reach the physics a number of whole steps late.

One class for every env (CartPole's and the kinds'): a ring of each sub-env's last `max(delay) + 1`
actions, from which a step gathers every sub-env's applied action at one flat index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.intp]


class DelayLine:
    """Actions reach each sub-env `delays[i]` steps late; an episode starts with the line full of its first
    action.

    `dtype` is the ring's; with `follow_dtype` the ring takes the dtype of the first actions pushed
    instead, so applied actions are exactly those given (a gaussian policy's float64 stays float64).
    """

    def __init__(self, delays: npt.NDArray[np.int64], action_shape: tuple[int, ...] = (),
                 dtype: Any = np.uint8, follow_dtype: bool = False) -> None:
        n = delays.size
        self.size = int(delays.max()) + 1
        self.history = np.zeros((self.size, n, *action_shape), dtype=dtype)
        # sub-env i's applied action sits at flat row ((pos - delay_i) % size) * n + i
        #                                            == (offset_i + pos * n) % (size * n)
        self.offset = ((self.size - delays) % self.size) * n + np.arange(n)
        self.pos = 0
        self.fresh = np.ones(n, dtype=np.bool_)
        self.follow_dtype = follow_dtype

    def restart(self, idx: IndexArray | None = None) -> None:
        """The sub-envs `idx` (all: None) start an episode: their next action fills their line."""
        self.fresh[slice(None) if idx is None else idx] = True

    def push(self, actions: np.ndarray) -> np.ndarray:
        """Record this step's actions; return the ones the physics applies now."""
        if self.follow_dtype and self.history.dtype != actions.dtype:
            self.history = self.history.astype(actions.dtype)
        n = self.fresh.size
        self.pos = (self.pos + 1) % self.size
        if self.fresh.any():
            cols = np.flatnonzero(self.fresh)
            self.history[:, cols] = actions[cols]
            self.fresh[:] = False
        self.history[self.pos] = actions
        flat = self.offset + self.pos * n
        flat %= self.size * n
        return self.history.reshape(self.size * n, *self.history.shape[2:])[flat]
