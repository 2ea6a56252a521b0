"""The text side of RLHF-style post-training: an episode is one prompt and its completion.

The policy is a causal language model, so there is no ``gymnasium.Env`` here: what a
trainer needs is a tokenizer, a source of prompts, a reward for a (prompt, completion)
pair, and the token budgets. :class:`TextEnvSpec` bundles those four, and
:func:`make_text_env` builds one by name, as :func:`envs.registry.make_env_creator` does
for simulators.

Everything a remote actor receives (tokenizer, prompt source, reward function, spec) is a
plain picklable object, and all randomness comes from a ``numpy.random.Generator`` the
caller passes in, so seeded runs are reproducible.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


# --- tokenizers ----------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    """What the trainer needs from a tokenizer; a transformers tokenizer fits behind a
    thin adapter. ``encode`` returns the ids the model is fed (with the bos id when the
    tokenizer has one and ``add_bos`` is set); ``decode`` drops special tokens."""

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...


DEFAULT_ALPHABET = string.digits + "+= " + string.ascii_lowercase + ".,:;!?'\"-()"
"""Digits and ``+=`` for arithmetic, a space, lowercase letters and basic punctuation."""


class CharTokenizer:
    """One token per character of ``alphabet``, after three special tokens.

    Ids: pad 0 (so zero-initialised buffers are padding), bos 1, eos 2, then the alphabet
    in order. A small vocabulary keeps a toy language model small enough to train in a
    test, and every id decodes to exactly one character, so nothing is lost to merges.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    _NUM_SPECIAL = 3

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        if not alphabet:
            raise ValueError("CharTokenizer needs a non-empty alphabet")
        repeated = sorted({ch for ch in alphabet if alphabet.count(ch) > 1})
        if repeated:
            raise ValueError(f"CharTokenizer alphabet repeats characters {repeated}: each needs exactly one id")
        self.alphabet = alphabet
        self._id_of = {ch: i + self._NUM_SPECIAL for i, ch in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return self._NUM_SPECIAL + len(self.alphabet)

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Ids of ``text``, led by bos when ``add_bos``. No eos: a prompt must stay open
        for the model to continue it; supervised targets append ``eos_id`` themselves."""
        ids = [self.bos_id] if add_bos else []
        for position, ch in enumerate(text):
            token = self._id_of.get(ch)
            if token is None:
                raise ValueError(
                    f"character {ch!r} at position {position} is not in the tokenizer's alphabet "
                    f"(text {_shorten(text)}; alphabet {self.alphabet!r})"
                )
            ids.append(token)
        return ids

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """The text of ``ids`` with pad, bos and eos left out. With ``stop_at_eos`` nothing
        after the first eos is read: a sampled completion keeps going until
        ``max_new_tokens`` even after the model has said it is done."""
        chars = []
        for position, token in enumerate(ids):
            token = int(token)  # numpy and torch integers
            if token == self.eos_id and stop_at_eos:
                break
            if token in (self.pad_id, self.bos_id, self.eos_id):
                continue
            if not self._NUM_SPECIAL <= token < self.vocab_size:
                raise ValueError(
                    f"token id {token} at position {position} is outside the vocabulary [0, {self.vocab_size})"
                )
            chars.append(self.alphabet[token - self._NUM_SPECIAL])
        return "".join(chars)


# --- prompts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One episode's prompt. ``answer`` is what a rule-based reward compares with (kept as
    a string, the form a completion has); ``metadata`` carries any other fields of the
    record through to the reward function untouched."""

    text: str
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PromptSource(Protocol):
    """Hands out prompts for a batch of episodes, drawing only on the ``rng`` it is given."""

    def sample(self, n: int, rng: np.random.Generator) -> list[Prompt]: ...


class ListPrompts:
    """Prompts from a list of strings, or of records ``{text_key: ..., answer_key: ...,
    other fields...}``; sampled uniformly with replacement."""

    def __init__(
        self,
        items: Sequence[str | Mapping[str, Any]],
        *,
        text_key: str = "prompt",
        answer_key: str = "answer",
    ) -> None:
        if len(items) == 0:
            raise ValueError("ListPrompts needs at least one prompt, got an empty list")
        self.prompts = [_to_prompt(item, text_key, answer_key, where=f"prompt {i}") for i, item in enumerate(items)]

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, n: int, rng: np.random.Generator) -> list[Prompt]:
        return _sample(self.prompts, n, rng)


class JsonlPrompts:
    """Prompts from a JSON-lines file, one record per line (blank lines are skipped).

    The whole file is read and checked here, at construction, so a bad line stops a run
    before any training, with the file name and line number, rather than midway through.
    """

    def __init__(self, path: str | Path, *, text_key: str = "prompt", answer_key: str = "answer") -> None:
        self.path = Path(path)
        self.prompts: list[Prompt] = []
        for lineno, raw in enumerate(self.path.read_bytes().splitlines(), start=1):
            where = f"{self.path}, line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            self.prompts.append(_to_prompt(record, text_key, answer_key, where=where))
        if not self.prompts:
            raise ValueError(f"{self.path}: no prompts, the file is empty (expected one JSON record per line)")

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, n: int, rng: np.random.Generator) -> list[Prompt]:
        return _sample(self.prompts, n, rng)


def _to_prompt(item: Any, text_key: str, answer_key: str, *, where: str) -> Prompt:
    """A :class:`Prompt` from a string or a record; ``where`` leads every error message."""
    if isinstance(item, str):
        return Prompt(item)
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a string or a record with key {text_key!r}, got {type(item).__name__}")
    if text_key not in item:
        raise ValueError(f"{where}: no key {text_key!r} in the record (keys: {sorted(item)})")
    text = item[text_key]
    if not isinstance(text, str):
        raise ValueError(f"{where}: {text_key!r} must be a string, got {type(text).__name__} {text!r}")
    answer = item.get(answer_key)
    # JSON writers often store a numeric answer as a number; the reward compares text.
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None and not isinstance(answer, str):
        raise ValueError(f"{where}: {answer_key!r} must be a string or a number, got {type(answer).__name__}")
    metadata = {k: v for k, v in item.items() if k not in (text_key, answer_key)}
    return Prompt(text, answer, metadata)


def _sample(prompts: Sequence[Prompt], n: int, rng: np.random.Generator) -> list[Prompt]:
    check_sample_count(n)
    return [prompts[i] for i in rng.integers(len(prompts), size=n)]


def check_prompt_lengths(prompts: Sequence[Prompt], tokenizer: Tokenizer, max_prompt_tokens: int) -> None:
    """Raise ``ValueError`` naming the first prompt longer than ``max_prompt_tokens``.

    Length is counted as the model sees it, ``len(tokenizer.encode(text))`` (bos
    included). Checked up front because an over-long prompt would otherwise be cut
    silently or overflow the model's context deep inside generation.
    """
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    too_long = []  # (index, token count)
    for i, prompt in enumerate(prompts):
        try:
            count = len(tokenizer.encode(prompt.text))
        except ValueError as e:
            raise ValueError(f"prompt {i} cannot be tokenized: {e}") from e
        if count > max_prompt_tokens:
            too_long.append((i, count))
    if too_long:
        i, count = too_long[0]
        others = f" ({len(too_long) - 1} more of {len(prompts)} prompts are too long)" if len(too_long) > 1 else ""
        raise ValueError(
            f"prompt {i} {_shorten(prompts[i].text)} is {count} tokens, "
            f"over max_prompt_tokens {max_prompt_tokens}{others}"
        )


# --- rewards -------------------------------------------------------------------------------

RewardFn = Callable[[Prompt, str], float]
"""``reward_fn(prompt, completion) -> float``; the completion is decoded text, eos removed."""


class RewardError(RuntimeError):
    """A reward function raised, or returned something that is not a finite number."""


def score(reward_fn: RewardFn, prompts: Sequence[Prompt], completions: Sequence[str]) -> np.ndarray:
    """Rewards for each (prompt, completion) pair, shape ``(len(prompts),)``, float64.

    A reward function is user code run inside a remote runner; when it fails, the error
    says which function, on which prompt and completion, instead of a bare traceback or a
    NaN that would surface many updates later as a NaN loss.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
    name = getattr(reward_fn, "__qualname__", None) or type(reward_fn).__name__
    rewards = np.empty(len(prompts), dtype=np.float64)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        pair = f"prompt {i} {_shorten(prompt.text)} with completion {_shorten(completion, 200)}"
        try:
            value = reward_fn(prompt, completion)
        except Exception as e:
            raise RewardError(f"reward function {name} raised {type(e).__name__}: {e}; on {pair}") from e
        rewards[i] = as_reward(value, f"reward function {name} returned", f"for {pair}")
    return rewards


def as_reward(value: Any, said: str, where: str) -> float:
    """``value`` as a finite float, or a RewardError ``"<said> <value>, not ..., <where>"``.
    float("1") would pass a string off as a number: only real numbers are rewards."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise RewardError(f"{said} {value!r}, not a number, {where}")
    try:
        reward = float(value)
    except (TypeError, ValueError):
        raise RewardError(f"{said} {value!r}, not a number, {where}") from None
    if not math.isfinite(reward):
        raise RewardError(f"{said} {reward}, not a finite number, {where}")
    return reward


# --- the spec -------------------------------------------------------------


@dataclass(frozen=True)
class TextEnvSpec:
    """Everything a text trainer needs from its "environment"; picklable, for remote runners."""

    tokenizer: Tokenizer
    """Turns prompts into ids and sampled ids back into completions."""
    prompts: PromptSource
    """Where each batch's prompts come from."""
    reward_fn: RewardFn
    """Scores one (prompt, completion); call it through :func:`score`."""
    max_prompt_tokens: int
    """Longest prompt in tokens, bos included (checked by :func:`check_prompt_lengths`)."""
    max_new_tokens: int
    """Most tokens generated per completion, eos included."""
    warmup_examples: Callable[[int, np.random.Generator], list[tuple[str, str]]] | None = None
    """``(n, rng) -> [(prompt, completion)]`` for a supervised warm-up, if the task has one."""

    def __post_init__(self) -> None:
        for key in ("max_prompt_tokens", "max_new_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")


# --- helpers -------------------------------------------------------------------------------


def check_sample_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of samples must be an integer >= 0, got {n!r}")


def _shorten(text: str, limit: int = 80) -> str:
    """``repr`` of ``text``, cut to about ``limit`` characters for error messages."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


# --- multi-turn environments ----------------------------------------------------------------


@runtime_checkable
class MultiTurnEnv(Protocol):
    """A conversation: the policy speaks, the env replies (a tool's result, a game's state,
    a verifier's feedback), until the env ends it or the turn or token budget runs out.

    ``reset(seed)`` starts an episode and returns its first prompt; the same seed gives the
    same episode (a GRPO group is one episode played several times). ``step(completion)``
    takes the policy's turn as decoded text (eos removed) and returns ``(reply, reward,
    done)``: the reply is appended to the conversation (not trained on), rewards of all
    turns add up to the episode's."""

    def reset(self, seed: int) -> str: ...

    def step(self, completion: str) -> tuple[str, float, bool]: ...


Segments = list[tuple[str, bool]]
"""A conversation after its prompt as ``(text, trained)`` pieces: the policy's turns
(trained, each closed by eos) and the env's replies (not trained)."""


@dataclass(frozen=True)
class MultiTurnSpec:
    """A multi-turn text env for the LM trainers; picklable, for remote runners."""

    tokenizer: Tokenizer
    make_env: Callable[[], MultiTurnEnv]
    """A fresh env per episode (one per completion of a group)."""
    max_prompt_tokens: int
    """Longest first prompt in tokens, bos included."""
    max_new_tokens: int
    """Token budget of the conversation after the prompt: the policy's turns and the
    replies together (the "completion" the trainers see, with only the policy's tokens
    in its mask)."""
    max_turns: int
    """Policy turns per episode at most."""
    max_turn_tokens: int
    """Tokens per policy turn at most, eos included."""
    warmup_examples: Callable[[int, np.random.Generator], list[tuple[str, Segments]]] | None = None
    """``(n, rng) -> [(prompt, segments)]`` for a supervised warm-up on whole conversations."""

    def __post_init__(self) -> None:
        for key in ("max_prompt_tokens", "max_new_tokens", "max_turns", "max_turn_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")


def check_turn(env: MultiTurnEnv, result: Any, turn: int, completion: str) -> tuple[str, float, bool]:
    """A step's ``(reply, reward, done)``, or a RewardError naming the env, the turn and
    what was wrong (user code in a remote runner fails here, with its context)."""
    name = type(env).__name__
    where = f"turn {turn} (completion {_shorten(completion, 200)})"
    if not (isinstance(result, tuple) and len(result) == 3):
        raise RewardError(f"multi-turn env {name}.step returned {result!r}, not (reply, reward, done), on {where}")
    reply, reward, done = result
    if not isinstance(reply, str):
        raise RewardError(f"multi-turn env {name}.step returned reply {reply!r}, not a string, on {where}")
    value = as_reward(reward, f"multi-turn env {name}.step returned reward", f"on {where}")
    if not isinstance(done, (bool, np.bool_)):
        raise RewardError(f"multi-turn env {name}.step returned done {done!r}, not a bool, on {where}")
    return reply, value, bool(done)
