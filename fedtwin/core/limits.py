"""Upper bounds on inputs whose memory or time grows with their value, in one place.

Config, fleet files, model files and CLI flags are refused past these with exit code 2 before
anything is written (README, "What bad input looks like"): without them a typo such as
`heldout_count: 10000000` or a model file claiming a 10^9-wide layer ends in a MemoryError.
Like `errors.py`, this module imports nothing and sits below every layer.
"""

from __future__ import annotations

MAX_TRAINING_TWINS = 100_000
"""Training twins of a run (`fleet.count`, a fleet file's `twins:`, `twins generate --count`)."""
MAX_EVAL_TWINS = 10_000
"""Validation twins (evaluated every round) and held-out twins (evaluated once), each."""
MAX_ACTION_DELAY = 500
"""Steps of actuator delay: a CartPole-v1 episode lasts at most 500 steps, so a longer delay means no
action ever lands; the simulator keeps a queue of that many actions per sub-environment."""
MAX_HIDDEN_WIDTH = 1024
"""Units per hidden layer (and the largest observation or action size a model file may declare)."""
MAX_HIDDEN_LAYERS = 4
"""Hidden layers: at the widest, an actor-critic of 2 x (4·1024 + 3·1024² + 1024·2) ≈ 6.3 M float32
parameters, 25 MiB per model, copied once per twin in a fleet shard."""
MAX_ROLLOUT = 1 << 20
"""Transitions one twin collects per local update (`train.num_envs * train.num_steps`), kept in memory
with their observations, log-probabilities and values."""
