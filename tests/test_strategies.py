"""Aggregation maths on small matrices with hand-computed expectations."""

import numpy as np
import pytest

from fedtwin.errors import ConfigError
from fedtwin.strategies import AggregationError, fedavg, make_strategy


def test_fedavg_weights_by_samples():
    updates = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    weights = np.array([1.0, 3.0])

    result = fedavg(updates, weights)

    np.testing.assert_array_equal(result, np.array([2.5, 5.0], dtype=np.float32))  # (1*1+3*3)/4, (2+18)/4
    assert result.dtype == np.float32


@pytest.mark.parametrize(
    ("updates", "weights"),
    [
        (np.zeros((0, 3)), np.zeros(0)),
        (np.ones((2, 3)), np.array([0.0, 0.0])),
        (np.ones((2, 3)), np.array([1.0, -1.0])),
        (np.ones((2, 3)), np.array([1.0, np.nan])),
        (np.ones((2, 3)), np.array([1.0])),
    ],
)
def test_fedavg_refuses_what_cannot_be_averaged(updates, weights):
    with pytest.raises(AggregationError):
        fedavg(updates, weights)


def test_unknown_strategy_lists_choices():
    with pytest.raises(ConfigError, match="choose one of: fedavg"):
        make_strategy("fedavgg")


def test_strategy_object_delegates_to_the_pure_function():
    strategy = make_strategy("fedavg")
    updates = np.array([[0.0], [4.0]], dtype=np.float32)
    params, state = strategy.aggregate(np.zeros(1, np.float32), updates, np.array([1.0, 1.0]), {})
    assert params.tolist() == [2.0]
    assert state == {}
