"""A small GPT: the causal language-model policy for RLHF-style post-training.

An episode is one prompt and its completion; the actions are tokens. Two paths share one
set of weights:

- the learner's: ``forward`` / ``token_logprobs``, one pass over a padded batch of
  prompt+completion sequences (left- or right-padded);
- the sampler's: ``generate``, batched over left-padded prompts, one token per step,
  reusing cached keys and values.

The two paths must give the same log-probabilities for the same tokens: PPO and GRPO
weight each token by ``exp(logp_learner - logp_sampler)``, so any disagreement (a position
shifted by padding, a pad token attended to, the log-prob of a temperature-scaled
distribution) is a spurious ratio != 1 before the first update. Hence three rules:

1. position ids count real tokens only (``cumsum(mask) - 1``), so a sequence gets the same
   positions, and the same logits, whatever padding surrounds it;
2. no query ever attends to a padded key;
3. ``generate`` reports log-probs under the plain policy (temperature 1, no top-k/top-p),
   whatever distribution it actually sampled from: that is what the learner recomputes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple, TypedDict, overload

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Everything needed to build a GPT anywhere (it is sent to remote actors)."""

    vocab_size: int
    """Number of token ids; ids run 0 .. vocab_size - 1, the pad id included."""
    block_size: int
    """Longest sequence (prompt + completion) the model takes: one position embedding each."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide ``n_embd``."""
    n_embd: int = 128
    """Width of the residual stream."""
    value_head: bool = False
    """Add a per-token value head ``Linear(n_embd, 1)`` (PPO needs one, GRPO does not)."""
    dropout: float = 0.0
    """Dropout in training mode only. Keep 0 for RL: with dropout the learner's recomputed
    log-probs (train mode) no longer match the sampler's (``generate`` runs in eval mode)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd {self.n_embd} is not divisible by n_head {self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    def build(self) -> GPT:
        return GPT(self)


class GPTOutput(NamedTuple):
    """What ``GPT.forward`` returns."""

    logits: torch.Tensor
    """(B, T, V): logits[:, t] scores the token at t + 1 given the tokens up to t."""
    values: torch.Tensor | None
    """(B, T) value of the state after token t; None without a value head."""


class Generation(TypedDict):
    """What ``GPT.generate`` returns; all tensors on the model's device.

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


# -- padding-aware helpers -------------------------------------------------------------


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only: ``cumsum(mask) - 1``, clamped at 0.

    A left-padded prompt starts at position 0 like an unpadded one; pads get a harmless
    position (0 before the first real token, the last real position after the last).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def attention_allowed(key_mask: torch.Tensor, n_query: int) -> torch.Tensor:
    """Which keys each query may attend to, for ``scaled_dot_product_attention``.

    ``key_mask`` (B, Tk) marks real tokens; the queries are the last ``n_query`` of the Tk
    positions (all of them in a full forward, the newest one when decoding with a cache).
    A query sees a key when the key is real and not in its future. A pad query would then
    see nothing (at a left pad every earlier key is a pad); torch before 2.5 returns NaN
    for such an all-masked row (pytorch/pytorch#103963, fixed by #131060), which reaches
    the parameters' gradients through 0 * NaN. So every query also sees itself; real
    queries never see a pad that way, since their own key is real.

    Returns (B, 1, n_query, Tk) bool, broadcast over heads.
    """
    n_key = key_mask.shape[1]
    device = key_mask.device
    q_pos = torch.arange(n_key - n_query, n_key, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(n_key, device=device)[None, :]  # (1, Tk)
    allowed = (k_pos <= q_pos) & key_mask.bool()[:, None, :]  # (B, Tq, Tk)
    allowed = allowed | (k_pos == q_pos)  # (B, Tq, Tk)
    return allowed[:, None]  # (B, 1, Tq, Tk)


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


# -- the network -----------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer, preallocated for the whole generation.

    Layers append at ``length``; the model advances ``length`` once all layers have run.
    """

    def __init__(
        self, config: GPTConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, H, Tmax, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, H, Tmax, D)
        self.length = 0

    def append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) after the cached ones; return all of them (B, H, Tk, D)."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.layer = layer
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)  # (B, H, Tk, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), allowed, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer with learned positions and an LM head tied to the token
    embedding; optionally a per-token value head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied (Press & Wolf 2017)
        self.value_head = nn.Linear(config.n_embd, 1) if config.value_head else None
        self.apply(self._init_weights)
        # Residual-branch outputs shrink with depth so the stream's variance stays O(1)
        # at init (GPT-2).
        for block in self.blocks:
            for layer in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def _hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        cache: KVCache | None,
    ) -> torch.Tensor:
        """Final-LayerNorm features (B, T, C) of ``input_ids`` (B, T)."""
        x = self.drop(self.wte(input_ids) + self.wpe(positions))  # (B, T, C)
        for block in self.blocks:
            x = block(x, allowed, cache)
        return self.ln_f(x)  # (B, T, C)

    # -- learner path ------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> GPTOutput:
        """Logits (B, T, V) and, with a value head, values (B, T) of a padded batch.

        ``attention_mask`` (B, T) is 1 for real tokens (None: all real); padding may sit
        on either side. Outputs at padded positions are finite but meaningless.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} > block_size {self.config.block_size}")
        if attention_mask is None:
            key_mask = torch.ones_like(input_ids, dtype=torch.bool)  # (B, T)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        else:
            key_mask = attention_mask.bool()  # (B, T)
        h = self._hidden(input_ids, position_ids(key_mask), attention_allowed(key_mask, T), None)
        logits = self.lm_head(h)  # (B, T, V)
        values = self.value_head(h).squeeze(-1) if self.value_head is not None else None  # (B, T)
        return GPTOutput(logits, values)

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

    # -- sampler path ------------------------------------------------------------------
    def _decode(
        self, new_ids: torch.Tensor, key_mask: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """Run ``new_ids`` (B, T) after the cached tokens; ``key_mask`` (B, Tk) covers the
        cached tokens and the new ones. Returns the last position's logits (B, V)."""
        T = new_ids.shape[1]
        positions = position_ids(key_mask)[:, -T:]  # (B, T)
        h = self._hidden(new_ids, positions, attention_allowed(key_mask, T), cache)
        cache.length += T
        return self.lm_head(h[:, -1])  # (B, V)

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
        self._check_generate_args(
            prompt_ids, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id
        )
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
            cache = KVCache(self.config, B, P + N, device, self.wte.weight.dtype)
            key_mask = prompt_mask  # (B, P + t): real tokens so far
            logits = self._decode(prompt, key_mask, cache)  # (B, V)
            for t in range(N):
                alive = ~done  # (B,)
                token = _sample(logits, temperature, top_k, top_p, generator)  # (B,)
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
                logits = self._decode(token[:, None], key_mask, cache)  # (B, V)
        finally:
            self.train(was_training)

        return Generation(
            sequences=torch.cat([prompt, completion], dim=1),
            attention_mask=torch.cat([prompt_mask, completion_mask], dim=1).long(),
            completion_mask=completion_mask.long(),
            logprobs=logprobs,
            prompt_lengths=torch.tensor(lengths, dtype=torch.long, device=device),
        )

    def _check_generate_args(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        eos_id: int | None,
        pad_id: int,
    ) -> None:
        V, block_size = self.config.vocab_size, self.config.block_size
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
            if len(ids) + max_new_tokens > block_size:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                    f"that is {len(ids) + max_new_tokens} > block_size {block_size}"
                )
            bad = [tok for tok in ids if not 0 <= tok < V]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {V}): {bad[:5]}")


def _sample(
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
