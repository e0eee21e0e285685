"""The one action delay line of every twin env (fedtwin/sim/delay_line.py) against a plain reference:
per sub-env, a list of the episode's actions read `delay` steps back, padded with the episode's first."""

from __future__ import annotations

import numpy as np

from fedtwin.sim.delay_line import DelayLine


def reference(delays: list[int], steps: list[np.ndarray], restarts: dict[int, list[int]]) -> list[np.ndarray]:
    episodes: list[list[np.ndarray]] = [[] for _ in delays]
    out = []
    for t, actions in enumerate(steps):
        for i in restarts.get(t, []):
            episodes[i] = []
        applied = []
        for i, delay in enumerate(delays):
            episodes[i].append(actions[i])
            seen = episodes[i]
            applied.append(seen[max(0, len(seen) - 1 - delay)])
        out.append(np.array(applied))
    return out


def test_each_sub_env_gets_its_own_delay_and_a_new_episode_starts_full_of_its_first_action() -> None:
    delays = [0, 1, 3, 2, 0]
    rng = np.random.default_rng(0)
    steps = [rng.integers(0, 2, size=len(delays)) for _ in range(40)]
    restarts = {0: list(range(len(delays))), 7: [2], 8: [1, 3], 20: [2, 4], 21: [2]}
    line = DelayLine(np.array(delays))
    got = []
    for t, actions in enumerate(steps):
        if t in restarts:
            line.restart(np.array(restarts[t]))
        got.append(line.push(actions))
    for t, (a, b) in enumerate(zip(got, reference(delays, steps, restarts), strict=True)):
        assert np.array_equal(a, b), t
    assert got[0].dtype == np.uint8


def test_vector_actions_keep_the_dtype_they_came_with() -> None:
    """A gaussian policy's float64 torques are applied exactly, not rounded to the action space's float32."""
    line = DelayLine(np.array([1, 0]), action_shape=(2,), dtype=np.float32, follow_dtype=True)
    first = np.array([[0.1, 0.2], [0.3, 0.4]])
    second = np.array([[1.1, 1.2], [1.3, 1.4]])
    assert np.array_equal(line.push(first), first)  # a fresh line is full of the first action
    out = line.push(second)
    assert out.dtype == np.float64
    assert np.array_equal(out, np.array([[0.1, 0.2], [1.3, 1.4]]))
