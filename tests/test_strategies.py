"""Aggregation maths on small matrices with hand-computed expectations."""

import numpy as np
import pytest
from safetensors.numpy import load, save

from fedtwin.config import FederationConfig, load_config
from fedtwin.core.errors import ConfigError
from fedtwin.federation.strategies import (
    AggregationError,
    FedAdam,
    FedAvgM,
    FedProx,
    FedYogi,
    Krum,
    Median,
    MultiKrum,
    Strategy,
    TrimmedMean,
    coordinate_median,
    fedavg,
    krum,
    krum_scores,
    make_strategy,
    trimmed_mean,
)
from fedtwin.run import steps
from fedtwin.sim.fleet_files import dump_fleet
from fedtwin.sim.twins import make_fleet
from fedtwin.store import LocalStore


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


# ------------------------------------------------------------------ server optimizers (Reddi et al.)
def test_fedavgm_accumulates_pseudo_gradients_with_momentum():
    strategy = make_strategy("fedavgm", {"server_lr": 0.5, "momentum": 0.5})
    ones = np.array([1.0, 1.0])

    first, state = strategy.aggregate(np.zeros(2, np.float32), np.array([[1.0, 2.0], [3.0, 4.0]]), ones, {})
    second, state = strategy.aggregate(first, np.array([[2.0, 3.0], [4.0, 4.0]]), ones, state)

    # round 1: average [2, 3], delta [2, 3], buf [2, 3], params 0 + 0.5*buf = [1, 1.5]
    np.testing.assert_array_equal(first, [1.0, 1.5])
    # round 2: average [3, 3.5], delta [2, 2], buf 0.5*[2, 3] + [2, 2] = [3, 3.5], params [2.5, 3.25]
    np.testing.assert_array_equal(state["momentum"], [3.0, 3.5])
    np.testing.assert_array_equal(second, [2.5, 3.25])


def test_fedavgm_with_unit_lr_and_no_momentum_is_fedavg():
    strategy = make_strategy("fedavgm", {"server_lr": 1.0, "momentum": 0.0})
    updates = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    params, _ = strategy.aggregate(np.zeros(2, np.float32), updates, np.array([1.0, 3.0]), {})
    np.testing.assert_array_equal(params, fedavg(updates, np.array([1.0, 3.0])))


ADAPTIVE = {"server_lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 2.0}
DELTA = np.array([[2.0, 0.0, 6.0]])  # one update; the global model is 0, so this is the pseudo-gradient


def test_fedadam_step_by_hand():
    strategy = make_strategy("fedadam", ADAPTIVE)

    params, state = strategy.aggregate(np.zeros(3, np.float32), DELTA, np.ones(1), {})

    # m0 = 0, v0 = tau^2 = 4; m = 0.5*delta = [1, 0, 3]; v = 0.5*4 + 0.5*delta^2 = [4, 2, 20]
    np.testing.assert_array_equal(state["m"], [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(state["v"], [4.0, 2.0, 20.0])
    np.testing.assert_allclose(params, [1 / (2 + 2), 0.0, 3 / (np.sqrt(20) + 2)], rtol=1e-6)


def test_fedyogi_moves_v_additively():
    strategy = make_strategy("fedyogi", ADAPTIVE)

    params, state = strategy.aggregate(np.zeros(3, np.float32), DELTA, np.ones(1), {})

    # v = v0 - 0.5*delta^2*sign(v0 - delta^2) = [4 - 2*0, 4 - 0, 4 + 18] = [4, 4, 22]
    np.testing.assert_array_equal(state["m"], [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(state["v"], [4.0, 4.0, 22.0])
    np.testing.assert_allclose(params, [0.25, 0.0, 3 / (np.sqrt(22) + 2)], rtol=1e-6)


def test_fedadam_state_survives_a_safetensors_round_trip_exactly():
    rng = np.random.default_rng(0)
    strategy = make_strategy("fedadam", {"server_lr": 0.05})
    start = rng.normal(size=50).astype(np.float32)
    rounds = [rng.normal(size=(4, 50)).astype(np.float32) for _ in range(3)]
    weights = np.array([1.0, 2.0, 3.0, 4.0])

    uninterrupted, state = start, {}
    for updates in rounds:
        uninterrupted, state = strategy.aggregate(uninterrupted, updates, weights, state)

    resumed, state = start, {}
    for updates in rounds:  # a fresh strategy object each round, state through safetensors bytes
        state = load(save(state)) if state else {}
        fresh = make_strategy("fedadam", {"server_lr": 0.05})
        resumed, state = fresh.aggregate(resumed, updates, weights, state)

    assert resumed.tobytes() == uninterrupted.tobytes()


def test_server_state_of_another_shape_is_refused():
    strategy = make_strategy("fedadam")
    state = {"m": np.zeros(3), "v": np.ones(3)}
    with pytest.raises(AggregationError, match="wrongly shaped"):
        strategy.aggregate(np.zeros(2, np.float32), np.ones((2, 2)), np.ones(2), state)


# ---------------------------------------------------------------------------------- robust rules
def test_coordinate_median_odd_and_even():
    np.testing.assert_array_equal(coordinate_median(np.array([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0]])),
                                  [2.0, 0.0])
    np.testing.assert_array_equal(coordinate_median(np.array([[1.0], [3.0], [5.0], [100.0]])), [4.0])


def test_trimmed_mean_cuts_floor_beta_k_from_each_end():
    column = np.array([[1.0], [3.0], [5.0], [100.0]])
    np.testing.assert_array_equal(trimmed_mean(column, 0.25), [4.0])  # cut 1 each end: mean(3, 5)
    np.testing.assert_array_equal(trimmed_mean(column, 0.2), [27.25])  # floor(0.8) = 0: plain mean
    per_coordinate = np.array([[1.0, 40.0], [2.0, 10.0], [3.0, 20.0], [4.0, 30.0], [-50.0, 0.0]])
    np.testing.assert_array_equal(trimmed_mean(per_coordinate, 0.2), [2.0, 20.0])  # each column sorted


# Points on a line: two clusters. With n=5, f=1 each score sums the n-f-2 = 2 nearest squared distances.
# 0: 1+4=5, 1: 1+1=2, 2: 1+4=5, 10: 1+64=65, 11: 1+81=82.
LINE = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], dtype=np.float32)


def test_krum_scores_and_choice_by_hand():
    np.testing.assert_allclose(krum_scores(LINE, 1), [5.0, 2.0, 5.0, 65.0, 82.0])
    params, selected = krum(LINE, np.ones(5), f=1)
    assert selected.tolist() == [1]
    np.testing.assert_array_equal(params, [1.0])


def test_multikrum_averages_the_m_best_by_samples():
    params, selected = krum(LINE, np.array([3.0, 1.0, 1.0, 1.0, 1.0]), f=1, m=3)
    assert selected.tolist() == [1, 0, 2]  # the tie 0/2 keeps the lower index first
    np.testing.assert_allclose(params, [(3 * 0.0 + 1.0 + 2.0) / 5])


def test_multikrum_strategy_defaults_to_n_minus_f():
    strategy = make_strategy("multikrum", {"krum_f": 1})
    params, _ = strategy.aggregate(np.zeros(1, np.float32), LINE, np.ones(5), {})
    assert strategy.info == {"selected": [1, 0, 2, 3]}
    np.testing.assert_allclose(params, [(0.0 + 1.0 + 2.0 + 10.0) / 4])


def test_krum_needs_2f_plus_3_updates():
    with pytest.raises(AggregationError, match="2f\\+3 = 5"):
        krum(LINE[:4], np.ones(4), f=1)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum"])
def test_robust_rules_ignore_one_huge_update(name):
    honest = np.array([[1.0, 2.0], [1.1, 2.1], [0.9, 1.9], [1.0, 2.05], [1.05, 1.95]], dtype=np.float32)
    poisoned = np.vstack([honest, [[1e6, -1e6]]]).astype(np.float32)
    strategy = make_strategy(name, {"krum_f": 1, "trim_beta": 0.2})

    params, _ = strategy.aggregate(np.zeros(2, np.float32), poisoned, np.ones(6), {})

    assert np.all(np.abs(params - np.array([1.0, 2.0])) < 0.2), params
    fedavg_params = fedavg(poisoned, np.ones(6))
    assert np.abs(fedavg_params).max() > 1e5  # the mean is ruined, the robust rule is not


# ---------------------------------------------------------------------------- selection by name
@pytest.mark.parametrize(
    ("name", "cls"),
    [("fedavg", Strategy), ("fedprox", FedProx), ("fedavgm", FedAvgM), ("fedadam", FedAdam),
     ("fedyogi", FedYogi), ("median", Median), ("trimmed_mean", TrimmedMean), ("krum", Krum),
     ("multikrum", MultiKrum)],
)
def test_every_strategy_is_selectable_by_name(name, cls):
    strategy = make_strategy(name, FederationConfig().strategy_params())
    assert type(strategy) is cls and strategy.name == name


def test_server_lr_default_depends_on_the_strategy():
    assert make_strategy("fedavgm", {"server_lr": None}).server_lr == 1.0
    assert make_strategy("fedadam", {"server_lr": None}).server_lr == 0.01
    assert make_strategy("fedyogi", {"server_lr": 0.3}).server_lr == 0.3


def test_fedprox_server_side_is_fedavg():
    updates = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    strategy = make_strategy("fedprox")
    params, state = strategy.aggregate(np.zeros(2, np.float32), updates, np.array([1.0, 3.0]), {})
    np.testing.assert_array_equal(params, [2.5, 5.0])
    assert state == {}


# ----------------------------------------------------------------------- config fails before round 1
def config_with(**federation):
    return load_config(overrides={"fleet": {"count": 10}, "federation": federation}, environ={})


@pytest.mark.parametrize(
    ("federation", "train", "needle"),
    [
        ({"strategy": "fedprox"}, {}, "needs train.proximal_mu > 0"),
        ({"strategy": "krum", "krum_f": 3, "min_twins": 5}, {}, "2f+3 = 9 updates"),
        ({"strategy": "multikrum", "krum_f": 1, "multi_krum_m": 8, "min_twins": 6}, {}, "offers only 5"),
        ({"strategy": "trimmed_mean", "trim_beta": 0.05}, {}, "cuts floor(0.05*10) = 0"),
        ({"strategy": "trimmed_mean", "trim_beta": 0.5}, {}, "federation.trim_beta"),
        ({"strategy": "fedadam", "beta2": 1.0}, {}, "federation.beta2"),
        ({"strategy": "fedavg", "norm_bound_factor": 0.5}, {}, "federation.norm_bound_factor"),
        ({"strategy": "krumm"}, {}, "choose one of: fedavg, fedprox"),
    ],
)
def test_bad_strategy_config_fails_with_the_fix(federation, train, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"fleet": {"count": 10}, "federation": federation, "train": train}, environ={})
    assert needle in str(err.value)


def test_good_strategy_configs_pass():
    load_config(overrides={"federation": {"strategy": "fedprox"}, "train": {"proximal_mu": 0.01}}, environ={})
    assert config_with(strategy="krum", krum_f=3, min_twins=9).federation.krum_f == 3
    assert config_with(strategy="trimmed_mean", trim_beta=0.3).federation.trim_beta == 0.3
    assert config_with(strategy="fedavg", norm_bound_factor=None).federation.norm_bound_factor is None


def test_fleet_file_too_small_for_krum_fails_at_init(tmp_path):
    # Prepare: the config cannot know a fleet file's size, so init checks the strategy against it
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(dump_fleet(make_fleet(4, 0, 0.1, "default", 1, 1)))
    config = load_config(overrides={"run_id": "krum", "store": str(tmp_path / "store"),
                                    "fleet": {"file": str(fleet_file)},
                                    "federation": {"strategy": "krum", "min_twins": 4}}, environ={})
    # Execute / Assert: nothing is written
    with pytest.raises(ConfigError, match="2f\\+3 = 5 updates"):
        steps.init(LocalStore(config.store), config)
    assert not (tmp_path / "store").exists()
