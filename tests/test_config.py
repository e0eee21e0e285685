"""Config resolution: file < environment < flags, strict keys, clear errors."""

import pytest

from fedtwin.config import Config, fingerprint, load_config, validate_for_fleet
from fedtwin.core.errors import ConfigError


def test_defaults_validate_and_derive_hidden_sizes():
    config = load_config(environ={})
    assert config.train.hidden_sizes == (64, 64)
    assert config.model_copy(update={"train": config.train.model_copy(update={"algo": "reinforce"})}) \
        .train.hidden_sizes == (32, 16)


def test_precedence_file_then_env_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nfederation:\n  rounds: 5\n  strategy: fedavg\nfleet:\n  count: 3\n")
    env = {"FEDTWIN_FEDERATION__ROUNDS": "7", "FEDTWIN_SEED": "2", "FEDTWIN_S3_ENDPOINT": "x"}

    config = load_config(path, {"seed": 3}, environ=env)

    assert config.federation.rounds == 7  # env beats file
    assert config.seed == 3  # flag beats env
    assert config.fleet.count == 3  # file beats default


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fleet:\n  cout: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    message = str(err.value)
    assert "unknown key 'fleet.cout'" in message
    assert "count" in message and "spread" in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("federation:\n  rounds: many\n", "federation.rounds"),
        ("run_id: Bad_Id\n", "DNS-1123"),
        ("train:\n  num_envs: 3\n  num_steps: 5\n  minibatches: 4\n", "must be divisible by minibatches (4)"),
        ("fleet:\n  count: 2\nfederation:\n  min_twins: 5\n", "exceeds fleet.count"),
        ("[not: a mapping", "not valid YAML"),
        ("- a list\n", "must hold a mapping"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        load_config(path, environ={})
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_quorum_count_or_fraction():
    config = Config()
    assert config.federation.model_copy(update={"min_twins": 3}).quorum(10) == 3
    assert config.federation.model_copy(update={"min_twins": 0.25}).quorum(10) == 3  # ceil(2.5)
    assert config.federation.model_copy(update={"min_twins": 0.5}).quorum(1) == 1


def test_fingerprint_ignores_execution_only_keys():
    base = Config(run_id="a")
    same = Config(run_id="b", store="s3://x/y", execution={"workers": 7})
    different = Config(run_id="a", seed=5)
    assert fingerprint(base) == fingerprint(same)
    assert fingerprint(base) != fingerprint(different)


def test_env_words_stay_strings_for_string_fields():
    config = load_config(environ={"FEDTWIN_PRIVACY__MODE": "off", "FEDTWIN_TRACKING__ENABLED": "true"})
    assert config.privacy.mode == "off"
    assert config.tracking.enabled is True


# --------------------------------------------------- refused at validation (issue 17, items 3 and 8)
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train:\n  hidden: []\n", "'train.hidden': List should have at least 1 item"),
        ("train:\n  learning_rate: .inf\n", "'train.learning_rate': Input should be a finite number"),
        ("train:\n  learning_rate: .nan\n", "'train.learning_rate': Input should be a finite number"),
        ("federation:\n  target_return: .nan\n",
         "'federation.target_return': Input should be a finite number"),
        ("federation:\n  target_return: -.inf\n",
         "'federation.target_return': Input should be a finite number"),
        ("seed: true\n", "'seed': must be a number, not a boolean"),
        ("federation:\n  rounds: false\n", "'federation.rounds': must be a number, not a boolean"),
    ],
)
def test_values_no_run_can_use_are_refused_at_validation(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert needle in str(err.value)


def test_a_binary_config_file_is_one_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ConfigError, match=r"config file .*c\.yaml is not UTF-8 text .*; pass a YAML file"):
        load_config(path, environ={})


def test_yaml_1_2_floats_in_a_config_file_and_the_environment_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\nfederation:\n  target_return: 4.5E+2\n")
    config = load_config(path, environ={"FEDTWIN_PRIVACY__DELTA": "1e-7"})
    assert config.train.learning_rate == 0.001 and config.federation.target_return == 450.0
    assert config.privacy.delta == 1e-7


def test_the_config_names_every_strategy_the_federation_has():
    from fedtwin.config import STRATEGY_NAMES
    from fedtwin.federation.strategies import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES


def test_validate_for_fleet_checks_the_real_fleet_size():
    federation = {"strategy": "krum", "min_twins": 5}
    config = load_config(overrides={"fleet": {"count": 10}, "federation": federation}, environ={})
    validate_for_fleet(config, 10)
    with pytest.raises(ConfigError, match=r"min_twins \(5\) exceeds the fleet size \(4\)"):
        validate_for_fleet(config, 4)
    central = load_config(overrides={"fleet": {"count": 30}, "privacy": {
        "mode": "central", "target_epsilon": 3, "clip_norm": 1, "delta": 0.02}}, environ={})
    validate_for_fleet(central, 40)
    with pytest.raises(ConfigError, match=r"privacy.delta \(0.02\) must be below 1/the fleet size = 1/100"):
        validate_for_fleet(central, 100)
