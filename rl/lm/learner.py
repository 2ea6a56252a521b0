"""The learner base of LM post-training (GRPO, LM-PPO): the policy, a frozen reference
copy for the KL term, and the cached supervised warm-up that teaches the answer format
before RL starts."""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import numpy as np
import torch

from rlfleet.envs.text import MultiTurnSpec
from rlfleet.rl.learner import Learner, TensorBatch, numpy_weights
from rlfleet.rl.lm.config import LMConfig
from rlfleet.rl.lm.generator import resolve_text_env
from rlfleet.rl.optim import Adam


def supervised_sequences(pairs: list[tuple[str, Any]], tokenizer: Any, length: int,
                         chat: Any = None) -> tuple[np.ndarray, ...]:
    """(prompt, answer) pairs -> right-padded token rows, their attention mask, and the
    next-token loss mask (N, length-1) that covers the answer and its eos only. An answer
    may be a conversation, ``[(text, trained), ...]`` (envs/text.py ``Segments``): the
    trained pieces (the policy's turns, each closed by eos) are learned, the replies read.
    ``chat`` (rl/lm/hf.py ChatTurns) renders a conversation's prompt and replies with the
    tokenizer's chat template, as the rollouts do."""
    n = len(pairs)
    seq = np.full((n, length), tokenizer.pad_id, np.int64)
    attn = np.zeros((n, length), np.int64)
    loss_mask = np.zeros((n, length - 1), np.float32)
    for i, (prompt, answer) in enumerate(pairs):
        conversation = not isinstance(answer, str)
        if chat is not None and conversation:
            row, learned = list(tokenizer.encode(chat.first(prompt), add_bos=False)), []
        else:
            row, learned = list(tokenizer.encode(prompt)), []
        for text, trained in (answer if conversation else [(answer, True)]):
            if chat is not None and conversation and not trained:
                text = chat.after_turn(text)
            ids = tokenizer.encode(text, add_bos=False) + ([tokenizer.eos_id] if trained else [])
            learned += [trained] * len(ids)
            row += ids
        start = len(row) - len(learned)
        row = row[:length]
        seq[i, : len(row)] = row
        attn[i, : len(row)] = 1
        for t, trained in enumerate(learned[: len(row) - start]):  # position start+t-1 predicts token start+t
            loss_mask[i, start + t - 1] = float(trained)
    return seq, attn, loss_mask


class LMLearner(Learner):
    config: LMConfig

    def __init__(self, *, module_spec: Any, config: LMConfig, rank: int = 0) -> None:
        super().__init__(module_spec=module_spec, config=config, rank=rank)
        self.shard_unit = config.group_size  # a group's advantages need all of it
        self.reference: torch.nn.Module | None = None
        self.warm_start()

    def warm_start(self) -> None:
        """A short supervised phase so RL starts from a model that writes the answer
        format; cached as ``warmup.pt`` in the logdir, so a second run starts from it at
        once. Every learner computes the same warm-up (same seed), so they agree."""
        c = self.config
        cache = os.path.join(c.logdir, "warmup.pt") if c.logdir else None
        if cache and os.path.exists(cache):
            self.module.load_state_dict(torch.load(cache, weights_only=True))
            return
        if not c.warmup_steps:
            return
        text_env = resolve_text_env(c)
        if text_env.warmup_examples is None:
            return
        pairs = text_env.warmup_examples(4096, np.random.default_rng(c.seed))
        length = text_env.max_prompt_tokens + text_env.max_new_tokens
        t0 = time.perf_counter()
        chat = getattr(text_env.tokenizer, "chat", None) if isinstance(text_env, MultiTurnSpec) else None
        loss = self.warmup(*supervised_sequences(pairs, text_env.tokenizer, length, chat), c.warmup_steps)
        if c.log_to_console and self.rank == 0:
            print(f"warm-up: {c.warmup_steps} supervised steps, loss {loss:.3f}, {time.perf_counter() - t0:.1f} s", flush=True)
        if cache and self.rank == 0:  # atomically: a reader never sees half a file
            os.makedirs(c.logdir, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, tmp)
            os.replace(tmp, cache)

    def warmup(self, sequences: np.ndarray, attention_mask: np.ndarray, loss_mask: np.ndarray, steps: int) -> float:
        """Supervised next-token training on (prompt, answer) sequences; the loss covers the
        answer tokens only (``loss_mask`` (N, L-1) over next-token positions)."""
        c = self.config
        opt = Adam(self.module.parameters(), lr=c.warmup_lr, eps=1e-8)
        data = self.to_tensors({"seq": sequences, "attn": attention_mask, "mask": loss_mask})
        rng = np.random.default_rng([c.seed, 1])  # apart from the examples' stream
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.from_numpy(rng.integers(0, len(sequences), c.warmup_batch_size)).to(self.device)
            lp = self.module.token_logprobs(data["seq"][idx], data["attn"][idx])  # (b, L-1)
            mask = data["mask"][idx].float()
            loss = -(lp * mask).sum() / mask.sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
            opt.step()
        return float(loss.detach())

    def reference_logprobs(self, data: TensorBatch) -> torch.Tensor | None:
        """(N, C) log-probs of the completion tokens under the frozen reference, or None
        when ``kl_coef`` is 0. The reference is the policy as RL starts: frozen at the
        first update (after the learners agreed on rank 0's weights), or restored."""
        if self.config.kl_coef <= 0:
            return None
        if "ref_logprobs" in data:  # computed by the generator runners (``reference_in_runners``)
            return data["ref_logprobs"]
        n_new = data["completion_mask"].shape[1]
        with torch.no_grad():
            return self.frozen_reference().token_logprobs(data["sequences"], data["attention_mask"])[:, -n_new:]

    def frozen_reference(self) -> torch.nn.Module:
        if self.reference is None:
            self.reference = copy.deepcopy(self.module).eval().requires_grad_(False)
        return self.reference

    def reference_weights(self) -> dict[str, np.ndarray]:
        """The frozen reference's weights (frozen now when RL has not started yet): what
        the generator runners compute its log-probs with under ``reference_in_runners``."""
        return numpy_weights(self.frozen_reference())

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.reference is not None:
            state["reference"] = {k: v.detach().cpu().clone() for k, v in self.reference.state_dict().items()}
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.reference = None  # frozen again at the next update, unless the state holds one
        if "reference" in state:
            self.reference = copy.deepcopy(self.module).eval().requires_grad_(False)
            self.reference.load_state_dict(state["reference"])
