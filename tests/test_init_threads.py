"""The initial global model does not depend on how many threads torch may use."""

from __future__ import annotations

import numpy as np
import torch

from fedtwin.config import Config
from fedtwin.learn.train import policy_spec
from fedtwin.policy.network import init_params


def test_initial_model_is_the_same_on_one_thread_and_on_many() -> None:
    spec = policy_spec(Config().train)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = init_params(spec, 7)
        torch.set_num_threads(4)
        many = init_params(spec, 7)
        assert torch.get_num_threads() == 4  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
