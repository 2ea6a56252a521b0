"""GeneratorRunner: the env runner of language-model post-training.

An episode is one prompt and its completion. Each ``sample()`` draws prompts, generates
a group of completions per prompt in one batch with the current weights (received, like
any runner's, by reference through the object store), scores them, and returns a
``Fragment`` whose episode returns are the rewards and whose episode lengths are the
response lengths, so the driver's metrics (``episode_return_mean`` = mean reward per
completion, ``episode_len_mean`` = response length) need nothing special.

Batch columns, one row per completion, rows of a group consecutive:
    sequences        (N, P + C) int64, prompts left-padded to P = max_prompt_tokens
    attention_mask   (N, P + C) 1 on real tokens
    completion_mask  (N, C)     1 on generated tokens up to and including eos
    logprobs         (N, C)     log-probs of the generated tokens under the sampling weights
    rewards          (N,)       float32
    ref_logprobs     (N, C)     with ``reference_in_runners``: the same under the frozen reference
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

from rlfleet.envs import EnvNotFoundError
from rlfleet.envs.text import MultiTurnSpec, TextEnvSpec, score
from rlfleet.envs.text_tasks import make_text_env
from rlfleet.rl.config import ConfigError
from rlfleet.rl.core import Fragment
from rlfleet.rl.lm.config import LMConfig
from rlfleet.rl.lm.conversation import play
from rlfleet.rl.lm.gpt import GPTConfig


REFERENCE_PREFIX = "reference."
"""Weights under this prefix are the frozen reference's (``reference_in_runners``)."""
REFERENCE_ID = "reference/id"
"""Which reference the broadcast carries: a runner loads it when this changes."""


class GeneratorRunner:
    def __init__(
        self,
        *,
        text_env: str | TextEnvSpec,
        env_config: dict,
        lm_spec: GPTConfig,
        prompts_per_sample: int,
        group_size: int,
        temperature: float,
        top_k: int | None,
        seed: int,
        index: int = 0,
    ) -> None:
        self.index = index
        self.spec = text_env if isinstance(text_env, (TextEnvSpec, MultiTurnSpec)) else make_text_env(text_env, env_config)
        self.model = lm_spec.build().eval()
        self.prompts_per_sample, self.group_size = prompts_per_sample, group_size
        self.temperature, self.top_k = temperature, top_k
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.weights_version = 0
        self.lm_spec = lm_spec
        self.reference: torch.nn.Module | None = None  # ``reference_in_runners``: the frozen reference
        self.reference_id: int | None = None

    def set_weights(self, weights: dict[str, np.ndarray], version: int, connector_state: Any = None) -> None:
        policy, reference = {}, {}
        for k, v in weights.items():
            if k.startswith(REFERENCE_PREFIX):
                reference[k[len(REFERENCE_PREFIX):]] = torch.from_numpy(v)
            elif k != REFERENCE_ID:
                policy[k] = torch.from_numpy(v)
        with warnings.catch_warnings():  # read-only arrays from the object store; copied in
            warnings.simplefilter("ignore", UserWarning)
            self.model.load_state_dict(policy)
            if reference and int(weights[REFERENCE_ID]) != self.reference_id:
                if self.reference is None:
                    self.reference = self.lm_spec.build().eval().requires_grad_(False)
                self.reference.load_state_dict(reference)
                self.reference_id = int(weights[REFERENCE_ID])
        self.weights_version = version

    def _with_reference(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with ``ref_logprobs`` when this runner holds the reference: one forward
        pass, the learner's own computation (``token_logprobs`` of the padded rows)."""
        if self.reference is not None:
            n_new = batch["completion_mask"].shape[1]
            with torch.inference_mode():
                ref = self.reference.token_logprobs(torch.from_numpy(batch["sequences"]),
                                                    torch.from_numpy(batch["attention_mask"]))
            batch["ref_logprobs"] = ref[:, -n_new:].numpy()  # float32, as token_logprobs returns
        return batch

    def _generate(self, prompts: list, *, temperature: float | None) -> tuple[dict[str, Any], list[str]]:
        tok = self.spec.tokenizer
        ids = [tok.encode(p.text) for p in prompts]
        with torch.inference_mode():
            out = self.model.generate(
                ids, max_new_tokens=self.spec.max_new_tokens, temperature=temperature, top_k=self.top_k,
                eos_id=tok.eos_id, pad_id=tok.pad_id, generator=self.generator,
            )
        completions = [tok.decode(row.tolist()) for row in out["sequences"][:, -self.spec.max_new_tokens:]]
        return out, completions

    def sample(self) -> Fragment:
        if isinstance(self.spec, MultiTurnSpec):
            return self._sample_conversations()
        started = time.perf_counter()
        prompts = [p for p in self.spec.prompts.sample(self.prompts_per_sample, self.rng) for _ in range(self.group_size)]
        out, completions = self._generate(prompts, temperature=self.temperature)
        rewards = score(self.spec.reward_fn, prompts, completions).astype(np.float32)
        sequences, attention = self._pad_prompts(out)
        completion_mask = out["completion_mask"].numpy().astype(np.float32)
        lengths = completion_mask.sum(1).astype(int)
        batch = {
            "sequences": sequences,
            "attention_mask": attention,
            "completion_mask": completion_mask,
            "logprobs": out["logprobs"].numpy().astype(np.float32),
            "rewards": rewards,
            "weights_version": np.full(len(prompts), self.weights_version, np.int64),  # what sampled each row
        }
        batch = self._with_reference(batch)
        return Fragment(batch, rewards.tolist(), lengths.tolist(), len(prompts), self.weights_version, self.index,
                        sample_time_s=time.perf_counter() - started)

    def _sample_conversations(self) -> Fragment:
        """Multi-turn episodes (rl/lm/conversation.py), a group per drawn episode seed."""
        started = time.perf_counter()
        seeds = [int(s) for s in self.rng.integers(0, 2**31 - 1, self.prompts_per_sample) for _ in range(self.group_size)]
        out = play(self.model, self.spec, seeds, temperature=self.temperature, top_k=self.top_k,
                   generator=self.generator)
        batch = {key: out[key] for key in ("sequences", "attention_mask", "completion_mask", "logprobs", "rewards")}
        batch["weights_version"] = np.full(len(seeds), self.weights_version, np.int64)
        batch = self._with_reference(batch)
        lengths = out["completion_mask"].sum(1).astype(int)  # the policy's tokens
        return Fragment(batch, out["rewards"].tolist(), lengths.tolist(), len(seeds), self.weights_version, self.index,
                        sample_time_s=time.perf_counter() - started)

    def _pad_prompts(self, out: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Left-pad every row's prompt region to max_prompt_tokens, so fragments from
        different runners (different longest prompts) line up; positions count real tokens
        only, so the padding changes no logit."""
        seq, mask = out["sequences"].numpy(), out["attention_mask"].numpy()
        extra = self.spec.max_prompt_tokens + self.spec.max_new_tokens - seq.shape[1]
        if extra > 0:
            seq = np.pad(seq, ((0, 0), (extra, 0)), constant_values=self.spec.tokenizer.pad_id)
            mask = np.pad(mask, ((0, 0), (extra, 0)))
        return seq.astype(np.int64), mask.astype(np.int64)

    def evaluate(self, num_prompts: int) -> dict[str, float]:
        """Greedy completions of ``num_prompts`` prompts (multi-turn: episodes of a fixed
        set of seeds): mean reward."""
        if isinstance(self.spec, MultiTurnSpec):
            out = play(self.model, self.spec, [10_000_000 + i for i in range(num_prompts)], temperature=0.0,
                       top_k=None, generator=None)
            return {"evaluation/episode_return_mean": float(out["rewards"].mean()),
                    "evaluation/turns_mean": float(out["turns"].mean()), "evaluation/num_episodes": num_prompts}
        prompts = self.spec.prompts.sample(num_prompts, np.random.default_rng(12345))
        _, completions = self._generate(prompts, temperature=0.0)
        return {"evaluation/episode_return_mean": float(score(self.spec.reward_fn, prompts, completions).mean()),
                "evaluation/num_episodes": num_prompts}

    def ping(self) -> bool:
        return True

    def stop(self) -> None:
        pass


def resolve_text_env(config: LMConfig) -> TextEnvSpec:
    """The config's text env, built; a bad env_config, prompt file or reward is bad input."""
    if isinstance(config.env, (TextEnvSpec, MultiTurnSpec)):
        if config.hf_tokenizer:
            raise ConfigError("hf_tokenizer is for a named text env; a TextEnvSpec brings its own tokenizer")
        return with_chat_budget(config.env)
    tokenizer_dir = config.hf_tokenizer or config.hf_model
    try:
        tokenizer = _hf_tokenizer(tokenizer_dir) if tokenizer_dir else None
        return with_chat_budget(make_text_env(config.env, config.env_config, tokenizer=tokenizer))
    except EnvNotFoundError:
        raise
    except ValueError as e:  # one line naming the env
        raise ConfigError(f"env {config.env!r}: {e}") from None
    except OSError as e:  # a prompt file that is missing or unreadable
        raise ConfigError(f"env {config.env!r}: cannot read {e.filename!r}: {e.strerror}") from None


def with_chat_budget(spec: Any) -> Any:
    """A multi-turn env whose tokenizer has a chat template: its token budgets grown by
    what the template adds (the wrapper around the prompt, and around each reply)."""
    if not isinstance(spec, MultiTurnSpec):
        return spec
    chat = getattr(spec.tokenizer, "chat", None)
    if chat is None:
        return spec
    tok = spec.tokenizer
    prompt = len(tok.encode(chat.first(""), add_bos=False)) - len(tok.encode("", add_bos=True))
    reply = len(tok.encode(chat.after_turn(""), add_bos=False))
    return dataclasses.replace(spec, max_prompt_tokens=spec.max_prompt_tokens + max(prompt, 0),
                               max_new_tokens=spec.max_new_tokens + spec.max_turns * reply)


def _hf_tokenizer(path: str) -> Any:
    """A local Hugging Face tokenizer directory (nothing is downloaded); bad input is a
    ValueError naming the path."""
    if not os.path.isdir(path):
        raise ValueError(f"tokenizer {path!r} is not a local directory (save_pretrained output; nothing is downloaded)")
    try:
        from rlfleet.rl.lm.hf import HFTokenizer  # optional extra: imported only when asked for

        return HFTokenizer.from_pretrained(path)
    except ImportError as e:
        raise ValueError(f"tokenizer {path!r} needs the hf extra (pip install 'rlfleet[hf]'): {e}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer {path!r}: {str(e).splitlines()[0]}") from None


def _check_hf_vocab(path: str, tokenizer: Any) -> None:
    """The model's embedding table must hold every id the tokenizer can produce."""
    if not os.path.isdir(path):
        raise ConfigError(f"hf_model {path!r} is not a local directory (save_pretrained output; nothing is downloaded)")
    from rlfleet.rl.lm.hf import _import_transformers

    try:
        model_config = _import_transformers().AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"hf_model {path!r}: {str(e).splitlines()[0]}") from None
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise ConfigError(f"hf_model {path!r} has {vocab} embeddings but its tokenizer {tokenizer.vocab_size} ids: "
                          "give the model's own tokenizer (hf_tokenizer)")


class GeneratorRunnerFactory:
    """Picklable ``factory(index) -> GeneratorRunner`` of an LM run (the RunnerFactory of
    rl/core.py): resolves the text env once and holds the spec of the causal LM."""

    def __init__(self, config: LMConfig, *, adapt_spec: Callable[[Any], Any] = lambda spec: spec) -> None:
        c = self.config = config
        self.family, self.defaults = None, {}  # an LM config leaves nothing to the spaces
        # resolved once here and sent whole to every runner: they speak the same tokenizer
        text_env = self.text_env = resolve_text_env(config)
        if c.hf_model:
            from rlfleet.rl.lm.hf import HFSpec  # optional extra: imported only when asked for

            _check_hf_vocab(c.hf_model, text_env.tokenizer)
            spec: Any = HFSpec(path=c.hf_model)
        else:
            spec = GPTConfig(
                vocab_size=text_env.tokenizer.vocab_size, block_size=text_env.max_prompt_tokens + text_env.max_new_tokens,
                n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
            )
        self.module_spec = adapt_spec(spec)

    def __call__(self, index: int) -> GeneratorRunner:
        c = self.config
        torch.set_num_threads(c.torch_threads)
        return GeneratorRunner(
            text_env=self.text_env, env_config=c.env_config, lm_spec=self.module_spec, prompts_per_sample=c.prompts_per_runner,
            group_size=c.group_size, temperature=c.temperature, top_k=c.top_k, seed=c.seed + 1000 * index, index=index,
        )

    def evaluation_runner(self, num_episodes: int) -> GeneratorRunner:
        return self(999)  # its own seed range, apart from the fleet's

    def make_connector(self) -> None:
        return None
