"""Differential privacy: Opacus equivalence, per-twin accounting across rounds, budget stop, config
validation, central DP noise scale, and pool/fleet equality with DP on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedtwin.config import Config, TrainConfig, build_config, deep_merge
from fedtwin.core.errors import ConfigError, QuorumError
from fedtwin.federation.updates import update_twin_ids
from fedtwin.learn import accounting, central_dp, dp_sgd
from fedtwin.learn.train import policy_spec, train_twin, train_twins
from fedtwin.observe import tracking
from fedtwin.policy.layout import params_from_bytes
from fedtwin.policy.network import init_params
from fedtwin.run import runner, steps
from fedtwin.run.round import train_round
from fedtwin.sim.twins import make_fleet
from fedtwin.store import LocalStore, RunLayout
from tests.helpers import TINY, clean_env, fedtwin, write_tiny_config

SIGMA = 1.0


@pytest.fixture(autouse=True)
def _setup(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv(accounting.NOISE_KEY_ENV, "test-key")  # reproducible noise


def tiny(tmp_path: Path, run_id: str = "dp", **changes: Any) -> Config:
    data = deep_merge(TINY, {"store": str(tmp_path / "store"), "run_id": run_id,
                             "execution": {"engine": "fleet", "workers": 1}})
    return build_config(deep_merge(data, changes))


def record(store: LocalStore, run_id: str, round_index: int, twin_id: str) -> dict[str, Any]:
    return store.get_json(RunLayout(run_id).update_meta(round_index, twin_id))


def accountant_after(steps_taken: int, kind: str = "rdp", sigma: float = SIGMA, rate: float = 0.5) -> Any:
    """One accountant fed the same steps directly: the reference the stored numbers must equal."""
    accountant = accounting.new_accountant(kind)
    for _ in range(steps_taken):
        accountant.step(noise_multiplier=sigma, sample_rate=rate)
    return accountant


# ------------------------------------------------------------------------------ the mechanism
@pytest.mark.parametrize("noise", [0.0, 1.3], ids=["no-noise", "same-noise-seed"])
@pytest.mark.parametrize("functorch", [False, True], ids=["opacus-hooks", "opacus-functorch"])
def test_per_sample_clip_and_noise_equal_opacus_dpoptimizer(noise: float, functorch: bool) -> None:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(6, 4) * 3, torch.tensor([0, 2, 1, 1, 0, 2])
    clip, expected_batch = 2.0, 8  # expected != actual: Poisson batches divide by the expected size
    plain = copy.deepcopy(model)  # ours runs on an unhooked copy with the same weights
    # Opacus: GradSampleModule + DPOptimizer, one pre_step (clip, sum, noise, scale) on a mean loss.
    gsm = GradSampleModule(model, loss_reduction="mean", force_functorch=functorch)
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=1.0), noise_multiplier=noise, max_grad_norm=clip,
                      expected_batch_size=expected_batch, generator=torch.Generator().manual_seed(42))
    nn.functional.cross_entropy(gsm(x), y).backward()
    opt.pre_step()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    # fedtwin: vmap(grad) per sample, twin axis of 1, clip_and_sum + noise_and_scale, same seed.
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters()}

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(plain, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    per_sample = torch.vmap(torch.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0)))(
        params, x.unsqueeze(0), y.unsqueeze(0))
    summed = dp_sgd.clip_and_sum(per_sample, clip, torch.ones(1, 6))
    ours = dp_sgd.noise_and_scale(summed, noise, clip, expected_batch, [torch.Generator().manual_seed(42)])

    norms = torch.cat([g[0].reshape(6, -1) for g in per_sample.values()], dim=1).norm(dim=1)
    assert (norms > clip).any() and (norms < clip).any()  # some samples are clipped, some are not
    assert list(ours) == list(expected)
    for name in expected:
        torch.testing.assert_close(ours[name][0], expected[name], rtol=1e-5, atol=1e-6)


def test_twin_batching_and_padding_equal_separate_opacus_style_steps() -> None:
    """Twin k's privatized gradient depends only on its samples, its mask and its generator."""
    g = torch.Generator().manual_seed(1)
    per_sample = {"w": torch.randn(2, 5, 3, generator=g), "b": torch.randn(2, 5, generator=g)}
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)  # twin 0: 3 real samples

    both = dp_sgd.noise_and_scale(dp_sgd.clip_and_sum(per_sample, 1.0, mask), 0.7, 1.0, 4.0,
                                   [torch.Generator().manual_seed(10), torch.Generator().manual_seed(20)])
    alone = dp_sgd.noise_and_scale(
        dp_sgd.clip_and_sum({n: v[:1, :3] for n, v in per_sample.items()}, 1.0, torch.ones(1, 3)),
        0.7, 1.0, 4.0, [torch.Generator().manual_seed(10)])

    for name in per_sample:
        torch.testing.assert_close(both[name][0], alone[name][0])


@pytest.mark.parametrize("cfg", [TrainConfig(num_envs=2, num_steps=32, updates=2, epochs=2, minibatches=2),
                                 TrainConfig(algo="reinforce", num_envs=2, num_steps=32, updates=2)],
                         ids=["ppo", "reinforce"])
def test_dp_trainer_same_update_alone_or_batched(cfg: TrainConfig) -> None:
    twins, seeds = make_fleet(3, seed=7).train, [11, 22, 33]
    params = init_params(policy_spec(cfg), 0)
    rate = 1 / cfg.minibatches if cfg.algo == "ppo" else 1.0

    def dp(ids: list[int]) -> dp_sgd.LocalDP:
        return dp_sgd.LocalDP(SIGMA, 1.0, rate, [dp_sgd.noise_generator(100 + i) for i in ids])

    fleet_dp = dp([0, 1, 2])
    together = train_twins(params, twins, seeds, cfg, dp=fleet_dp)
    alone = [train_twin(params, twin, seed, cfg, dp=dp([i]))
             for i, (twin, seed) in enumerate(zip(twins, seeds, strict=True))]
    plain = train_twins(params, twins, seeds, cfg)

    for batched, single in zip(together, alone, strict=True):
        np.testing.assert_allclose(batched.params, single.params, rtol=0, atol=1e-6)
    steps_per_round = cfg.updates * (cfg.epochs * cfg.minibatches if cfg.algo == "ppo" else 1)
    assert [r.dp_steps for r in together] == [steps_per_round] * 3  # what each accountant is charged
    assert [r.dp_steps for r in plain] == [0, 0, 0]
    assert not np.allclose(together[0].params, plain[0].params, atol=1e-3)  # the noise is really there


# ---------------------------------------------------------------------- accounting across rounds
@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_epsilon_accumulates_across_rounds_exactly_like_one_accountant(tmp_path: Path, kind: str) -> None:
    config = tiny(tmp_path, privacy={"mode": "local", "noise_multiplier": SIGMA, "accountant": kind},
                  federation={"rounds": 3})
    store = LocalStore(tmp_path / "store")
    steps_per_round = 2  # TINY PPO: updates 1 x epochs 1 x minibatches 2, rate 1/2

    runner.run(config, progress=False, report=False)

    for twin_id in ("twin-000", "twin-001", "twin-002"):
        eps = [record(store, "dp", r, twin_id)["epsilon"] for r in range(3)]
        assert eps[0] > 0 and eps[0] < eps[1] < eps[2]
        for r, value in enumerate(eps):
            reference = accountant_after(steps_per_round * (r + 1), kind)
            assert value == accounting.epsilon(reference, 1e-6)  # restored state is exact, not close
            state = record(store, "dp", r, twin_id)["extra"]["privacy"]["accountant"]
            assert state == accounting.accountant_state(reference)
        summary = store.get_json(RunLayout("dp").summary(2))
        assert summary["twin_epsilon"][twin_id] == eps[2]


def test_local_dp_record_holds_no_experience_metrics_unless_released(tmp_path: Path) -> None:
    quiet = tiny(tmp_path, "quiet", privacy={"mode": "local", "noise_multiplier": SIGMA})
    loud = tiny(tmp_path, "loud",
                privacy={"mode": "local", "noise_multiplier": SIGMA, "release_metrics": True})
    store = LocalStore(tmp_path / "store")
    for config in (quiet, loud):
        steps.init(store, config)
        steps.train(store, config.run_id or "", 0, ["twin-000"])

    assert record(store, "quiet", 0, "twin-000")["metrics"] == {}
    assert "charts/episodic_return" in record(store, "loud", 0, "twin-000")["metrics"]


def test_a_twin_refuses_to_train_when_its_accountant_state_is_gone(tmp_path: Path) -> None:
    config = tiny(tmp_path, privacy={"mode": "local", "noise_multiplier": SIGMA})
    store, layout = LocalStore(tmp_path / "store"), RunLayout("dp")
    steps.init(store, config)
    steps.train(store, "dp", 0, ["twin-000", "twin-001"])
    steps.aggregate(store, "dp", 0)
    tampered = record(store, "dp", 0, "twin-000")
    del tampered["extra"]["privacy"]
    store.put_json(layout.update_meta(0, "twin-000"), tampered)

    with pytest.raises(accounting.PrivacyError, match="would restart from zero"):
        steps.train(store, "dp", 1, ["twin-000"])
    assert not store.exists(layout.update_meta(1, "twin-000"))


def test_noise_is_not_reproducible_without_the_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accounting.NOISE_KEY_ENV)
    assert accounting.noise_seed("local", 1) != accounting.noise_seed("local", 1)
    monkeypatch.setenv(accounting.NOISE_KEY_ENV, "k")
    keyed = accounting.noise_seed
    assert keyed("local", 1) == keyed("local", 1) != keyed("local", 2)


# ------------------------------------------------------------------------------------ budget stop
def test_budget_stop_twins_drop_out_at_the_right_round_and_the_run_ends_cleanly(tmp_path: Path) -> None:
    # Budget for exactly two rounds of training per twin: between epsilon after 2 and after 3 rounds.
    eps2, eps3 = (accounting.epsilon(accountant_after(2 * n), 1e-6) for n in (2, 3))
    target = (eps2 + eps3) / 2
    config = tiny(tmp_path, privacy={"mode": "local", "noise_multiplier": SIGMA, "target_epsilon": target},
                  federation={"rounds": 6, "min_twins": 1})
    store, layout = LocalStore(tmp_path / "store"), RunLayout("dp")
    all_twins = ["twin-000", "twin-001", "twin-002"]
    steps.init(store, config)

    # Round 0: twin-002's pod never ran. Round 1: everyone. Round 2: twins 0 and 1 are out of budget.
    steps.train(store, "dp", 0, all_twins[:2], engine="fleet")
    assert steps.aggregate(store, "dp", 0)["continue"]
    steps.train(store, "dp", 1, all_twins, engine="fleet")
    assert steps.aggregate(store, "dp", 1)["continue"]  # twin-002 can still afford round 2: quorum 1
    records = steps.train(store, "dp", 2, all_twins, engine="fleet")
    summary = steps.aggregate(store, "dp", 2)

    skipped = {r.twin_id: r for r in records if r.extra.get("skipped")}
    assert sorted(skipped) == ["twin-000", "twin-001"]
    for twin_id, rec in skipped.items():
        assert rec.extra["skipped"] == accounting.SKIPPED_BUDGET and rec.num_samples == 0
        assert not store.exists(layout.update_weights(2, twin_id))  # no weights: nothing released
        assert rec.epsilon == accounting.epsilon(accountant_after(4), 1e-6) <= target  # unchanged
    assert summary["participants"] == ["twin-002"]
    assert [s["twin_id"] for s in summary["skipped"]] == ["twin-000", "twin-001"]
    assert "privacy budget" in summary["skipped"][0]["reason"] and summary["rejected"] == []
    assert summary["missing"] == []
    assert summary["twin_epsilon"]["twin-002"] == eps2 <= target
    # Nobody can afford round 3: the run stops cleanly, with the reason in the summary and the state.
    assert summary["continue"] is False and "privacy budget" in summary["stop_reason"]
    state = store.get_json(layout.state)
    assert state["training_complete"] and state["status"] == "running" and "quorum" in state["stop_reason"]
    steps.evaluate(store, "dp")
    assert steps.finish(store, "dp", "done")["stop_reason"] == summary["stop_reason"]

    # Nothing stored is lost: every object reads back with its sha256, every round's records are there.
    for key in store.list(layout.prefix):
        store.get_bytes(key)
    for r, expected in enumerate([all_twins[:2], all_twins, all_twins]):
        assert update_twin_ids(store, layout, r) == expected
        assert all(store.exists(layout.update_meta(r, t)) for t in expected)
        assert store.exists(layout.global_model(r + 1)) and store.exists(layout.summary(r))

    # Were round 3 started anyway, every twin would skip it, and its aggregation is not played: training
    # is complete, so the run is left exactly as it is (what a workflow engine's stray round sees).
    assert all(r.extra.get("skipped") for r in steps.train(store, "dp", 3, all_twins, engine="fleet"))
    before = store.get_bytes(layout.state)
    assert steps.aggregate(store, "dp", 3)["played"] is False
    assert store.get_bytes(layout.state) == before and not store.exists(layout.summary(3))


def test_a_round_whose_trained_twins_all_skipped_fails_its_quorum_saying_why(tmp_path: Path) -> None:
    eps2, eps3 = (accounting.epsilon(accountant_after(2 * n), 1e-6) for n in (2, 3))
    config = tiny(tmp_path, privacy={"mode": "local", "noise_multiplier": SIGMA,
                                     "target_epsilon": (eps2 + eps3) / 2},
                  federation={"rounds": 6, "min_twins": 1})
    store, layout = LocalStore(tmp_path / "store"), RunLayout("dp")
    steps.init(store, config)
    for r, twins in enumerate([["twin-000", "twin-001"], ["twin-000", "twin-001", "twin-002"]]):
        steps.train(store, "dp", r, twins, engine="fleet")
        assert steps.aggregate(store, "dp", r)["continue"]
    # Round 2: twins 0 and 1 are out of budget and skip; twin-002's pod never ran.
    assert all(r.extra.get("skipped") for r in steps.train(store, "dp", 2, ["twin-000", "twin-001"]))
    with pytest.raises(QuorumError, match=r"below the quorum of 1 .*; skipped twin-000: privacy budget"):
        steps.aggregate(store, "dp", 2)
    assert "privacy budget" in store.get_json(layout.state)["reason"]


def test_run_with_a_small_budget_stops_early_and_finishes(tmp_path: Path) -> None:
    target = accounting.epsilon(accountant_after(2 * 2), 1e-6) * 1.01  # two rounds fit, not three
    config = tiny(tmp_path, privacy={"mode": "local", "noise_multiplier": SIGMA, "target_epsilon": target},
                  federation={"rounds": 5})

    result = runner.run(config, progress=False, report=True)

    store = LocalStore(tmp_path / "store")
    state = store.get_json(RunLayout("dp").state)
    assert store.exists(RunLayout("dp").report("epsilon.png"))  # the report plots epsilon per twin
    assert result.rounds_played == 2 and state["status"] == "done"
    assert "privacy budget" in state["stop_reason"]
    assert np.isfinite(result.heldout_return)
    assert max(store.get_json(RunLayout("dp").summary(1))["twin_epsilon"].values()) <= target


def test_mlflow_metrics_carry_epsilon_per_twin_and_server_epsilon() -> None:
    summary = {"validation_return": 1.0, "participants": ["a"], "rejected": [], "num_samples": 4,
               "twin_metrics": {"a": {}}, "twin_epsilon": {"a": 2.5},
               "skipped": [{"twin_id": "b", "reason": "privacy budget"}], "privacy": {"epsilon": 1.5}}

    assert tracking.twin_round_metrics(summary, "a") == {"privacy/epsilon": 2.5}
    assert tracking.round_metrics(summary)["privacy/server_epsilon"] == 1.5
    assert tracking.round_metrics(summary)["fed/skipped"] == 1.0


# ------------------------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"privacy": {"mode": "local"}}, "needs privacy.target_epsilon"),
        ({"privacy": {"mode": "local", "target_epsilon": 0}}, "privacy.target_epsilon"),
        ({"privacy": {"mode": "local", "target_epsilon": 3, "delta": 0.02}},
         r"privacy.delta \(0.02\) must be below 1/num_samples = 1/64"),
        ({"privacy": {"mode": "central", "target_epsilon": 3, "delta": 0.01}}, "needs privacy.clip_norm"),
        ({"privacy": {"mode": "central", "target_epsilon": 3, "delta": 0.01, "clip_norm": 1},
          "federation": {"strategy": "median"}}, "strategy must be one of fedavg"),
        ({"privacy": {"mode": "central", "target_epsilon": 3, "clip_norm": 1, "delta": 0.5}},
         r"below 1/fleet.count = 1/3"),
        ({"privacy": {"mode": "local", "accountant": "gdp", "target_epsilon": 3}}, "privacy.accountant"),
    ],
)
def test_invalid_privacy_config_is_one_clear_error(tmp_path: Path, changes: dict[str, Any], message: str
                                                   ) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        tiny(tmp_path, **changes)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("privacy_cfg", "message"),
    [
        ({"mode": "local", "target_epsilon": 0.01, "noise_multiplier": 0.5},
         "spends epsilon .* in the first round, above privacy.target_epsilon 0.01"),
        ({"mode": "local", "target_epsilon": 0.1}, "smallest epsilon the rdp accountant can certify"),
    ],
)
def test_unreachable_budget_fails_at_init_before_anything_is_written(
    tmp_path: Path, privacy_cfg: dict[str, Any], message: str
) -> None:
    config = tiny(tmp_path, privacy=privacy_cfg)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ConfigError, match=message):
        steps.init(store, config)
    assert store.list("") == []


def test_cli_reports_a_bad_privacy_config_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    path = write_tiny_config(tmp_path, **{"privacy.mode": "local", "store": str(tmp_path / "store")})

    result = fedtwin("run", "--config", str(path), "--run-id", "bad", env=clean_env())

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "privacy.target_epsilon" in result.stderr
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.json"))


# ------------------------------------------------------------------------------------- central DP
def test_central_noise_std_is_multiplier_times_clip_over_participants() -> None:
    rng = np.random.default_rng(0)
    global_params = rng.normal(size=200_000).astype(np.float32)
    updates = np.repeat(global_params[None, :], 4, axis=0)  # every delta 0: what is left is the noise
    z, clip, n = 1.3, 0.8, 4

    new, info = central_dp.dp_fedavg(global_params, updates, clip, z, n, np.random.default_rng(123))

    measured = float(np.std(new.astype(np.float64) - global_params))
    assert info["noise_std"] == pytest.approx(z * clip / n)
    assert measured == pytest.approx(z * clip / n, rel=0.01)  # std error of the estimate: ~0.16 %


def test_central_clipping_and_fixed_denominator() -> None:
    global_params = np.zeros(3, dtype=np.float32)
    updates = np.array([[3.0, 0, 0], [0, 0.5, 0]], dtype=np.float32)  # norms 3 (clipped to 1) and 0.5

    new, info = central_dp.dp_fedavg(global_params, updates, 1.0, 0.0, 4, np.random.default_rng(0))

    np.testing.assert_allclose(new, [1.0 / 4, 0.5 / 4, 0.0])  # sum of clipped deltas / fixed N = 4
    assert info["clipped"] == 1


def test_central_dp_run_tracks_server_epsilon_over_rounds(tmp_path: Path) -> None:
    config = tiny(tmp_path, privacy={"mode": "central", "noise_multiplier": SIGMA, "clip_norm": 0.5,
                                     "delta": 1e-2}, federation={"rounds": 3})

    runner.run(config, progress=False, report=False)

    store = LocalStore(tmp_path / "store")
    infos = [store.get_json(RunLayout("dp").summary(r))["privacy"] for r in range(3)]
    for r, info in enumerate(infos):
        reference = accountant_after(r + 1, rate=1.0)
        assert info["epsilon"] == accounting.epsilon(reference, 1e-2)
        assert info["noise_std"] == pytest.approx(SIGMA * 0.5 / 3) and info["denominator"] == 3
    assert infos[0]["epsilon"] < infos[1]["epsilon"] < infos[2]["epsilon"]


def test_central_budget_ends_the_run(tmp_path: Path) -> None:
    config = tiny(tmp_path, federation={"rounds": 3},
                  privacy={"mode": "central", "target_epsilon": 4.0, "clip_norm": 0.5, "delta": 1e-2})

    runner.run(config, progress=False, report=False)

    store = LocalStore(tmp_path / "store")
    last = store.get_json(RunLayout("dp").summary(2))["privacy"]
    assert last["epsilon"] <= 4.0 and last["noise_multiplier"] > 0  # calibrated for all 3 rounds


# --------------------------------------------------------------------------- pool vs fleet engines
def test_pool_and_fleet_engines_give_the_same_dp_updates(tmp_path: Path) -> None:
    twins = ["twin-000", "twin-001", "twin-002"]
    out: dict[str, list[np.ndarray]] = {}
    for engine in ("pool", "fleet"):
        config = tiny(tmp_path / engine, privacy={"mode": "local", "target_epsilon": 5.0},
                      federation={"rounds": 2})
        store = LocalStore(tmp_path / engine / "store")
        steps.init(store, config)
        for r in range(2):
            train_round(store, "dp", r, twins, engine, 1)
            steps.aggregate(store, "dp", r)
        layout = RunLayout("dp")
        out[engine] = [params_from_bytes(store.get_bytes(layout.update_weights(1, t)))[0] for t in twins]
        out[engine + "-eps"] = [np.array(record(store, "dp", 1, t)["epsilon"]) for t in twins]

    for pool, fleet in zip(out["pool"], out["fleet"], strict=True):
        np.testing.assert_allclose(pool, fleet, rtol=0, atol=1e-5)
    assert out["pool-eps"] == out["fleet-eps"]



def test_a_damaged_earlier_record_of_a_dp_twin_is_refused_with_advice_that_keeps_its_epsilon(tmp_path: Path
                                                                                            ) -> None:
    """Deleting the record (the generic advice for an update) would restart the twin's accountant from
    an older state and undercount its epsilon: the record must be restored instead."""
    config = tiny(tmp_path, privacy={"mode": "local", "noise_multiplier": SIGMA})
    store = LocalStore(config.store)
    init = steps.init(store, config)
    steps.train(store, "dp", 0, init.twin_ids, engine="fleet")
    steps.aggregate(store, "dp", 0)
    path = store.root / RunLayout("dp").update_meta(0, "twin-001")
    path.write_bytes(path.read_bytes() + b" ")  # still the same JSON, but the bytes no longer match

    with pytest.raises(accounting.PrivacyError) as err:
        steps.train(store, "dp", 1, ["twin-001"])

    message = str(err.value)
    assert "twin 'twin-001': its round 0 record" in message and "is corrupt" in message
    assert message.endswith("restore it from a backup: it holds the twin's privacy accountant, and without "
                            "it the twin's epsilon would be undercounted")
