
import numpy as np
import pytest
import torch

from rlfleet.algorithms.grpo import GRPOConfig
from rlfleet.envs.text import CharTokenizer, ListPrompts, Prompt, TextEnvSpec, score
from rlfleet.rl.lm.gpt import GPTConfig
from rlfleet.rl.lm.reward_model import ModelReward


def reward_model(seed=0):
    torch.manual_seed(seed)
    tok = CharTokenizer()
    return ModelReward(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                 value_head=True).build(), tok), tok


def test_the_score_is_the_value_at_the_last_real_token_batched_or_not():
    rm, tok = reward_model()
    prompts = [Prompt("1+2=", "3"), Prompt("10+10=", "20")]
    completions = ["3", "20"]
    batch = rm.score_batch(prompts, completions)
    singles = [rm(p, c) for p, c in zip(prompts, completions)]
    np.testing.assert_allclose(batch.numpy(), singles, atol=1e-5)
    ids = torch.tensor([tok.encode("1+2=") + tok.encode("3", add_bos=False)])
    assert rm.model(ids, torch.ones_like(ids)).values[0, -1].item() == pytest.approx(singles[0], abs=1e-5)
    assert score(rm, prompts, completions).shape == (2,)


def test_a_model_without_a_value_head_is_refused():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="needs a value head"):
        ModelReward(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16).build(), tok)


def test_grpo_trains_against_a_reward_model_given_as_a_text_env_spec():
    rm, tok = reward_model()
    spec = TextEnvSpec(tokenizer=tok, prompts=ListPrompts(["1+2=", "3+4=", "5+6="]), reward_fn=rm,
                       max_prompt_tokens=6, max_new_tokens=3)
    algo = GRPOConfig(env=spec, seed=0, warmup_steps=0, prompts_per_runner=3, group_size=4, minibatch_size=12,
                      n_layer=1, n_head=2, n_embd=16).build()
    try:
        result = algo.train()
        assert np.isfinite(result["episode_return_mean"]) and result["env_steps"] == 12
    finally:
        algo.stop()
