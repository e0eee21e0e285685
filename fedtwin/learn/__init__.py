"""Local learning, pure computation: rollouts, PPO, REINFORCE, DP-SGD and its accounting, evaluation."""
