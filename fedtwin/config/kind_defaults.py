"""Settings per built-in twin kind, used for every `fleet`, `train` and `federation` key a config leaves
unset.

CartPole's are `TrainConfig`'s own defaults. Pendulum's follow rl-zoo3's PPO for Pendulum-v1 (short
horizon gamma 0.9, GAE 0.95, lr 1e-3, 10 epochs, rewards scaled down for the value loss); Acrobot's
rl-zoo3's PPO for Acrobot-v1 (gamma 0.99). The budgets they reach their targets in, on 2 cores, are
in benchmarks/README.md ("Twin kinds: learning"). The early stop asks for a margin over the solved
line (pendulum -200, acrobot -100) on 8 validation twins: held-out twins of other physics score lower
than the validation twins the run stopped on.
"""

from __future__ import annotations

from typing import Any

KIND_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "pendulum": {
        "fleet": {"validation_count": 8},
        "federation": {"rounds": 40, "target_return": -170.0, "eval_episodes": 8, "heldout_episodes": 16},
        "train": {"num_envs": 4, "num_steps": 256, "updates": 4, "epochs": 10, "minibatches": 4,
                  "learning_rate": 1e-3, "gamma": 0.9, "gae_lambda": 0.95, "reward_scale": 0.1},
    },
    "acrobot": {
        "fleet": {"validation_count": 8},
        "federation": {"rounds": 20, "target_return": -90.0, "eval_episodes": 4},
        "train": {"num_envs": 4, "num_steps": 256, "updates": 2, "epochs": 4, "minibatches": 4,
                  "learning_rate": 1e-3, "gamma": 0.99, "gae_lambda": 0.94},
    },
}
