import numpy as np

from rlfleet.algorithms import get_config_class
from rlfleet.algorithms.ppo import PPOConfig
from rlfleet.algorithms.ppo.lm import LMPPOConfig, token_rewards


def test_token_rewards_fold_the_kl_penalty_and_put_the_reward_on_the_last_token():
    # Row 0: 3 completion tokens, reward 1; row 1: 1 token (eos at once), reward 0.
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
    old = np.array([[-1.0, -2.0, -0.5, -9.0], [-0.3, -9.0, -9.0, -9.0]], np.float32)
    ref = np.array([[-1.5, -2.0, -1.0, 0.0], [-0.1, 0.0, 0.0, 0.0]], np.float32)
    r = token_rewards(np.array([1.0, 0.0]), old, ref, mask, kl_coef=0.1)
    # -0.1 * (old - ref) = [-0.05, 0, -0.05] and [+0.02]; +reward on the last token
    np.testing.assert_allclose(r, [[-0.05, 0.0, 0.95, 0.0], [0.02, 0.0, 0.0, 0.0]], atol=1e-6)


def test_ppo_on_a_text_env_resolves_to_the_lm_variant():
    assert get_config_class("ppo", "text-addition") is LMPPOConfig
    assert get_config_class("ppo", "CartPole-v1") is PPOConfig
    assert get_config_class("ppo") is PPOConfig


def test_lm_ppo_trains_with_a_value_head_and_reports_the_lm_metrics():
    algo = LMPPOConfig(env="text-addition", seed=0, warmup_steps=20, prompts_per_runner=8, group_size=2,
                       minibatch_size=8, n_layer=1, n_head=2, n_embd=16).build()
    try:
        assert algo.learner_group.learner.module.value_head is not None
        before = {k: v.copy() for k, v in algo.learner_group.get_weights().items()}
        for _ in range(2):
            result = algo.train()
        after = algo.learner_group.get_weights()
        assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("value_head"))
        for key in ("episode_return_mean", "kl_to_ref", "response_length_mean", "tokens_per_s",
                    "losses/value_loss", "losses/clip_fraction"):
            assert key in result and np.isfinite(result[key]), key
        assert result["env_steps"] == 2 * 8 * 2
    finally:
        algo.stop()
