"""A rollout that stays on the device: torch CartPole twins, the fleet's batched policy, preallocated buffers.

`fedtwin.learn.rollout.collect_rollout` steps the NumPy env and so moves observations to the device
and actions back every step; on a GPU that host round-trip and the CPU physics bound the fleet
engine. `DeviceCollector` keeps everything on one device: the env is
`fedtwin.sim.cartpole_torch.TorchTwinCartPole`, the policy is the fleet engine's `StackedPolicy`
(K twins' parameters stacked, one batched product per layer), actions are sampled by inverse CDF
(`sample_actions`, as the host rollout) from the env's counter-based stream (so a seed reproduces
the rollout, on any device, without a torch generator), and every step writes into buffers
allocated once. Nothing is read back to the host until `to_rollout()`, once per rollout; with no
data-dependent shapes, `collect` can be captured as a CUDA graph (`capture`).

This is a separate backend: its random streams are not the NumPy env's, so its rollouts (and what is
trained from them) are statistically, not bit for bit, those of the default path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedtwin.learn.batched import Params, StackedPolicy
from fedtwin.learn.rollout import Rollout, sample_actions
from fedtwin.sim.cartpole_torch import (
    STREAM_POLICY,
    STREAM_SHUFFLE,
    TorchTwinCartPole,
    counter_bits,
    to_uniform,
)

OBS_DIM = 4


@dataclass
class DeviceRollout:
    """One rollout of K twins x E sub-envs for T steps on the device, laid out [T, K, E, ...] as `Rollout`."""

    obs: torch.Tensor
    """[T, K, E, D] float32 observation each action was taken from."""
    actions: torch.Tensor
    """[T, K, E] int64."""
    logprobs: torch.Tensor
    """[T, K, E] float32 log-probability of the action under the behaviour policy."""
    values: torch.Tensor
    """[T, K, E] float32 critic value of `obs` (zeros for an actor-only policy)."""
    rewards: torch.Tensor
    """[T, K, E] float32."""
    next_obs: torch.Tensor
    """[T, K, E, D] the observation the step led to (the final one where an episode ended)."""
    terminated: torch.Tensor
    """[T, K, E] float32 1.0 where the episode reached a terminal state."""
    dones: torch.Tensor
    """[T, K, E] float32 1.0 where the episode ended (terminated or truncated)."""
    episode_lengths: torch.Tensor
    """[T, K, E] int32 length of the episode that ended at the step, 0 where none ended."""

    def episode_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per twin, on the device: (episodes finished [K], their mean length [K], NaN where none)."""
        ended = self.episode_lengths > 0
        count = ended.sum(dim=(0, 2))
        total = self.episode_lengths.sum(dim=(0, 2), dtype=torch.float64)
        return count, (total / count).to(torch.float32)

    def to_rollout(self, episodes: bool = True) -> Rollout:
        """The trainers' `Rollout` (tensors shared, not copied); its episode lists cost one host read.

        Episodes are listed per twin in (step, sub-env) order, as the host rollout appends them;
        `episodes=False` leaves the lists empty (the updates do not read them; `episode_stats` has them).
        """
        t, k, e = self.rewards.shape
        per_twin: list[list[int]] = [[] for _ in range(k)]
        if episodes:
            lengths = self.episode_lengths.permute(1, 0, 2).reshape(k, t * e).cpu().numpy()
            per_twin = [row[row > 0].tolist() for row in lengths]
        return Rollout(obs=self.obs, actions=self.actions, logprobs=self.logprobs, rewards=self.rewards,
                       next_obs=self.next_obs, terminated=self.terminated, dones=self.dones,
                       episode_returns=[[float(v) for v in twin] for twin in per_twin],
                       episode_lengths=per_twin)


class DeviceCollector:
    """Collects `num_steps` steps of every sub-env of `env` with `net`, into buffers allocated once.

    The buffers are reused: a `DeviceRollout` is valid until the next `collect` (clone what must be
    kept). The observation to continue from is kept here too, so consecutive rollouts chain.
    """

    def __init__(self, env: TorchTwinCartPole, net: StackedPolicy, num_steps: int) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        self.env, self.net, self.num_steps = env, net, num_steps
        self.k, self.e = len(env.twins), env.envs_per_twin
        dev = env.device
        shape = (num_steps, self.k, self.e)

        def buf(dtype: torch.dtype, *extra: int) -> torch.Tensor:
            return torch.zeros(*shape, *extra, dtype=dtype, device=dev)

        self.rollout = DeviceRollout(
            obs=buf(torch.float32, OBS_DIM), actions=buf(torch.int64), logprobs=buf(torch.float32),
            values=buf(torch.float32), rewards=buf(torch.float32), next_obs=buf(torch.float32, OBS_DIM),
            terminated=buf(torch.float32), dones=buf(torch.float32), episode_lengths=buf(torch.int32))
        self.obs = torch.zeros(env.num_envs, OBS_DIM, dtype=torch.float32, device=dev)
        self.counter = torch.zeros((), dtype=torch.int64, device=dev)
        """Steps sampled so far: the policy stream's counter."""
        self.shuffles = torch.zeros((), dtype=torch.int64, device=dev)
        """Orderings drawn so far: the shuffle stream's counter."""
        self._has_critic = net.model.critic is not None
        self._graph: torch.cuda.CUDAGraph | None = None

    def reset(self, seed: int | list[int] | None = None) -> None:
        """Restart the env (see `TorchTwinCartPole.reset`) and the policy stream."""
        self.obs.copy_(self.env.reset(seed=seed))
        self.counter.zero_()
        self.shuffles.zero_()
        self._graph = None

    def uniforms(self) -> torch.Tensor:
        """This step's [K, E] action-sampling uniforms: the env's per-sub-env keys on the policy stream."""
        assert self.env.keys is not None, "call reset() first"
        bits = counter_bits(self.env.keys, STREAM_POLICY, self.counter, 1)[0]
        return to_uniform(bits, torch.float32).view(self.k, self.e)

    def permutations(self, batch: int) -> torch.Tensor:
        """[K, batch] int64: a random ordering of each twin's batch for one PPO epoch, drawn on the device
        from twin k's own key (the update's host generators would cost a Python call per twin per epoch)."""
        assert self.env.keys is not None, "call reset() first"
        twin_keys = self.env.keys.view(self.k, self.e)[:, 0]
        bits = counter_bits(twin_keys, STREAM_SHUFFLE, self.shuffles, batch)  # [batch, K]
        self.shuffles.add_(1)
        return torch.argsort(bits.T, dim=1)  # distinct 64-bit words: a uniform permutation

    @torch.no_grad()
    def _collect(self, params: Params) -> None:
        ro, net, k, e = self.rollout, self.net, self.k, self.e
        for t in range(self.num_steps):
            obs = self.obs.view(k, e, OBS_DIM)
            ro.obs[t].copy_(obs)
            logits = net.logits(params, obs)
            action = sample_actions(logits, self.uniforms().to(logits.dtype))
            ro.actions[t].copy_(action)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, action.unsqueeze(-1)).squeeze(-1)
            ro.logprobs[t].copy_(logp)
            if self._has_critic:
                ro.values[t].copy_(net.value(params, obs))
            step = self.env.step(action.view(-1))
            ro.rewards[t].copy_(step.reward.view(k, e))
            ro.next_obs[t].copy_(step.final_obs.view(k, e, OBS_DIM))
            ro.terminated[t].copy_(step.terminated.view(k, e))
            ro.dones[t].copy_((step.terminated | step.truncated).view(k, e))
            ro.episode_lengths[t].copy_(step.episode_length.view(k, e))
            self.obs.copy_(step.obs)
            self.counter.add_(1)

    def collect(self, params: Params) -> DeviceRollout:
        """Step every sub-env `num_steps` times with the policy `params` ([K, ...] each); no host sync.

        After `capture(params)`, replays the CUDA graph instead (`params` must be the same tensors,
        updated in place, as an optimizer does).
        """
        if self.env.keys is None:
            raise RuntimeError("call reset() before collect()")
        if self._graph is not None:
            self._graph.replay()
        else:
            self._collect(params)
        return self.rollout

    def capture(self, params: Params, warmup: int = 2) -> None:
        """Record `collect(params)` as one CUDA graph (CUDA only): later collects replay it.

        The warm-up collects (on a side stream, as torch requires) advance the env and the stream
        like ordinary collects. A replay launches the whole rollout at once: no Python per step.
        """
        if self.env.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA env, this one is on {self.env.device}")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._collect(params)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._collect(params)
        self._graph = graph  # the capture itself ran nothing: the first replay is the next rollout

