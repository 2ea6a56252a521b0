"""A learned reward: a sequence model scores (prompt, completion) with the value head at the
sequence's last real token (the reward model of RLHF, Ouyang et al. 2022). It is a plain
``(prompt, completion) -> float`` callable, so it plugs in wherever a reward function does
(``TextEnvSpec.reward_fn``), with batched scoring for speed."""

from __future__ import annotations

from typing import Sequence

import torch

from rlfleet.envs.text import Prompt, Tokenizer


class ModelReward:
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
        if getattr(model, "value_head", None) is None:
            raise ValueError("a reward model needs a value head (GPTConfig(value_head=True))")
        self.model = model.eval()
        self.tokenizer = tokenizer

    def score_batch(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> torch.Tensor:
        """(N,) scores: the value head at each sequence's last real token."""
        rows = [self.tokenizer.encode(p.text) + self.tokenizer.encode(c, add_bos=False)
                for p, c in zip(prompts, completions)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: the last real token is at len - 1
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.inference_mode():
            values = self.model(ids, mask).values  # (N, T)
        return values[torch.arange(len(rows)), mask.sum(1) - 1]

    def __call__(self, prompt: Prompt, completion: str) -> float:
        return float(self.score_batch([prompt], [completion])[0])
