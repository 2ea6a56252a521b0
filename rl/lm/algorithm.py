"""The training step of LM post-training: generate completions, score them, update,
broadcast. GRPO and LM-PPO differ only in their learner (rl/lm/learner.py subclasses)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.batch import concat_batches
from rlfleet.rl.checkpoint import load_checkpoint
from rlfleet.rl.core import Weights
from rlfleet.rl.lm.config import LMConfig
from rlfleet.rl.lm.generator import REFERENCE_ID, REFERENCE_PREFIX, GeneratorRunnerFactory


class LMAlgorithm(Algorithm):
    config: LMConfig
    runner_factory_class = GeneratorRunnerFactory

    def setup(self) -> None:
        # ``reference_in_runners``: the reference's weights, taken from the learner once (and
        # again after a restore); every broadcast from the first on carries them
        self.broadcast_reference: dict[str, Any] | None = None
        self.references_sent = 0
        self.text_env = self.runner_factory.text_env  # resolved once, by the factory
        self.tokens_generated = 0
        self.tokens_trained = 0  # generated tokens less those of dropped (stale) completions
        self.num_stale_completions = 0

    def collect_batch(self) -> tuple[dict[str, Any] | None, dict[str, float]]:
        """One round of sampling: every runner's completions, one row each (None when no
        fragment arrived), and metrics of the collection. GRPO's dynamic sampling
        overrides it.

        With ``async_rollouts`` the round is what has arrived once it holds as many fresh
        completions as a synchronous round (every runner's ``prompts_per_runner`` x
        ``group_size``): the learner takes a step per round's worth, as in sync mode,
        instead of one per fragment, whose many small steps would age every completion
        in flight by several versions."""
        c = self.config
        if not c.async_rollouts:
            fragments = self.sample()
            self.tokens_generated += sum(int(f.batch["completion_mask"].sum()) for f in fragments)
        else:
            fragments, rows = [], 0
            target = c.prompts_per_runner * c.group_size * self.env_runner_group.size
            while rows < target:
                arrived = self.env_runner_group.sample_async()  # waits for at least one fragment
                self.record(arrived)
                for f in arrived:
                    self.tokens_generated += int(f.batch["completion_mask"].sum())
                    if self.weights_version - f.weights_version > c.max_staleness:
                        self.num_stale_completions += len(f.batch["rewards"])
                    else:
                        fragments.append(f)
                        rows += len(f.batch["rewards"])
        if not fragments:
            return None, {}
        return concat_batches([f.batch for f in fragments], axis=0), {}

    def training_step(self) -> dict[str, float]:
        t0, generated = time.perf_counter(), self.tokens_generated
        batch, collected = self.collect_batch()
        if batch is None:
            return {**collected, "num_stale_completions": self.num_stale_completions,
                    "tokens_total": self.tokens_generated, "tokens_trained_total": self.tokens_trained}
        tokens = self.tokens_generated - generated  # every generated token, kept or not
        t_learn = time.perf_counter()
        metrics = {**collected, **self.learner_group.update(batch, env_steps=self.env_steps).metrics}
        if self.config.async_rollouts:
            self.publish_weights()
        else:
            self.sync_weights()
        trained = float(batch["completion_mask"].sum())
        self.tokens_trained += int(trained)
        metrics.update({
            "response_length_mean": trained / len(batch["rewards"]),
            "tokens_per_s": tokens / max(t_learn - t0, 1e-9),  # generated
            "train_tokens_per_s": trained / max(time.perf_counter() - t_learn, 1e-9),
            "tokens_total": self.tokens_generated,
            "tokens_trained_total": self.tokens_trained,
            "num_stale_completions": self.num_stale_completions,
        })
        return metrics

    def acting_weights(self, weights: Weights) -> Weights:
        """The policy's weights, and with ``reference_in_runners`` the reference's under
        ``reference.`` (the runners compute its log-probs; rl/lm/generator.py)."""
        if not (self.config.reference_in_runners and self.config.kl_coef > 0):
            return weights
        if self.broadcast_reference is None:
            ref = self.learner_group.ask("reference_weights")
            self.references_sent += 1  # tells the runners to load it (once per reference)
            self.broadcast_reference = {REFERENCE_ID: np.array(self.references_sent),
                              **{REFERENCE_PREFIX + k: v for k, v in ref.items()}}
        return {**weights, **self.broadcast_reference}

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state["lm"] = {"tokens_generated": self.tokens_generated, "tokens_trained": self.tokens_trained,
                       "num_stale_completions": self.num_stale_completions}
        return state

    def restore(self, path: str) -> None:
        self.broadcast_reference = None  # the checkpoint's reference reaches the runners with the broadcast in restore
        super().restore(path)
        counters = load_checkpoint(path).get("lm", {})
        self.tokens_generated = counters.get("tokens_generated", 0)
        self.tokens_trained = counters.get("tokens_trained", self.tokens_generated)
        self.num_stale_completions = counters.get("num_stale_completions", 0)

    @classmethod
    def from_checkpoint(cls, path: str, **overrides: Any) -> "LMAlgorithm":
        # The checkpoint holds the trained policy: no warm-up to run first.
        return super().from_checkpoint(path, **{"warmup_steps": 0, **overrides})

    def complete(self, prompts: list[str] | str, *, temperature: float = 0.0) -> list[str] | str:
        """Completions of ``prompts`` by the current policy (greedy by default); one
        prompt given as a string gets one completion back."""
        if isinstance(prompts, str):
            return self.complete([prompts], temperature=temperature)[0]
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"complete() takes a prompt string or a list of them, got {prompts!r}")
        tok = self.text_env.tokenizer
        module = self.module_spec.build()
        module.load_state_dict({k: torch.from_numpy(v) for k, v in self.learner_group.get_weights().items()})
        with torch.inference_mode():
            out = module.eval().generate([tok.encode(p) for p in prompts], max_new_tokens=self.text_env.max_new_tokens,
                                         temperature=temperature, eos_id=tok.eos_id, pad_id=tok.pad_id)
        return [tok.decode(row.tolist()) for row in out["sequences"][:, -self.text_env.max_new_tokens:]]
