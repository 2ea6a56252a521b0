"""GRPO's training step: generate groups of completions, score them, update with
group-relative advantages and a KL term to the frozen reference, broadcast."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from rlfleet.algorithms.grpo.config import GRPOConfig
from rlfleet.algorithms.grpo.learner import GRPOLearner
from rlfleet.envs import EnvNotFoundError
from rlfleet.envs.text import TextEnvSpec
from rlfleet.envs.text_tasks import make_text_env
from rlfleet.rl.algorithm import Algorithm
from rlfleet.rl.batch import concat_batches
from rlfleet.rl.config import ConfigError
from rlfleet.rl.lm.generator import GeneratorRunner
from rlfleet.rl.lm.gpt import GPTConfig


class GeneratorRunnerFactory:
    """Picklable ``factory(index) -> GeneratorRunner`` for in-process or Ray runners."""

    def __init__(self, config: GRPOConfig, lm_spec: GPTConfig) -> None:
        self.config, self.lm_spec = config, lm_spec

    def __call__(self, index: int) -> GeneratorRunner:
        c = self.config
        torch.set_num_threads(c.torch_threads)
        return GeneratorRunner(
            text_env=c.env, env_config=c.env_config, lm_spec=self.lm_spec, prompts_per_sample=c.prompts_per_runner,
            group_size=c.group_size, temperature=c.temperature, top_k=c.top_k, seed=c.seed + 1000 * index, index=index,
        )


def supervised_sequences(pairs: list[tuple[str, str]], tokenizer: Any, length: int) -> tuple[np.ndarray, ...]:
    """(prompt, answer) pairs -> right-padded token rows, their attention mask, and the
    next-token loss mask (N, length-1) that covers the answer and its eos only."""
    n = len(pairs)
    seq = np.full((n, length), tokenizer.pad_id, np.int64)
    attn = np.zeros((n, length), np.int64)
    loss_mask = np.zeros((n, length - 1), np.float32)
    for i, (prompt, answer) in enumerate(pairs):
        p = tokenizer.encode(prompt)
        a = tokenizer.encode(answer, add_bos=False) + [tokenizer.eos_id]
        row = (p + a)[:length]
        seq[i, : len(row)] = row
        attn[i, : len(row)] = 1
        loss_mask[i, len(p) - 1 : len(row) - 1] = 1.0  # positions predicting the answer tokens
    return seq, attn, loss_mask


class GRPO(Algorithm):
    config: GRPOConfig
    config_class = GRPOConfig
    learner_class = GRPOLearner

    def setup_env(self) -> Any:
        c = self.config
        try:
            self.text_env = c.env if isinstance(c.env, TextEnvSpec) else make_text_env(c.env, c.env_config)
        except EnvNotFoundError:
            raise
        except ValueError as e:  # a bad env_config, prompt file or reward: bad input, one line
            raise ConfigError(f"env {c.env!r}: {e}") from None
        if c.hf_model:
            from rlfleet.rl.lm.hf import HFSpec  # optional extra: imported only when asked for

            return HFSpec(path=c.hf_model)
        return GPTConfig(
            vocab_size=self.text_env.tokenizer.vocab_size,
            block_size=self.text_env.max_prompt_tokens + self.text_env.max_new_tokens,
            n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        )

    def make_runner_factory(self) -> GeneratorRunnerFactory:
        return GeneratorRunnerFactory(self.config, self.module_spec)

    def __init__(self, config: GRPOConfig) -> None:
        super().__init__(config)
        self.warm_start()
        self.learner_group.call("freeze_reference")
        self.sync_weights()
        self.tokens_generated = 0

    def warm_start(self) -> None:
        """A short supervised phase so RL starts from a model that writes the answer format;
        cached as ``warmup.pt`` in the logdir, so a second run starts from it at once."""
        c = self.config
        cache = os.path.join(c.logdir, "warmup.pt") if c.logdir else None
        if cache and os.path.exists(cache):
            self.learner_group.call("set_weights", torch.load(cache, weights_only=True))
            return
        if not c.warmup_steps or self.text_env.warmup_examples is None:
            return
        pairs = self.text_env.warmup_examples(4096, np.random.default_rng(c.seed))
        length = self.text_env.max_prompt_tokens + self.text_env.max_new_tokens
        seq, attn, mask = supervised_sequences(pairs, self.text_env.tokenizer, length)
        t0 = time.perf_counter()
        loss = self.learner_group.call("warmup", seq, attn, mask, c.warmup_steps)[0]
        if c.log_to_console:
            print(f"warm-up: {c.warmup_steps} supervised steps, loss {loss:.3f}, {time.perf_counter() - t0:.1f} s", flush=True)
        if cache:
            os.makedirs(c.logdir, exist_ok=True)
            torch.save({k: torch.from_numpy(v) for k, v in self.learner_group.get_weights().items()}, cache)

    def training_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        fragments = self.sample()
        if not fragments:
            return {}
        batch = concat_batches([f.batch for f in fragments], axis=0)  # one row per completion
        tokens = int(batch["completion_mask"].sum())
        self.tokens_generated += tokens
        t_learn = time.perf_counter()
        metrics = self.learner_group.call("update_from_completions", batch, self.env_steps)[0]
        self.sync_weights()
        n_rows = len(batch["rewards"])
        metrics.update({
            "response_length_mean": tokens / n_rows,
            "tokens_per_s": tokens / max(t_learn - t0, 1e-9),  # generated
            "train_tokens_per_s": tokens / max(time.perf_counter() - t_learn, 1e-9),
            "tokens_total": self.tokens_generated,
        })
        return metrics

    @classmethod
    def from_checkpoint(cls, path: str, **overrides: Any) -> "GRPO":
        # The checkpoint holds the trained policy: no warm-up to run first.
        return super().from_checkpoint(path, **{"warmup_steps": 0, **overrides})

    def complete(self, prompts: list[str], *, temperature: float = 0.0) -> list[str]:
        """Completions of ``prompts`` by the current policy (greedy by default)."""
        tok = self.text_env.tokenizer
        module = self.learner_group.learner.module if self.learner_group.learner is not None else None
        if module is None:
            module = self.module_spec.build()
            module.load_state_dict({k: torch.from_numpy(v) for k, v in self.learner_group.get_weights().items()})
        with torch.inference_mode():
            out = module.generate([tok.encode(p) for p in prompts], max_new_tokens=self.text_env.max_new_tokens,
                                  temperature=temperature, eos_id=tok.eos_id, pad_id=tok.pad_id)
        return [tok.decode(row.tolist()) for row in out["sequences"][:, -self.text_env.max_new_tokens:]]

    def evaluate(self) -> dict[str, float]:
        """Greedy answers to ``evaluation_num_episodes`` held-out prompts: mean reward."""
        if self.eval_runner is None:
            self.eval_runner = self.runner_factory(999)  # its own seed range, apart from the fleet's
        self.eval_runner.set_weights(self.learner_group.get_weights(), self.weights_version)
        return self.eval_runner.evaluate(self.config.evaluation_num_episodes)
