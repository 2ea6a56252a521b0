"""Multi-turn LM episodes (rl/lm/conversation.py, envs/text.py MultiTurnSpec): conversations
laid out for the trainers with only the policy's tokens trained, by hand; the built-in
calculator tool task; a user's own multi-turn env through the Python API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlfleet.envs.text import CharTokenizer, MultiTurnSpec
from rlfleet.envs.text_tasks import Calculator, make_text_env
from rlfleet.rl.lm.conversation import play
from rlfleet.rl.lm.gpt import GPTConfig
from rlfleet.rl.lm.learner import supervised_sequences

TOK = CharTokenizer()


class Echo:
    """Replies "ok" to the first two turns (reward 0.5 each), ends after the third (reward 1)."""

    def reset(self, seed: int) -> str:
        self.turn = 0
        return f"go{seed % 10}="

    def step(self, completion: str) -> tuple[str, float, bool]:
        self.turn += 1
        if self.turn < 3:
            return "ok", 0.5, False
        return "", 1.0, True


def spec(env=Echo, budget: int = 40, turns: int = 4, turn_tokens: int = 5) -> MultiTurnSpec:
    return MultiTurnSpec(tokenizer=TOK, make_env=env, max_prompt_tokens=5, max_new_tokens=budget, max_turns=turns,
                         max_turn_tokens=turn_tokens)


def model(s: MultiTurnSpec):
    torch.manual_seed(0)
    return GPTConfig(vocab_size=TOK.vocab_size, block_size=s.max_prompt_tokens + s.max_new_tokens, n_layer=1,
                     n_head=2, n_embd=16).build().eval()


def test_a_conversation_trains_only_the_policys_tokens_with_matching_logprobs():
    s = spec()
    lm = model(s)
    out = play(lm, s, [3, 3, 7], temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(0))
    ok = TOK.encode("ok", add_bos=False)
    for i in range(3):
        row, mask = out["sequences"][i, 5:], out["completion_mask"][i]
        real = out["attention_mask"][i, 5:].astype(bool)
        assert out["rewards"][i] == pytest.approx(0.5 + 0.5 + 1.0) and out["turns"][i] == 3
        # the conversation: turn, "ok", turn, "ok", turn; every policy turn ends with eos here or at its cap
        turns = np.split(np.flatnonzero(mask), np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
        assert len(turns) == 3
        for t in turns[:2]:  # each reply follows its turn, and is not trained
            after = row[t[-1] + 1: t[-1] + 1 + len(ok)].tolist()
            assert after == ok and not mask[t[-1] + 1: t[-1] + 1 + len(ok)].any()
        assert real[: int(real.sum())].all() and not real[int(real.sum()):].any()  # right-padded
    # the learner's recomputation of the policy's tokens agrees with the sampler's log-probs
    with torch.no_grad():
        lp = lm.token_logprobs(torch.from_numpy(out["sequences"]), torch.from_numpy(out["attention_mask"]))
    recomputed = lp[:, -s.max_new_tokens:].numpy() * out["completion_mask"]
    np.testing.assert_allclose(recomputed, out["logprobs"] * out["completion_mask"], atol=1e-5)
    assert (out["logprobs"][out["completion_mask"] == 0] == 0).all()


def test_the_token_budget_ends_a_conversation_inside_a_turn():
    s = spec(budget=7, turn_tokens=5)  # room for one turn (<= 5), "ok" (2) and nothing more of the next
    out = play(model(s), s, [1], temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(1))
    assert out["attention_mask"][0, 5:].sum() <= 7
    assert out["rewards"][0] <= 0.5 + 1e-6  # the last turn never reached the env: no end reward


def test_supervised_conversations_learn_the_policy_turns_only():
    seq, attn, mask = supervised_sequences([("1x2+3=", [("(1x2)", True), ("2;", False), ("5", True)])], TOK, 24)
    ids = (TOK.encode("1x2+3=") + TOK.encode("(1x2)", add_bos=False) + [TOK.eos_id] + TOK.encode("2;", add_bos=False)
           + TOK.encode("5", add_bos=False) + [TOK.eos_id])
    assert seq[0, : len(ids)].tolist() == ids and attn[0].sum() == len(ids)
    p = len(TOK.encode("1x2+3="))  # 7: bos and 6 characters
    trained = [p + k for k in range(6)] + [p + 8, p + 9]  # "(1x2)"+eos, then "5"+eos; "2;" is read only
    assert np.flatnonzero(mask[0]).tolist() == [t - 1 for t in trained]  # position t-1 predicts token t


def test_the_calculator_tool_and_its_demonstration():
    env = Calculator(99, tool=True)
    prompt = env.reset(5)
    a, rest = prompt.split("x")
    b, c = rest.rstrip("=").split("+")
    assert env.step(f"({a}x{b})") == (f"{int(a) * int(b)};", 0.0, False)
    assert env.step("(2x+)") == ("error;", 0.0, False)
    assert env.step(str(int(a) * int(b) + int(c))) == ("", 1.0, True)
    plain = Calculator(99, tool=False)
    plain.reset(5)
    assert plain.step(f"({a}x{b})") == ("", 0.0, True)  # no tool: a call is a (wrong) answer
    # the demonstration solves the episode through the env itself
    env.reset(5)
    replies = [env.step(text) for text, trained in env.demonstration() if trained]
    assert [r for r, _, _ in replies[:-1]] == [t for t, trained in env.demonstration() if not trained]
    assert replies[-1][1:] == (1.0, True)


def test_grpo_trains_on_the_calculator_and_a_users_env(tmp_path):
    from rlfleet.algorithms.grpo import GRPOConfig

    small = dict(seed=0, warmup_steps=20, prompts_per_runner=2, group_size=4, minibatch_size=8, n_layer=1,
                 n_head=2, n_embd=16)
    for env, env_config in (("text-calculator", {"warmup_error_rate": 0.3}), (spec(), {})):
        algo = GRPOConfig(env=env, env_config=env_config, **small).build()
        try:
            before = {k: v.copy() for k, v in algo.learner_group.get_weights().items()}
            result = algo.train()
            after = algo.learner_group.get_weights()
            assert result["env_steps"] == 8 and np.isfinite(result["episode_return_mean"])
            assert any(not np.array_equal(before[k], after[k]) for k in before) or result.get(
                "episode_return_mean") in (0.0, 2.0)  # equal rewards in every group: no gradient
            assert 0.0 <= algo.evaluate()["evaluation/episode_return_mean"] <= 2.0
        finally:
            algo.stop()


def test_a_bad_step_result_names_the_env_and_the_turn():
    from rlfleet.envs.text import RewardError

    class Broken(Echo):
        def step(self, completion):
            return "ok", float("nan"), False

    s = spec(env=Broken)
    with pytest.raises(RewardError, match=r"multi-turn env Broken.step returned reward nan, not a finite number, on turn 1"):
        play(model(s), s, [0], temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(0))


def test_text_calculator_config_errors_are_one_line():
    with pytest.raises(ValueError, match="unknown config key 'tools' for text env 'text-calculator'; did you mean 'tool'"):
        make_text_env("text-calculator", {"tools": False})
    with pytest.raises(ValueError, match="tool must be true or false, got 'no'"):
        make_text_env("text-calculator", {"tool": "no"})


def test_lm_ppo_refuses_a_multi_turn_env_in_one_line():
    from rlfleet.algorithms.ppo.lm import LMPPOConfig
    from rlfleet.rl.config import ConfigError

    with pytest.raises(ConfigError, match="lm-ppo does not train multi-turn envs yet .*; use grpo"):
        LMPPOConfig(env="text-calculator", warmup_steps=0, n_layer=1, n_head=2, n_embd=16).build()


def test_an_exception_in_the_users_env_names_the_env_the_method_and_the_turn():
    from rlfleet.envs.text import RewardError

    class Raises(Echo):
        def step(self, completion):
            raise KeyError("no such tool")

    s = spec(env=Raises)
    with pytest.raises(RewardError, match=r"multi-turn env Raises.step\(.*\) raised KeyError: 'no such tool' \(turn 1\)"):
        play(model(s), s, [0], temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(0))
