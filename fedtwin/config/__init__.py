"""One validated config object (`Config`); precedence: YAML file < environment variables < CLI flags.

`model` holds the sections and the checks (validate_for_fleet: those that need the fleet's size),
`load` reads files, the environment and flags. The config names strategies (STRATEGY_NAMES) and
imports no algorithm.
"""

from fedtwin.config.load import (
    EXECUTION_ONLY,
    build_config,
    config_to_yaml,
    deep_merge,
    env_overrides,
    fingerprint,
    format_validation_error,
    load_config,
    parse_env_value,
    set_path,
)
from fedtwin.config.model import (
    ENV_PREFIX,
    LINEAR_STRATEGIES,
    STRATEGY_NAMES,
    Config,
    ExecutionConfig,
    FederationConfig,
    FleetConfig,
    MulticlusterConfig,
    PrivacyConfig,
    S3Config,
    StrictModel,
    TrackingConfig,
    TrainConfig,
    fleet_problem,
    validate_for_fleet,
)

__all__ = [
    "ENV_PREFIX",
    "EXECUTION_ONLY",
    "LINEAR_STRATEGIES",
    "STRATEGY_NAMES",
    "Config",
    "ExecutionConfig",
    "FederationConfig",
    "FleetConfig",
    "MulticlusterConfig",
    "PrivacyConfig",
    "S3Config",
    "StrictModel",
    "TrackingConfig",
    "TrainConfig",
    "build_config",
    "config_to_yaml",
    "deep_merge",
    "env_overrides",
    "fingerprint",
    "fleet_problem",
    "format_validation_error",
    "load_config",
    "parse_env_value",
    "set_path",
    "validate_for_fleet",
]
