"""What every causal-LM policy shares: the outputs, padding-aware positions, per-token
log-probs, logit filtering, and batched generation on top of one decoding step.

The learner's path (``forward`` / ``token_logprobs`` over padded prompt+completion
sequences) and the sampler's (``generate``, one token per step with a cache) must give
the same log-probabilities for the same tokens: PPO and GRPO weight each token by
``exp(logp_learner - logp_sampler)``. Hence three rules:

1. position ids count real tokens only (``cumsum(mask) - 1``), so a sequence gets the same
   positions, and the same logits, whatever padding surrounds it;
2. no query ever attends to a padded key;
3. ``generate`` reports log-probs under the plain policy (temperature 1, no top-k/top-p),
   whatever distribution it actually sampled from: that is what the learner recomputes.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, TypedDict, overload

import torch
import torch.nn.functional as F
from torch import nn


class LMOutput(NamedTuple):
    """What a causal LM's ``forward`` returns."""

    logits: torch.Tensor
    """(B, T, V): logits[:, t] scores the token at t + 1 given the tokens up to t."""
    values: torch.Tensor | None
    """(B, T) value of the state after token t; None without a value head."""


class Generation(TypedDict):
    """What ``CausalLM.generate`` returns; all tensors on the model's device.

    P is the longest prompt, N is ``max_new_tokens``. Completion token j sits at
    ``sequences[:, P + j]`` and its log-prob is ``token_logprobs(sequences,
    attention_mask)[:, P - 1 + j]``.
    """

    sequences: torch.Tensor
    """(B, P + N) int64: left-padded prompt, then the completion (pad after eos)."""
    attention_mask: torch.Tensor
    """(B, P + N) int64: 1 for real tokens (prompt and completion up to and including eos)."""
    completion_mask: torch.Tensor
    """(B, N) int64: 1 for generated tokens up to and including eos."""
    logprobs: torch.Tensor
    """(B, N) float32: log p(token) under the plain policy (temperature 1, unfiltered); 0
    where the completion mask is 0."""
    prompt_lengths: torch.Tensor
    """(B,) int64: real tokens in each prompt."""


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only: ``cumsum(mask) - 1``, clamped at 0.

    A left-padded prompt starts at position 0 like an unpadded one; pads get a harmless
    position (0 before the first real token, the last real position after the last).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def next_token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x_{t+1} | x_{<=t}) for t = 0 .. T-2, from logits (B, T, V) of ``input_ids``.

    Computed in float32 whatever the model's dtype (bf16 log-softmax is too coarse for
    PPO ratios). Entries where x_t or x_{t+1} is padding are 0. Returns (B, T - 1).
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    out = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    if attention_mask is not None:
        out = out * _pair_mask(attention_mask)
    return out


def next_token_entropy(
    logits: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Entropy of the next-token distribution at t = 0 .. T-2, aligned with
    ``next_token_logprobs`` (and zeroed at the same padded entries). Returns (B, T - 1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    out = -(logp.exp() * logp).sum(-1)  # (B, T-1)
    if attention_mask is not None:
        out = out * _pair_mask(attention_mask)
    return out


def _pair_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.bool()
    return (mask[:, :-1] & mask[:, 1:]).float()  # (B, T-1)


def filter_logits(
    logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus (top-p).

    The nucleus is the smallest set of most likely tokens whose probability reaches
    ``top_p`` (Holtzman et al. 2020); the most likely token is always kept. Ties at the
    k-th logit are all kept. ``logits`` (B, V); returns (B, V).
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = F.softmax(sorted_logits, dim=-1)  # (B, V)
        mass_before = probs.cumsum(-1) - probs  # (B, V): mass of the more likely tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def check_generate_args(
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    pad_id: int,
    *,
    vocab_size: int,
    max_length: int | None,
    max_length_name: str,
) -> None:
    """Refuse, naming the prompt and the numbers, what ``generate`` cannot do; a
    ``max_length`` of None (no position table) skips the length check."""
    V = vocab_size
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    for name, token in (("eos_id", eos_id), ("pad_id", pad_id)):
        if token is not None and not 0 <= token < V:
            raise ValueError(f"{name} {token} is outside the vocabulary [0, {V})")
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if max_length is not None and len(ids) + max_new_tokens > max_length:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                f"that is {len(ids) + max_new_tokens} > {max_length_name} {max_length}"
            )
        bad = [tok for tok in ids if not 0 <= tok < V]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {V}): {bad[:5]}")


def sample_token(
    logits: torch.Tensor,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row of ``logits`` (B, V): argmax when temperature is 0 or None."""
    if not temperature:
        return logits.argmax(-1)  # (B,)
    scaled = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)  # (B, V)
    probs = F.softmax(scaled, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


class CausalLM(nn.Module):
    """The learner's and the sampler's paths shared by every causal-LM policy (the
    built-in GPT, a Hugging Face model). A subclass supplies ``forward`` -> LMOutput,
    ``vocab_size``, ``max_length`` (and its name for messages), ``device``, and one
    decoding step: ``_decoding_state(B, total_length)`` and
    ``_decode(new_ids, key_mask, state) -> (last logits (B, V), state)``."""

    vocab_size: int
    max_length: int | None
    max_length_name: str = "max_length"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _decoding_state(self, batch_size: int, total_length: int) -> Any:
        return None

    def _decode(self, new_ids: torch.Tensor, key_mask: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    @overload
    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        with_entropy: Literal[False] = False,
    ) -> torch.Tensor: ...

    @overload
    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        with_entropy: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        with_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """log p(x_{t+1} | x_{<=t}) for every next token, in one forward pass: (B, T - 1).

        Float32, 0 where x_t or x_{t+1} is padding. With ``with_entropy``, also the entropy
        of each next-token distribution, (B, T - 1), aligned the same way. A learner that
        also needs values calls ``forward`` once and uses ``next_token_logprobs`` /
        ``next_token_entropy`` on its logits.
        """
        logits = self(input_ids, attention_mask).logits  # (B, T, V)
        logprobs = next_token_logprobs(logits, input_ids, attention_mask)  # (B, T-1)
        if with_entropy:
            return logprobs, next_token_entropy(logits, attention_mask)
        return logprobs

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float | None = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
        generator: torch.Generator | None = None,
    ) -> Generation:
        """Sample completions for a batch of prompts; see ``Generation`` for the result.

        Prompts are left-padded into one (B, P) batch so every completion starts in the
        same column, prefilled in one pass, then extended one token per step with cached
        keys and values. ``temperature`` 0 or None is greedy; otherwise logits / temperature
        are filtered by ``top_k`` then ``top_p`` and sampled with ``generator`` (which must
        live on the model's device; None uses the global RNG). After a sequence emits
        ``eos_id`` it emits ``pad_id``, masked out. Runs in eval mode (no dropout).

        The returned ``logprobs`` are the plain policy's (temperature 1, unfiltered), the
        quantity ``token_logprobs`` recomputes on the returned sequences: the importance
        ratio of an unchanged policy is then exactly 1, even when sampling was tempered.
        """
        check_generate_args(prompt_ids, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id,
                            vocab_size=self.vocab_size, max_length=self.max_length,
                            max_length_name=self.max_length_name)
        device = self.device
        B, N = len(prompt_ids), max_new_tokens
        lengths = [len(p) for p in prompt_ids]
        P = max(lengths)
        prompt = torch.full((B, P), pad_id, dtype=torch.long, device=device)  # (B, P)
        prompt_mask = torch.zeros((B, P), dtype=torch.bool, device=device)  # (B, P)
        for i, ids in enumerate(prompt_ids):
            prompt[i, P - len(ids) :] = torch.tensor(ids, dtype=torch.long, device=device)
            prompt_mask[i, P - len(ids) :] = True

        completion = torch.full((B, N), pad_id, dtype=torch.long, device=device)  # (B, N)
        completion_mask = torch.zeros((B, N), dtype=torch.bool, device=device)  # (B, N)
        logprobs = torch.zeros((B, N), dtype=torch.float32, device=device)  # (B, N)
        done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)

        was_training = self.training
        self.eval()
        try:
            key_mask = prompt_mask  # (B, P + t): real tokens so far
            logits, state = self._decode(prompt, key_mask, self._decoding_state(B, P + N))  # (B, V)
            for t in range(N):
                alive = ~done  # (B,)
                token = sample_token(logits, temperature, top_k, top_p, generator)  # (B,)
                token = torch.where(alive, token, pad_id)  # (B,)
                logp = F.log_softmax(logits.float(), dim=-1)  # (B, V): the plain policy
                logprobs[:, t] = logp.gather(-1, token[:, None]).squeeze(-1) * alive
                completion[:, t] = token
                completion_mask[:, t] = alive
                if eos_id is not None:
                    done = done | (token == eos_id)
                if t == N - 1 or bool(done.all()):
                    break
                key_mask = torch.cat([key_mask, alive[:, None]], dim=1)  # (B, P + t + 1)
                logits, state = self._decode(token[:, None], key_mask, state)  # (B, V)
        finally:
            self.train(was_training)

        return Generation(
            sequences=torch.cat([prompt, completion], dim=1),
            attention_mask=torch.cat([prompt_mask, completion_mask], dim=1).long(),
            completion_mask=completion_mask.long(),
            logprobs=logprobs,
            prompt_lengths=torch.tensor(lengths, dtype=torch.long, device=device),
        )
