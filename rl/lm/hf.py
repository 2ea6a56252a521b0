"""Hugging Face ``transformers`` causal LMs behind the interface of ``rlfleet.rl.lm.gpt.GPT``.

The learners and generator runners of language-model post-training (GRPO, LM PPO) call
three things on their policy: ``forward`` (logits and values), ``token_logprobs`` and
``generate``. ``HFCausalLM`` offers the same three over any ``AutoModelForCausalLM``, so a
pretrained checkpoint can stand in for the small GPT without touching an algorithm.

The rules of ``rlfleet.rl.lm.gpt`` carry over, and for the same reason (the PPO/GRPO ratio of an
unchanged policy must be exactly 1):

1. position ids count real tokens only: they are passed explicitly as ``cumsum(mask) - 1``,
   since a model left to itself numbers columns, and left padding would shift them;
2. pads are masked out by the 2D ``attention_mask`` the model turns into its causal mask;
3. ``generate`` reports log-probs under the plain policy (temperature 1, unfiltered).

To these the adapter adds a fourth: dropout is switched off at construction. Pretrained
configs ship with dropout (GPT-2: 0.1), and the learner recomputes log-probs in train
mode while the sampler runs in eval mode, so any dropout is a spurious ratio != 1.

``transformers`` is optional (``pip install rlfleet[hf]``): this module imports without
it, and only building a model or a tokenizer needs it. Nothing is ever downloaded unless
the caller asks transformers to: loading defaults to ``local_files_only=True``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from rlfleet.rl.lm.causal_lm import CausalLM, LMOutput, position_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "rlfleet.rl.lm.hf needs Hugging Face transformers: pip install 'rlfleet[hf]'"
        ) from e
    return transformers


def _disable_dropout(model: nn.Module) -> None:
    """Set every ``nn.Dropout`` to p = 0 (TRL does the same for its RL trainers).

    Attention dropout implemented as a plain float on the attention module (Llama's
    ``attention_dropout``) is not reached; those configs default it to 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class HFCausalLM(CausalLM):
    """A ``transformers`` causal LM as a policy: ``forward``, ``token_logprobs`` and
    ``generate`` with the signatures and semantics of ``rlfleet.rl.lm.gpt.GPT``; optionally a
    per-token value head ``Linear(hidden_size, 1)`` on the last hidden state.

    Generation is ``CausalLM.generate`` on the model's own ``past_key_values``, not
    transformers' ``generate``: that one reports processed (tempered, filtered) scores and
    numbers positions by column under left padding."""

    def __init__(self, model: PreTrainedModel, *, value_head: bool = False) -> None:
        super().__init__()
        self.model = model
        _disable_dropout(model)
        config = model.config
        self.vocab_size: int = config.vocab_size
        # None for models without learned or bounded positions; then nothing is checked.
        self.max_length: int | None = getattr(config, "max_position_embeddings", None)
        self.max_length_name = "max_position_embeddings"
        self.value_head: nn.Linear | None = None
        if value_head:
            self.value_head = nn.Linear(config.hidden_size, 1, dtype=model.dtype)
            nn.init.normal_(self.value_head.weight, std=0.02)  # as GPT's value head
            nn.init.zeros_(self.value_head.bias)
        # Prefill needs the last position's logits only; materialising (B, P, V) logits
        # for a 150k vocabulary is gigabytes. Models take ``logits_to_keep`` since
        # transformers 4.50; with older ones the full logits are computed and sliced.
        takes_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._last_logits_only: dict[str, int] = {"logits_to_keep": 1} if takes_keep else {}

    @classmethod
    def from_pretrained(
        cls, path_or_name: str | os.PathLike, *, value_head: bool = False, **model_kwargs: Any
    ) -> HFCausalLM:
        """Load ``AutoModelForCausalLM.from_pretrained(path_or_name, **model_kwargs)``.

        Meant for a local directory (``save_pretrained`` output, or a hub snapshot already
        on disk): ``local_files_only`` defaults to True, so nothing is downloaded unless
        the caller passes ``local_files_only=False``. ``model_kwargs`` go to transformers
        as they are (``dtype``, ``attn_implementation``, ``revision``...).
        """
        transformers = _import_transformers()
        model_kwargs.setdefault("local_files_only", True)
        model = transformers.AutoModelForCausalLM.from_pretrained(path_or_name, **model_kwargs)
        return cls(model, value_head=value_head)

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
        if self.max_length is not None and T > self.max_length:
            raise ValueError(f"sequence length {T} > max_position_embeddings {self.max_length}")
        if attention_mask is None:
            # An explicit all-ones mask, not None: given position ids and no mask,
            # transformers may read the positions as packed sequences.
            attention_mask = torch.ones_like(input_ids)  # (B, T)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            position_ids=position_ids(attention_mask),
            use_cache=False,
            output_hidden_states=self.value_head is not None,
        )
        values = None
        if self.value_head is not None:
            h = out.hidden_states[-1]  # (B, T, C): after the final norm, what the LM head reads
            values = self.value_head(h).squeeze(-1)  # (B, T)
        return LMOutput(out.logits, values)

    # -- sampler path ------------------------------------------------------------------
    def _decode(
        self, new_ids: torch.Tensor, key_mask: torch.Tensor, past: Any
    ) -> tuple[torch.Tensor, Any]:
        """Run ``new_ids`` (B, T) after the cached tokens ``past`` (None at prefill);
        ``key_mask`` (B, Tk) covers the cached tokens and the new ones. Returns the last
        position's logits (B, V) and the extended cache."""
        T = new_ids.shape[1]
        out = self.model(
            input_ids=new_ids,
            attention_mask=key_mask.long(),
            position_ids=position_ids(key_mask)[:, -T:],  # (B, T)
            past_key_values=past,
            use_cache=True,
            **self._last_logits_only,
        )
        return out.logits[:, -1], out.past_key_values


@dataclasses.dataclass(frozen=True)
class HFSpec:
    """Everything needed to build an ``HFCausalLM`` anywhere (it is sent to remote
    runners and learners, which build their own copy; weights follow by broadcast).

    Give exactly one of ``path`` and ``config``.
    """

    path: str | None = None
    """A local model directory (``save_pretrained`` output) to load; nothing is downloaded."""
    config: dict[str, Any] | None = None
    """Or the fields of a transformers config, ``model_type`` included, for a randomly
    initialised model: ``{"model_type": "gpt2", "vocab_size": 64, "n_layer": 2, ...}``."""
    value_head: bool = False
    """Add a per-token value head ``Linear(hidden_size, 1)`` (PPO needs one, GRPO does not)."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ValueError(
                f"HFSpec needs exactly one of path and config, got path={self.path!r}, "
                f"config={self.config!r}"
            )
        if self.config is not None and "model_type" not in self.config:
            raise ValueError(
                f"HFSpec.config needs a 'model_type' (e.g. 'gpt2'), got keys {sorted(self.config)}"
            )

    def build(self) -> HFCausalLM:
        if self.path is not None:
            return HFCausalLM.from_pretrained(self.path, value_head=self.value_head)
        transformers = _import_transformers()
        fields = dict(self.config)
        config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
        model = transformers.AutoModelForCausalLM.from_config(config)
        return HFCausalLM(model, value_head=self.value_head)


class HFTokenizer:
    """A ``transformers`` tokenizer behind the ``envs.text.Tokenizer`` protocol.

    ``encode`` never applies the tokenizer's own special-token template (which for some
    models appends eos, and would close a prompt the model must continue); with
    ``add_bos`` it prepends ``bos_token_id`` when the tokenizer defines one, and nothing
    otherwise (GPT-2's bos is its ``<|endoftext|>``). ``pad_id`` falls back to ``eos_id``
    for tokenizers without a pad token (GPT-2, Llama): pads are masked everywhere, so
    which id fills them does not matter. ``eos_id`` is the tokenizer's ``eos_token_id``;
    a chat model that ends turns with another token needs ``tokenizer.eos_token`` set to
    it before wrapping.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no eos token: set tokenizer.eos_token first, "
                "completions need one to end"
            )
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, **tokenizer_kwargs: Any) -> HFTokenizer:
        """``AutoTokenizer.from_pretrained`` with ``local_files_only`` defaulting to True
        (nothing downloaded unless the caller passes ``local_files_only=False``)."""
        transformers = _import_transformers()
        tokenizer_kwargs.setdefault("local_files_only", True)
        return cls(transformers.AutoTokenizer.from_pretrained(path_or_name, **tokenizer_kwargs))

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce, added tokens included. A model's embedding table
        may be larger (padded to a multiple of 64, say), never smaller."""
        return len(self.tokenizer)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else pad

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Ids of ``text``, led by bos when ``add_bos`` and the tokenizer has one; no eos."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    @property
    def chat(self) -> "ChatTurns | None":
        """The tokenizer's chat template as turns of a conversation, or None without one."""
        return ChatTurns(self.tokenizer) if getattr(self.tokenizer, "chat_template", None) else None

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """The text of ``ids`` with special tokens (pad, bos, eos) left out; with
        ``stop_at_eos`` nothing after the first eos is read."""
        ids = [int(token) for token in ids]  # numpy and torch integers
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class ChatTurns:
    """A chat template (``tokenizer.chat_template``) cut into the pieces a multi-turn
    rollout appends (rl/lm/conversation.py): the text before the policy's first turn, and
    the text between two policy turns that carries the env's reply (the template's end of
    the assistant turn, the reply as a ``user`` message, the next generation prompt). The
    policy's own tokens go between them as it sampled them, so the trained spans are
    exactly the assistant's, and never re-tokenized.

    The pieces come from rendering conversations with marker contents and cutting at the
    markers: right for templates that render each message on its own (ChatML, Llama 3,
    most others); a template that rewrites earlier messages when later ones come is not."""

    ASSISTANT, REPLY = "\u2460", "\u2461"  # markers no template writes

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        render = lambda messages, gen: tokenizer.apply_chat_template(messages, tokenize=False,  # noqa: E731
                                                                     add_generation_prompt=gen)
        self.render = render
        try:
            one = render([{"role": "user", "content": self.REPLY}, {"role": "assistant", "content": self.ASSISTANT},
                          {"role": "user", "content": self.REPLY}], True)
        except Exception as e:  # jinja's TemplateError and what the template itself raises
            raise ValueError(f"the chat template cannot render a user/assistant/user conversation: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if one.count(self.ASSISTANT) != 1 or one.count(self.REPLY) != 2:
            raise ValueError("the chat template does not render each message's content once")
        between = one[one.index(self.ASSISTANT) + 1:]
        eos = tokenizer.eos_token or ""
        if eos and between.startswith(eos):  # the policy's turn ends with eos itself
            between = between[len(eos):]
        self.between = between  # holds REPLY once

    def first(self, prompt: str) -> str:
        """The conversation up to the policy's first turn."""
        return self.render([{"role": "user", "content": prompt}], True)

    def after_turn(self, reply: str) -> str:
        """What follows a policy turn (its eos included in the turn): the reply's message
        and the next generation prompt."""
        return self.between.replace(self.REPLY, reply)
