"""A small GPT: the built-in causal language-model policy for RLHF-style post-training.

The network only; the paths it shares with other causal LMs (token log-probs, batched
generation with a cache, and the rules that keep them consistent) are in
``rlfleet.rl.lm.causal_lm``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from rlfleet.rl.lm.causal_lm import CausalLM, LMOutput, position_ids


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

# -- padding-aware helpers -------------------------------------------------------------

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

class GPT(CausalLM):
    """Decoder-only transformer with learned positions and an LM head tied to the token
    embedding; optionally a per-token value head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size, self.max_length, self.max_length_name = config.vocab_size, config.block_size, "block_size"
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
    ) -> LMOutput:
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
        return LMOutput(logits, values)

    # -- sampler path ------------------------------------------------------------------
    def _decoding_state(self, batch_size: int, total_length: int) -> KVCache:
        return KVCache(self.config, batch_size, total_length, self.device, self.wte.weight.dtype)

    def _decode(
        self, new_ids: torch.Tensor, key_mask: torch.Tensor, cache: KVCache
    ) -> tuple[torch.Tensor, KVCache]:
        """Run ``new_ids`` (B, T) after the cached tokens; ``key_mask`` (B, Tk) covers the
        cached tokens and the new ones. Returns the last position's logits (B, V)."""
        T = new_ids.shape[1]
        positions = position_ids(key_mask)[:, -T:]  # (B, T)
        h = self._hidden(new_ids, positions, attention_allowed(key_mask, T), cache)
        cache.length += T
        return self.lm_head(h[:, -1]), cache  # (B, V)
