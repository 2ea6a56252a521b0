"""Multi-turn rollouts: episodes that are conversations (envs/text.py ``MultiTurnSpec``).

A batch of episodes is played turn by turn: every live conversation so far (its prompt,
the policy's earlier turns and the env's replies) is the context of one batched
``generate`` call; each policy turn goes to its env, whose reply joins the conversation.
The result has the single-turn layout of rl/lm/generator.py, with the whole conversation
after the prompt as the "completion" region: the policy's tokens are in
``completion_mask`` (trained, with their sampling log-probs), the replies are not (the
model reads them, nothing is learned from them). So GRPO and LM-PPO train on it unchanged.
With an HF tokenizer that has a chat template, the prompt and every reply are rendered
with it (the reply as a user message) and the trained tokens are the assistant's turns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlfleet.envs.text import MultiTurnSpec, RewardError, check_turn


def play(model: Any, spec: MultiTurnSpec, seeds: list[int], *, temperature: float | None, top_k: int | None,
         generator: torch.Generator | None) -> dict[str, Any]:
    """One episode per seed (equal seeds: the same episode, a group). Returns the batch
    columns ``sequences``, ``attention_mask``, ``completion_mask``, ``logprobs`` (the
    rl/lm/generator.py layout, prompts left-padded to ``max_prompt_tokens``, conversations
    right-padded to ``max_new_tokens``), ``rewards`` (sum over turns), ``turns`` and
    ``transcripts`` (the conversation after the prompt, as text)."""
    tok, C = spec.tokenizer, spec.max_new_tokens
    chat = getattr(tok, "chat", None)  # an HF tokenizer's chat template (rl/lm/hf.py ChatTurns)
    envs = [spec.make_env() for _ in seeds]
    firsts = [_call(env, "reset", int(seed), turn=0) for env, seed in zip(envs, seeds)]
    for env, first in zip(envs, firsts):
        if not isinstance(first, str):
            raise RewardError(f"multi-turn env {type(env).__name__}.reset returned {first!r}, not a prompt string")
    if chat is None:
        prompts = [tok.encode(first) for first in firsts]
    else:  # the template writes any bos itself
        prompts = [tok.encode(chat.first(first), add_bos=False) for first in firsts]
    for first, ids in zip(firsts, prompts):
        if len(ids) > spec.max_prompt_tokens:
            raise RewardError(f"multi-turn env {type(envs[0]).__name__}: first prompt {first[:80]!r} is {len(ids)} "
                              f"tokens, over max_prompt_tokens {spec.max_prompt_tokens}")
    n = len(seeds)
    convo: list[list[int]] = [[] for _ in range(n)]
    trained: list[list[bool]] = [[] for _ in range(n)]
    logp: list[list[float]] = [[] for _ in range(n)]
    rewards, turns = np.zeros(n, np.float32), np.zeros(n, np.int64)
    transcripts = [""] * n
    live = list(range(n))
    for turn in range(spec.max_turns):
        live = [i for i in live if len(convo[i]) < C]
        if not live:
            break
        limit = getattr(model, "max_length", None) or spec.max_prompt_tokens + C
        budget = min(spec.max_turn_tokens, limit - max(len(prompts[i]) + len(convo[i]) for i in live))
        if budget < 1:
            break
        with torch.inference_mode():
            out = model.generate([prompts[i] + convo[i] for i in live], max_new_tokens=budget, temperature=temperature,
                                 top_k=top_k, eos_id=tok.eos_id, pad_id=tok.pad_id, generator=generator)
        ended = []
        for k, i in enumerate(live):
            mask = out["completion_mask"][k].bool()
            ids = out["sequences"][k, -budget:][mask].tolist()[: C - len(convo[i])]  # within the conversation budget
            convo[i] += ids
            trained[i] += [True] * len(ids)
            logp[i] += out["logprobs"][k][mask].tolist()[: len(ids)]
            turns[i] += 1
            text = tok.decode(ids)
            transcripts[i] += text + "\u2402"  # a visible turn end in transcripts
            if len(convo[i]) >= C:  # the budget ran out inside the policy's turn: the env never hears it
                ended.append(i)
                continue
            reply, reward, done = check_turn(envs[i], _call(envs[i], "step", text, turn=turn + 1), turn + 1, text)
            rewards[i] += reward
            transcripts[i] += reply
            if done:
                ended.append(i)
                continue
            reply_ids = tok.encode(reply if chat is None else chat.after_turn(reply), add_bos=False)[: C - len(convo[i])]
            convo[i] += reply_ids
            trained[i] += [False] * len(reply_ids)
            logp[i] += [0.0] * len(reply_ids)
        live = [i for i in live if i not in ended]
    P = spec.max_prompt_tokens
    sequences = np.full((n, P + C), tok.pad_id, np.int64)
    attention = np.zeros((n, P + C), np.int64)
    completion_mask = np.zeros((n, C), np.float32)
    logprobs = np.zeros((n, C), np.float32)
    for i in range(n):
        p, c = prompts[i], convo[i]
        sequences[i, P - len(p):P], attention[i, P - len(p):P] = p, 1
        sequences[i, P:P + len(c)], attention[i, P:P + len(c)] = c, 1
        completion_mask[i, :len(c)] = trained[i]
        logprobs[i, :len(c)] = logp[i]
    return {"sequences": sequences, "attention_mask": attention, "completion_mask": completion_mask,
            "logprobs": logprobs, "rewards": rewards, "turns": turns, "transcripts": transcripts}


def _call(env: Any, method: str, arg: Any, *, turn: int) -> Any:
    """User code: an exception in it is one RewardError naming the env, the method, the
    turn and the argument (a remote runner's failure says where it came from)."""
    try:
        return getattr(env, method)(arg)
    except Exception as e:
        shown = repr(arg) if len(repr(arg)) <= 200 else repr(arg)[:200] + "..."
        raise RewardError(f"multi-turn env {type(env).__name__}.{method}({shown}) raised {type(e).__name__}: {e} "
                          f"(turn {turn})") from e
