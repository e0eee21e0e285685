"""The config's pydantic models: every section and its bounds, and validate_for_fleet for the checks that
need the fleet's size (the quorum, the strategy's update counts, central DP's delta)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import check_dns_label
from fedtwin.core.limits import (
    MAX_EVAL_TWINS,
    MAX_HIDDEN_LAYERS,
    MAX_HIDDEN_WIDTH,
    MAX_ROLLOUT,
    MAX_TRAINING_TWINS,
)

ENV_PREFIX = "FEDTWIN_"

STRATEGY_NAMES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "median", "trimmed_mean", "krum",
                  "multikrum")
"""The aggregation strategies by name (`fedtwin.federation.strategies.STRATEGIES` has one class each;
a test holds the two equal): the config names strategies without importing them."""
LINEAR_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi")
"""Strategies that apply a (weighted) mean, so central DP can noise the average they see."""


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must fail before round 1, not be ignored. Numbers must be finite
    (an infinite learning rate or a NaN target can only break a run) and never booleans (YAML's
    `true` is not a seed)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = {annotation, *get_args(annotation)}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"must be a number, not a boolean ({str(value).lower()})")
        return value


class FleetConfig(StrictModel):
    kind: str = "cartpole"
    """Twin kind: a built-in (cartpole, pendulum, acrobot), `module:Class`, or an entry point of group
    `fedtwin.twins` (README, "Your own twins"); found when the run starts."""
    count: int = Field(8, ge=1, le=MAX_TRAINING_TWINS)
    """Number of training twins generated when no `file` is given."""
    seed: int = 7
    """Fleet seed: with a twin id it fixes that twin's physics."""
    spread: float = Field(0.15, ge=0.0, lt=1.0)
    """Relative spread of each physical parameter (uniform in ±spread)."""
    preset: Literal["default", "hard"] = "default"
    """`hard` also varies friction, sensor/actuator noise and action delay."""
    file: str | None = None
    """Fleet YAML (`twins:` list, optional `validation:`/`heldout:`); overrides generation."""
    validation_count: int = Field(4, ge=1, le=MAX_EVAL_TWINS)
    """Validation twins: monitor rounds and stop early."""
    heldout_count: int = Field(8, ge=1, le=MAX_EVAL_TWINS)
    """Held-out twins: used only for the final report."""

    @field_validator("kind")
    @classmethod
    def _kind_is_a_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][\w.-]*(:[A-Za-z_][\w.]*)?$", value.strip()):
            raise ValueError(f"must be a twin kind's name (e.g. pendulum) or module:Class, got {value!r}")
        return value.strip()


class TrainConfig(StrictModel):
    algo: Literal["ppo", "reinforce"] = "ppo"
    """Local trainer: PPO (default) or REINFORCE (the reference systems' algorithm)."""
    hidden: list[Annotated[int, Field(ge=1, le=MAX_HIDDEN_WIDTH)]] | None = Field(
        None, min_length=1, max_length=MAX_HIDDEN_LAYERS)
    """Hidden layer sizes; default 64,64 for PPO and 32,16 for REINFORCE."""
    num_envs: int = Field(1, ge=1)
    """Sub-environments per twin (one: fewer samples per twin per round, the same sequential PPO iterations;
    FedAvg of 8 twins' near-parallel updates moves the model about as far as one twin's)."""
    num_steps: int = Field(128, ge=1)
    """Rollout length per sub-environment per local update."""
    updates: int = Field(8, ge=1)
    """Local iterations (rollout + update) per round (tuned: 8 twins reach 490 in <= 8 FedAvg rounds)."""
    epochs: int = Field(6, ge=1)
    """PPO epochs over each rollout."""
    minibatches: int = Field(2, ge=1)
    """PPO minibatches per epoch."""
    learning_rate: float = Field(2.5e-3, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_coef: float = Field(0.2, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    norm_adv: bool = True
    proximal_mu: float = Field(0.0, ge=0)
    """FedProx proximal coefficient (0 = plain local training)."""
    reward_scale: float = Field(1.0, gt=0)
    """Rewards are multiplied by this for learning (returns and reports keep the env's rewards)."""

    @model_validator(mode="after")
    def _check_minibatches(self) -> TrainConfig:
        batch = self.num_envs * self.num_steps
        if batch > MAX_ROLLOUT:
            raise ValueError(f"num_envs*num_steps ({batch}) is more than the {MAX_ROLLOUT} transitions one "
                             "rollout may keep in memory; lower num_envs or num_steps")
        if self.algo == "ppo" and batch % self.minibatches:
            raise ValueError(
                f"num_envs*num_steps ({batch}) must be divisible by minibatches ({self.minibatches})"
            )
        return self

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        if self.hidden is not None:
            return tuple(self.hidden)
        return (64, 64) if self.algo == "ppo" else (32, 16)


class FederationConfig(StrictModel):
    rounds: int = Field(20, ge=1)
    strategy: str = "fedavg"
    """Aggregation strategy by name: fedavg, fedprox, fedavgm, fedadam, fedyogi, median, trimmed_mean,
    krum, multikrum (see `fedtwin.federation.strategies`)."""
    server_lr: float | None = Field(None, gt=0)
    """Server learning rate of fedavgm (default 1.0), fedadam and fedyogi (default 0.01)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """fedavgm: server momentum."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """fedadam/fedyogi: decay of the first moment."""
    beta2: float = Field(0.99, ge=0, lt=1)
    """fedadam/fedyogi: decay of the second moment."""
    tau: float = Field(1e-3, gt=0)
    """fedadam/fedyogi: adaptivity (the server optimizer's epsilon); v starts at tau^2."""
    trim_beta: float = Field(0.2, ge=0, lt=0.5)
    """trimmed_mean: fraction of updates cut from each end, per coordinate (floor(beta*K))."""
    krum_f: int = Field(1, ge=0)
    """krum/multikrum: Byzantine twins tolerated; every round needs at least 2f+3 updates."""
    multi_krum_m: int | None = Field(None, ge=1)
    """multikrum: updates averaged (default: the round's count minus krum_f)."""
    norm_bound_factor: float | None = Field(10.0, ge=1)
    """Reject an update whose distance to the global model exceeds this many times the round's
    median distance (null: off)."""
    min_twins: float = Field(0.5, gt=0)
    """Quorum: a count (>= 1) or a fraction of the fleet (< 1)."""
    target_return: float | None = 490.0
    """Stop early when the global model's validation return reaches this (None: run all rounds)."""
    eval_episodes: int = Field(2, ge=1)
    """Greedy episodes per validation twin each round."""
    heldout_episodes: int = Field(4, ge=1)
    """Greedy episodes per held-out twin in the final evaluation."""

    def quorum(self, fleet_size: int) -> int:
        """Minimum number of valid updates for a round with `fleet_size` twins."""
        if self.min_twins >= 1:
            return int(self.min_twins)
        return max(1, int(-(-self.min_twins * fleet_size // 1)))

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {value!r}; choose one of: {', '.join(STRATEGY_NAMES)}")
        return value

    def strategy_params(self) -> dict[str, Any]:
        """The strategy hyperparameters, for `fedtwin.federation.strategies.make_strategy`."""
        keys = ("server_lr", "momentum", "beta1", "beta2", "tau", "trim_beta", "krum_f", "multi_krum_m")
        return {k: getattr(self, k) for k in keys}


class ExecutionConfig(StrictModel):
    engine: Literal["pool", "fleet"] = "fleet"
    """fleet: the twins trained as one batched computation; pool: one job per twin."""
    workers: int | None = Field(1, ge=1)
    """Training processes; one (in-process) by default, so a seeded run does not depend on the core count
    and no worker re-imports torch; null: one per core."""
    device: Literal["cpu", "cuda"] = "cpu"
    env_backend: Literal["numpy", "torch"] = "numpy"
    """How CartPole twins are stepped while training: numpy (the exact env, the default) or torch (on
    `device`: on a GPU env, policy and rollout stay there; its own random streams, so other runs)."""


class PrivacyConfig(StrictModel):
    """Differential privacy (docs/privacy.md says what the guarantee covers)."""

    mode: Literal["off", "local", "central"] = "off"
    """off; local: DP-SGD on each twin's update (per-transition epsilon per twin, budget stop);
    central: DP-FedAvg at the aggregator (per-twin epsilon of the global models)."""
    target_epsilon: float | None = Field(None, gt=0)
    """Budget: without noise_multiplier the noise is calibrated so the planned rounds spend at most
    this; a twin (local) or the run (central) stops before exceeding it."""
    delta: float = Field(1e-6, gt=0, lt=1)
    """Delta of the (epsilon, delta) guarantee; below 1/units (local: a twin's transitions over the
    run; central: the fleet's twins)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """local: clip bound of each transition's gradient (DP-SGD's C)."""
    noise_multiplier: float | None = Field(None, gt=0)
    """Noise std / clip bound; default: calibrated from target_epsilon over the planned rounds."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus accountant: rdp (fast) or prv (tighter, slower)."""
    clip_norm: float | None = Field(None, gt=0)
    """central: bound on each twin's update delta ||update - global|| (required in central mode)."""
    release_metrics: bool = False
    """local: also publish the twins' experience-derived metrics (returns, losses), which the DP
    guarantee does not cover."""


class TrackingConfig(StrictModel):
    enabled: bool = False
    """Log to MLflow (also on whenever `MLFLOW_TRACKING_URI` is set)."""
    uri: str | None = None
    """MLflow tracking URI; default `MLFLOW_TRACKING_URI` or a local `./mlruns`."""
    experiment: str = "fedtwin"
    request_timeout: int = Field(10, ge=1)
    """Seconds per MLflow HTTP request (a dead server must not stall a step for minutes)."""
    max_retries: int = Field(1, ge=0)
    """Retries per MLflow HTTP request."""


class S3Config(StrictModel):
    """S3 store settings; unset keys fall back to `FEDTWIN_S3_<KEY>`, then boto3 defaults.

    Credentials are never config: use the AWS variables or a named `profile`.
    """

    endpoint: str | None = None
    """Endpoint URL (MinIO, SeaweedFS, ...); default: AWS."""
    region: str | None = None
    profile: str | None = None
    """Named profile from the AWS config/credentials files."""
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    """Default: `path` with a custom endpoint, else `auto`."""
    connect_timeout: float | None = Field(None, gt=0)
    """Seconds to connect (default 5)."""
    read_timeout: float | None = Field(None, gt=0)
    """Seconds to wait for a response (default 30)."""
    max_attempts: int | None = Field(None, ge=1)
    """Attempts per request, botocore `standard` retry mode (default 5)."""


class MulticlusterConfig(StrictModel):
    """How members and the coordinator of a multi-cluster run wait for each other through the store."""

    poll_interval: float = Field(1.0, gt=0)
    """Seconds before the second look at the store while waiting (the first look is immediate)."""
    max_poll_interval: float = Field(15.0, gt=0)
    """Cap of the poll interval as it backs off."""
    backoff: float = Field(2.0, ge=1)
    """Factor the poll interval grows by after each look that saw nothing new (1 = fixed interval)."""
    jitter: float = Field(0.1, ge=0, lt=1)
    """Random +/- fraction of each pause, so that many members do not poll in lockstep."""
    round_deadline_seconds: float = Field(1800.0, gt=0)
    """Coordinator: seconds a round waits for every expected update; then it aggregates if at least
    `federation.min_twins` are there, else the run fails."""
    wait_timeout_seconds: float = Field(3600.0, gt=0)
    """Member: seconds one wait (for the run, a round's global model, its aggregation) may last
    before the member gives up."""

    @model_validator(mode="after")
    def _check_intervals(self) -> MulticlusterConfig:
        if self.max_poll_interval < self.poll_interval:
            raise ValueError(
                f"max_poll_interval ({self.max_poll_interval:g}) must be at least poll_interval "
                f"({self.poll_interval:g})"
            )
        return self

    def check_member_patience(self) -> None:
        """Raise ValueError when a member would give up while a round still waits for stragglers."""
        if self.wait_timeout_seconds <= self.round_deadline_seconds:
            raise ValueError(
                f"multicluster.wait_timeout_seconds ({self.wait_timeout_seconds:g}) must exceed "
                f"round_deadline_seconds ({self.round_deadline_seconds:g}): a member waits for the "
                "aggregation of a round, which can take the whole round deadline"
            )


class Config(StrictModel):
    run_id: str | None = None
    """Run id (DNS-1123 label); default: generated from the time."""
    seed: int = 0
    store: str = "./fedtwin-runs"
    """Artifact store: a directory or `s3://bucket/prefix`."""
    fleet: FleetConfig = FleetConfig()
    train: TrainConfig = TrainConfig()
    federation: FederationConfig = FederationConfig()
    execution: ExecutionConfig = ExecutionConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    tracking: TrackingConfig = TrackingConfig()
    s3: S3Config = S3Config()
    multicluster: MulticlusterConfig = MulticlusterConfig()

    @field_validator("run_id")
    @classmethod
    def _run_id_is_dns(cls, value: str | None) -> str | None:
        return None if value is None else check_dns_label(value, "run id")

    @model_validator(mode="after")
    def _check_multicluster(self) -> Config:
        self.multicluster.check_member_patience()
        return self

    @model_validator(mode="after")
    def _check_privacy(self) -> Config:
        p, t = self.privacy, self.train
        if p.mode == "off":
            return self
        if p.target_epsilon is None and p.noise_multiplier is None:
            raise ValueError(f"privacy.mode {p.mode!r} needs privacy.target_epsilon (the budget) or "
                             "privacy.noise_multiplier")
        if p.mode == "local":
            units = self.federation.rounds * t.updates * t.num_steps * t.num_envs
            if p.delta >= 1 / units:
                raise ValueError(
                    f"privacy.delta ({p.delta:g}) must be below 1/num_samples = 1/{units} ({1 / units:.3g}), "
                    "num_samples being a twin's transitions over the run "
                    "(rounds*updates*num_steps*num_envs); lower delta"
                )
        else:
            if p.clip_norm is None:
                raise ValueError("privacy.mode 'central' needs privacy.clip_norm (bound on each twin's "
                                 "update delta, e.g. 1.0)")
            if self.federation.strategy not in LINEAR_STRATEGIES:
                raise ValueError(
                    f"privacy.mode 'central' noises the average, so federation.strategy must be one of "
                    f"{', '.join(LINEAR_STRATEGIES)}, not {self.federation.strategy!r}"
                )
        return self

    @model_validator(mode="after")
    def _check_env_backend(self) -> Config:
        if self.execution.env_backend == "torch":
            if self.fleet.kind != "cartpole":
                raise ValueError(f"execution.env_backend 'torch' steps CartPole twins only, not fleet.kind "
                                 f"{self.fleet.kind!r}; use env_backend: numpy")
            if self.privacy.mode == "local":
                raise ValueError("execution.env_backend 'torch' is not supported with privacy.mode 'local' "
                                 "yet; use env_backend: numpy")
        return self

    @model_validator(mode="after")
    def _check_strategy(self) -> Config:
        if self.federation.strategy == "fedprox" and self.train.proximal_mu <= 0:
            raise ValueError(
                "federation.strategy 'fedprox' needs train.proximal_mu > 0 (the proximal term of "
                "local training, e.g. 0.01); with mu = 0 use 'fedavg'"
            )
        return self

    @model_validator(mode="after")
    def _check_fleet(self) -> Config:
        if self.fleet.file is None:  # a fleet file's size is known only at init, which checks it then
            problem = fleet_problem(self, self.fleet.count, "fleet.count")
            if problem:
                raise ValueError(problem)
        return self


def fleet_problem(config: Config, fleet_size: int, fleet: str = "the fleet size") -> str | None:
    """What the quorum, the strategy or central DP cannot do with a fleet of `fleet_size` training
    twins (`fleet` names where the size comes from), or None."""
    fed, privacy = config.federation, config.privacy
    quorum = fed.quorum(fleet_size)
    if quorum > fleet_size:
        return (f"federation.min_twins ({fed.min_twins:g}) exceeds {fleet} ({fleet_size}); lower min_twins "
                "or add twins")
    if fed.strategy == "trimmed_mean" and fed.trim_beta > 0 and int(fed.trim_beta * fleet_size) == 0:
        return (f"federation.trim_beta ({fed.trim_beta}) cuts floor({fed.trim_beta}*{fleet_size}) = 0 "
                f"updates even from a full round of {fleet_size}; raise it to at least {1 / fleet_size:.3g} "
                "or use fedavg")
    if fed.strategy in ("krum", "multikrum") and quorum < 2 * fed.krum_f + 3:
        need = 2 * fed.krum_f + 3
        return (f"{fed.strategy} with federation.krum_f={fed.krum_f} needs every round to have at least "
                f"2f+3 = {need} updates, but the quorum (federation.min_twins) allows rounds of {quorum}; "
                f"raise min_twins to {need} or lower krum_f")
    m = fed.multi_krum_m
    if fed.strategy == "multikrum" and m is not None and m > quorum - fed.krum_f:
        return (f"multikrum selects federation.multi_krum_m={m} updates, but a round of {quorum} (the "
                f"quorum) with krum_f={fed.krum_f} offers only {quorum - fed.krum_f}; lower multi_krum_m or "
                "raise min_twins")
    if privacy.mode == "central" and privacy.delta >= 1 / fleet_size:
        return (f"privacy.delta ({privacy.delta:g}) must be below 1/{fleet} = 1/{fleet_size} "
                f"({1 / fleet_size:.3g}) in central mode (one unit = one twin); lower delta")
    return None


def validate_for_fleet(config: Config, fleet_size: int) -> None:
    """The quorum, strategy and central-DP checks against the run's real fleet size (a fleet file's
    size is known only at init): one ConfigError, before anything is written."""
    problem = fleet_problem(config, fleet_size)
    if problem:
        raise ConfigError(f"invalid config: {problem}")
