"""Both engines on a GPU: the CPU's updates to float tolerance, DP included, and a whole run.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
`pytest tests/test_cuda.py`. The rest of the suite checks the CPU paths and the clear error for
`--device cuda` without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtwin.config import TrainConfig
from fedtwin.learn import dp_sgd
from fedtwin.learn.train import LocalResult, policy_spec, train_twins
from fedtwin.policy.layout import params_from_bytes
from fedtwin.policy.network import init_params
from fedtwin.sim.twins import make_fleet
from fedtwin.store import LocalStore, RunLayout
from tests.helpers import fedtwin, write_tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

torch.set_num_threads(1)

CONFIGS = [TrainConfig(num_envs=2, num_steps=32, updates=2, epochs=2, minibatches=2),
           TrainConfig(algo="reinforce", num_envs=2, num_steps=32, updates=2)]
IDS = ["ppo", "reinforce"]
TOLERANCE = 1e-4
"""float32 on two devices: the same maths in a different summation order, over a few optimizer steps."""


def fleet(cfg: TrainConfig, device: str, dp: dp_sgd.LocalDP | None = None) -> list[LocalResult]:
    twins, seeds = make_fleet(3, seed=7).train, [11, 22, 33]
    return train_twins(init_params(policy_spec(cfg), 0), twins, seeds, cfg, device, dp)


def assert_same_updates(got: list[LocalResult], expected: list[LocalResult], atol: float) -> None:
    for g, e in zip(got, expected, strict=True):
        assert g.num_samples == e.num_samples
        np.testing.assert_allclose(g.params, e.params, rtol=0, atol=atol)
        assert g.metrics.keys() == e.metrics.keys()
        for tag in e.metrics:
            assert g.metrics[tag] == pytest.approx(e.metrics[tag], rel=1e-3, abs=atol), tag


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_fleet_engine_on_cuda_gives_the_cpu_updates(cfg: TrainConfig) -> None:
    cpu, gpu = fleet(cfg, "cpu"), fleet(cfg, "cuda")

    assert_same_updates(gpu, cpu, TOLERANCE)
    assert not np.allclose(gpu[0].params, gpu[1].params, atol=1e-3)  # three different twins


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_dp_sgd_on_cuda_clips_like_the_cpu_and_noises_reproducibly(cfg: TrainConfig) -> None:
    """Clipping and Poisson sampling equal the CPU's (noise off); with noise, the same seed gives the
    same update. The noise itself comes from a CUDA generator (another stream than the CPU's)."""
    rate = 1 / cfg.minibatches if cfg.algo == "ppo" else 1.0

    def dp(sigma: float, device: str) -> dp_sgd.LocalDP:
        return dp_sgd.LocalDP(sigma, 0.5, rate, [dp_sgd.noise_generator(100 + i, device) for i in range(3)])

    assert_same_updates(fleet(cfg, "cuda", dp(0.0, "cuda")), fleet(cfg, "cpu", dp(0.0, "cpu")), TOLERANCE)
    noisy = dp(1.0, "cuda")
    first, again = fleet(cfg, "cuda", noisy), fleet(cfg, "cuda", dp(1.0, "cuda"))
    assert_same_updates(again, first, 1e-5)
    assert not np.allclose(first[0].params, fleet(cfg, "cuda")[0].params, atol=1e-3)  # noise is there
    steps_per_round = cfg.updates * (cfg.epochs * cfg.minibatches if cfg.algo == "ppo" else 1)
    assert noisy.accountants[0].history == [(1.0, rate, steps_per_round)]


@pytest.mark.parametrize("engine", ["fleet", "pool"])
def test_fedtwin_run_on_cuda_gives_the_cpu_run(tmp_path, engine: str) -> None:
    config = write_tiny_config(tmp_path)
    store = tmp_path / "store"
    common = ["run", "--config", str(config), "--store", str(store), "--engine", engine, "--workers", "2",
              "--json"]

    fedtwin(*common, "--run-id", "gpu", "--device", "cuda", check=True)
    fedtwin(*common, "--run-id", "cpu", "--device", "cpu", check=True)

    local = LocalStore(store)
    gpu, cpu = (params_from_bytes(local.get_bytes(RunLayout(r).global_model(2)))[0] for r in ("gpu", "cpu"))
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=TOLERANCE)
    meta = local.get_json(RunLayout("gpu").update_meta(1, "twin-001"))
    assert meta["engine"] == engine
