"""Text tasks by name: the built-in ``text-addition`` and ``text-jsonl`` (a prompt file and
a reward function by import path), and the registry ``make_text_env`` resolves names in."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rlfleet.envs.registry import EnvNotFoundError
from rlfleet.envs.text import (
    CharTokenizer,
    JsonlPrompts,
    MultiTurnSpec,
    Prompt,
    RewardFn,
    Segments,
    TextEnvSpec,
    Tokenizer,
    check_prompt_lengths,
    check_sample_count,
)


# --- the built-in task: addition -----------------------------------------------------------


def leading_digits(completion: str) -> str:
    """The number a completion starts with: strip surrounding whitespace, then keep the
    ASCII digits up to the first other character (``" 12abc"`` -> ``"12"``, ``"1 2"`` ->
    ``"1"``, ``"-3"`` -> ``""``). ASCII only: ``str.isdigit`` would also take ``"²"``."""
    text = completion.strip()
    end = 0
    while end < len(text) and text[end] in string.digits:
        end += 1
    return text[:end]


class TextAdditionTask:
    """Prompts ``"a+b="`` with ``a`` and ``b`` uniform in ``[0, max_operand]``; the answer
    is ``str(a + b)``.

    Reward rule (:meth:`reward`): 1.0 when :func:`leading_digits` of the completion equals
    the answer exactly, else 0.0. So ``"12"``, ``" 12"`` and ``"12abc"`` are right for
    12; ``"13"``, ``""``, ``"1 2"`` and ``"012"`` are wrong. Text after the number is not
    penalised: eos or ``max_new_tokens`` ends the episode, and a format penalty would mix
    a second signal into a task meant to measure whether RL improves accuracy.

    ``seed`` fixes :meth:`eval_prompts`, the same evaluation set in every run; training
    prompts come from the ``rng`` handed to :meth:`sample`.
    """

    def __init__(self, max_operand: int = 20, *, seed: int = 0) -> None:
        if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 1:
            raise ValueError(f"max_operand must be an integer >= 1, got {max_operand!r}")
        self.max_operand = max_operand
        self.seed = seed

    @property
    def max_answer(self) -> int:
        return 2 * self.max_operand

    def sample(self, n: int, rng: np.random.Generator) -> list[Prompt]:
        return [Prompt(f"{a}+{b}=", str(a + b)) for a, b in self._operands(n, rng)]

    def eval_prompts(self, n: int) -> list[Prompt]:
        """``n`` prompts that depend only on ``seed``: compare checkpoints on one set."""
        return self.sample(n, np.random.default_rng(self.seed))

    def reward(self, prompt: Prompt, completion: str) -> float:
        """1.0 if the completion's leading number is the answer, else 0.0 (see the class)."""
        if prompt.answer is None:
            raise ValueError(f"TextAdditionTask.reward needs prompt.answer; prompt {prompt.text!r} has none")
        return 1.0 if leading_digits(completion) == prompt.answer else 0.0

    def supervised_examples(
        self, n: int, rng: np.random.Generator, *, error_rate: float = 0.0
    ) -> list[tuple[str, str]]:
        """``n`` (prompt, completion) pairs for a supervised warm-up; completions carry no
        eos (append ``tokenizer.eos_id`` to the targets so the model learns to stop).

        Exactly ``round(error_rate * n)`` completions, at random positions, are wrong by
        1 to 3 either way, kept within ``[0, max_answer]``: a model warmed up on them
        writes the format and numbers of the right size but is often wrong, which leaves
        RL something to fix. ``max_operand >= 1`` guarantees a wrong value in range.
        """
        check_sample_count(n)
        _check_error_rate(error_rate)
        operands = self._operands(n, rng)
        wrong = set(rng.choice(n, size=int(round(error_rate * n)), replace=False).tolist())
        examples = []
        for i, (a, b) in enumerate(operands):
            total = a + b
            if i in wrong:
                near = [total + d for d in (-3, -2, -1, 1, 2, 3) if 0 <= total + d <= self.max_answer]
                total = near[int(rng.integers(len(near)))]
            examples.append((f"{a}+{b}=", str(total)))
        return examples

    def _operands(self, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        check_sample_count(n)
        pairs = rng.integers(0, self.max_operand + 1, size=(n, 2))  # (n, 2)
        return [(int(a), int(b)) for a, b in pairs]


# --- the registry ---------------------------------------------------------------------


_TEXT_ENVS: dict[str, Callable[[dict[str, Any]], TextEnvSpec]] = {}


def register_text_env(name: str, creator: Callable[[dict[str, Any]], TextEnvSpec]) -> None:
    """Register ``creator(config) -> TextEnvSpec`` under ``name``."""
    _TEXT_ENVS[name] = creator


def registered_text_envs() -> list[str]:
    return sorted(_TEXT_ENVS)


def make_text_env(name: str, config: Mapping[str, Any] | None = None, *,
                  tokenizer: Tokenizer | None = None) -> TextEnvSpec:
    """The spec registered as ``name``, built from ``config``; unknown names and config
    keys are errors that name the closest valid one. ``tokenizer`` replaces the env's own
    (character) tokenizer; it is handed to the creator as ``tokenizer=``."""
    creator = _TEXT_ENVS.get(name)
    if creator is None:
        close = difflib.get_close_matches(name, registered_text_envs(), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EnvNotFoundError(f"unknown text env {name!r}{hint} (registered: {', '.join(registered_text_envs())})")
    if tokenizer is None:
        return creator(dict(config or {}))
    if "tokenizer" not in inspect.signature(creator).parameters:
        raise ValueError(f"text env {name!r} takes no tokenizer of another model: its creator has no "
                         "tokenizer= parameter")
    return creator(dict(config or {}), tokenizer=tokenizer)


def _check_config_keys(env_name: str, config: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in config:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown config key {key!r} for text env {env_name!r}{hint} (valid: {', '.join(valid)})")


def _make_text_addition(config: dict[str, Any], tokenizer: Tokenizer | None = None) -> TextEnvSpec:
    """``text-addition``: config keys ``max_operand`` (20), ``max_new_tokens`` (4),
    ``seed`` (0, the evaluation set) and ``warmup_error_rate`` (0.0); ``tokenizer`` (an
    LM config's ``hf_model``/``hf_tokenizer``) replaces the character tokenizer."""
    _check_config_keys("text-addition", config, ("max_operand", "max_new_tokens", "seed", "warmup_error_rate"))
    task = TextAdditionTask(config.get("max_operand", 20), seed=config.get("seed", 0))
    warmup_error_rate = config.get("warmup_error_rate", 0.0)
    _check_error_rate(warmup_error_rate)  # now, not when the warm-up first runs
    tokenizer = tokenizer or CharTokenizer()
    # the longest answer in tokens, then eos; and the longest prompt as this tokenizer counts
    # (every operand when few, else the 100 largest and the one-digit ones: tokenizers that
    # merge digits differ most there)
    operands = list(range(task.max_operand + 1))
    if len(operands) > 100:
        operands = operands[:10] + operands[-100:]
    needed = max(len(tokenizer.encode(str(a + b), add_bos=False)) for a in operands for b in operands) + 1
    max_new_tokens = config.get("max_new_tokens", 4)
    if isinstance(max_new_tokens, int) and max_new_tokens < needed:
        raise ValueError(
            f"text-addition: max_new_tokens {max_new_tokens} < {needed}, the tokens needed to write "
            f"the largest answer {task.max_answer} and eos (max_operand {task.max_operand})"
        )
    return TextEnvSpec(
        tokenizer=tokenizer,
        prompts=task,
        reward_fn=task.reward,
        max_prompt_tokens=max(len(tokenizer.encode(f"{a}+{b}=")) for a in operands for b in operands),
        max_new_tokens=max_new_tokens,
        warmup_examples=functools.partial(task.supervised_examples, error_rate=warmup_error_rate),
    )


register_text_env("text-addition", _make_text_addition)


def _import_reward(spec: str) -> RewardFn:
    """``"package.module:function"`` -> the function (the reward of a user's task)."""
    module, sep, name = spec.partition(":")
    if not sep:
        raise ValueError(f"reward must be 'module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import reward {spec!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    return fn


def _make_text_jsonl(config: dict[str, Any], tokenizer: Tokenizer | None = None) -> TextEnvSpec:
    """``text-jsonl``: prompts from a JSONL file, scored by a reward function named by
    import path. Config keys: ``path``, ``reward`` ("module:function" taking (Prompt, str)),
    ``max_new_tokens`` (16), ``max_prompt_tokens`` (the context left for prompts; default
    the longest prompt), ``text_key`` ("prompt"), ``answer_key`` ("answer")."""
    valid = ("path", "reward", "max_new_tokens", "max_prompt_tokens", "text_key", "answer_key")
    _check_config_keys("text-jsonl", config, valid)
    for key in ("path", "reward"):
        if key not in config:
            raise ValueError(f"text-jsonl needs config key {key!r}")
    prompts = JsonlPrompts(config["path"], text_key=config.get("text_key", "prompt"),
                           answer_key=config.get("answer_key", "answer"))
    tokenizer = tokenizer or CharTokenizer()
    longest = max(len(tokenizer.encode(p.text)) for p in prompts.prompts)
    max_prompt_tokens = config.get("max_prompt_tokens", longest)
    check_prompt_lengths(prompts.prompts, tokenizer, max_prompt_tokens)
    return TextEnvSpec(tokenizer=tokenizer, prompts=prompts, reward_fn=_import_reward(config["reward"]),
                       max_prompt_tokens=max_prompt_tokens, max_new_tokens=config.get("max_new_tokens", 16))


register_text_env("text-jsonl", _make_text_jsonl)


# --- helpers -------------------------------------------------------------------------------


def _check_error_rate(error_rate: float) -> None:
    if isinstance(error_rate, bool) or not isinstance(error_rate, (int, float)) or not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be a number in [0, 1], got {error_rate!r}")


# --- a multi-turn task with a tool -------------------------------------------------------------


class Calculator:
    """``text-calculator``, one episode: "a x b + c =" with a, b in [2, max_operand] and c in
    [0, max_operand]. With the tool, a turn written as ``(expression)`` of numbers, ``x``
    and ``+`` is a call: the reply is its value and ``;`` (``error;`` when it does not
    parse). Any other turn is the final answer: reward 1 when it is the prompt's value,
    else 0, and the episode ends. Without the tool the first turn is the answer."""

    def __init__(self, max_operand: int = 99, tool: bool = True) -> None:
        self.max_operand, self.tool = max_operand, tool

    def reset(self, seed: int) -> str:
        rng = np.random.default_rng(seed)
        self.a, self.b = (int(x) for x in rng.integers(2, self.max_operand + 1, 2))
        self.c = int(rng.integers(0, self.max_operand + 1))
        return f"{self.a}x{self.b}+{self.c}="

    @property
    def answer(self) -> int:
        return self.a * self.b + self.c

    def step(self, completion: str) -> tuple[str, float, bool]:
        text = completion.strip()
        if self.tool and text.startswith("(") and text.endswith(")"):
            value = _calculate(text[1:-1])
            return ("error;" if value is None else f"{value};"), 0.0, False
        return "", float(text == str(self.answer)), True

    def demonstration(self) -> list[tuple[str, bool]]:
        """The conversation that solves this episode (the supervised warm-up's)."""
        if not self.tool:
            return [(str(self.answer), True)]
        product = self.a * self.b
        return [(f"({self.a}x{self.b})", True), (f"{product};", False), (f"({product}+{self.c})", True),
                (f"{self.answer};", False), (str(self.answer), True)]


def _calculate(expression: str) -> int | None:
    """The value of numbers joined by ``x`` (times, first) and ``+``; None when it does not parse."""
    total = 0
    for term in expression.split("+"):
        factors = term.split("x")
        if not all(f.isdigit() and len(f) <= 6 for f in factors):
            return None
        product = 1
        for f in factors:
            product *= int(f)
        total += product
    return total


@dataclasses.dataclass(frozen=True)
class _CalculatorFactory:
    """Picklable ``() -> Calculator`` (the spec travels to remote runners)."""

    max_operand: int
    tool: bool

    def __call__(self) -> Calculator:
        return Calculator(self.max_operand, self.tool)


def _calculator_warmup(n: int, rng: np.random.Generator, *, max_operand: int, tool: bool,
                       error_rate: float) -> list[tuple[str, Segments]]:
    """``n`` solved episodes; a share ``error_rate`` of them end in an answer off by 1-3."""
    _check_error_rate(error_rate)
    wrong = set(rng.choice(n, size=int(round(error_rate * n)), replace=False).tolist())
    examples = []
    for i in range(n):
        env = Calculator(max_operand, tool)
        prompt = env.reset(int(rng.integers(0, 2**31 - 1)))
        segments = env.demonstration()
        if i in wrong:
            off = env.answer + int(rng.choice([-3, -2, -1, 1, 2, 3]))
            segments = segments[:-1] + [(str(max(off, 0)), True)]
        examples.append((prompt, segments))
    return examples


def _make_text_calculator(config: dict[str, Any], tokenizer: Tokenizer | None = None) -> MultiTurnSpec:
    """``text-calculator``: config keys ``tool`` (true), ``max_operand`` (99),
    ``max_turns`` (4) and ``warmup_error_rate`` (0.0); ``tokenizer`` as for text-addition."""
    _check_config_keys("text-calculator", config, ("tool", "max_operand", "max_turns", "warmup_error_rate"))
    tool, max_operand = config.get("tool", True), config.get("max_operand", 99)
    if not isinstance(tool, bool):
        raise ValueError(f"text-calculator: tool must be true or false, got {tool!r}")
    if isinstance(max_operand, bool) or not isinstance(max_operand, int) or not 2 <= max_operand <= 9999:
        raise ValueError(f"text-calculator: max_operand must be an integer in [2, 9999], got {max_operand!r}")
    error_rate = config.get("warmup_error_rate", 0.0)
    _check_error_rate(error_rate)
    tokenizer = tokenizer or CharTokenizer()
    largest = Calculator(max_operand, tool)
    largest.a = largest.b = largest.c = max_operand
    conversation = sum(len(tokenizer.encode(text, add_bos=False)) + int(trained)
                       for text, trained in largest.demonstration())
    return MultiTurnSpec(
        tokenizer=tokenizer, make_env=_CalculatorFactory(max_operand, tool),
        max_prompt_tokens=len(tokenizer.encode(f"{max_operand}x{max_operand}+{max_operand}=")),
        max_new_tokens=conversation + 8, max_turns=config.get("max_turns", 4),
        max_turn_tokens=len(tokenizer.encode(f"({max_operand * max_operand}+{max_operand})", add_bos=False)) + 2,
        warmup_examples=functools.partial(_calculator_warmup, max_operand=max_operand, tool=tool,
                                          error_rate=error_rate),
    )


register_text_env("text-calculator", _make_text_calculator)
