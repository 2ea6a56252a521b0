import re

import numpy as np
import pytest
import torch

from rlfleet.algorithms.grpo import GRPOConfig
from rlfleet.rl.lm.learner import supervised_sequences
from rlfleet.envs.registry import EnvNotFoundError
from rlfleet.envs.text import CharTokenizer


def small(**kw):
    base = dict(env="text-addition", env_config={"warmup_error_rate": 0.5}, seed=0, warmup_steps=20,
                prompts_per_runner=4, group_size=4, minibatch_size=16, n_layer=1, n_head=2, n_embd=16)
    return GRPOConfig(**{**base, **kw})


def test_runner_logprobs_match_the_learners_recomputation():
    # The classic sampler/trainer mismatch, through the whole pipeline: the runner's batch
    # (prompts re-padded on the left to a fixed width) scored by the learner's module.
    algo = small(temperature=1.0).build()
    try:
        frag = algo.env_runner_group.sample()[0]
        b = frag.batch
        learner = algo.learner_group.learner
        n_new = b["completion_mask"].shape[1]
        with torch.no_grad():
            lp = learner.module.token_logprobs(torch.from_numpy(b["sequences"]), torch.from_numpy(b["attention_mask"]))
        recomputed = lp[:, -n_new:].numpy() * b["completion_mask"]
        np.testing.assert_allclose(recomputed, b["logprobs"] * b["completion_mask"], atol=1e-5)
        assert b["completion_mask"].sum() > 0
    finally:
        algo.stop()


def test_supervised_sequences_mask_only_the_answer_and_eos():
    tok = CharTokenizer()
    seq, attn, mask = supervised_sequences([("1+2=", "3")], tok, length=10)
    ids = tok.encode("1+2=") + tok.encode("3", add_bos=False) + [tok.eos_id]  # bos 1 + 2 = 3 eos
    assert seq[0, : len(ids)].tolist() == ids and attn[0].sum() == len(ids)
    # next-token position t predicts token t+1: the answer '3' sits at index 5, eos at 6
    assert np.flatnonzero(mask[0]).tolist() == [4, 5]


def test_grpo_trains_and_reports_the_lm_metrics():
    algo = small().build()
    try:
        before = {k: v.copy() for k, v in algo.learner_group.get_weights().items()}
        for _ in range(2):
            result = algo.train()
        after = algo.learner_group.get_weights()
        assert any(not np.array_equal(before[k], after[k]) for k in before)
        for key in ("episode_return_mean", "kl_to_ref", "response_length_mean", "tokens_per_s", "losses/policy_loss"):
            assert key in result and np.isfinite(result[key]), key
        assert result["env_steps"] == 2 * 4 * 4  # completions
        assert 0.0 <= result["episode_return_mean"] <= 1.0
        assert 0.0 <= algo.evaluate()["evaluation/episode_return_mean"] <= 1.0
    finally:
        algo.stop()


def test_kl_coef_zero_skips_the_reference():
    algo = small(kl_coef=0.0).build()
    try:
        assert algo.learner_group.learner.reference is None
        assert "kl_to_ref" not in algo.train()
    finally:
        algo.stop()


def test_unknown_text_env_names_the_closest():
    with pytest.raises(EnvNotFoundError, match="text-addition"):
        small(env="text-adition").build()


def test_a_checkpoint_answers_prompts_in_three_lines(tmp_path):
    algo = small().build()
    algo.train()
    algo.save(str(tmp_path))
    expected = algo.complete(["12+7=", "3+4="])
    algo.stop()
    from rlfleet.algorithms.grpo import GRPO

    loaded = GRPO.from_checkpoint(str(tmp_path))
    try:
        assert loaded.complete(["12+7=", "3+4="]) == expected  # greedy: the same policy answers the same
        assert loaded.iteration == 1
    finally:
        loaded.stop()


REWARDS = '''
def exact(prompt, completion):
    return float(completion.strip() == (prompt.answer or ""))

def nan(prompt, completion):
    return float("nan")
'''


@pytest.fixture
def jsonl_task(tmp_path, monkeypatch):
    (tmp_path / "task_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    good = tmp_path / "prompts.jsonl"
    good.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n')
    return tmp_path, good


def test_jsonl_prompts_and_a_reward_by_import_path_train(jsonl_task):
    _, good = jsonl_task
    algo = small(env="text-jsonl", env_config={"path": str(good), "reward": "task_rewards:exact", "max_new_tokens": 4},
                 warmup_steps=0).build()
    try:
        assert 0.0 <= algo.train()["episode_return_mean"] <= 1.0
    finally:
        algo.stop()


@pytest.mark.parametrize("content,extra,needle", [
    ('{"prompt": "1+1="}\n{"prompt": 2+2=}\n', {}, "line 2: invalid JSON"),
    ("", {}, "no prompts, the file is empty"),
    ('{"prompt": "1+1=", "answer": "2"}\n', {"max_prompt_tokens": 3}, "prompt 0 '1+1=' is 5 tokens, over max_prompt_tokens 3"),
])
def test_bad_prompt_files_are_one_clear_error(jsonl_task, content, extra, needle):
    from rlfleet.rl.config import ConfigError

    path = jsonl_task[0] / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        small(env="text-jsonl", env_config={"path": str(path), "reward": "task_rewards:exact", **extra}).build()


def test_a_reward_returning_nan_names_the_prompt(jsonl_task):
    from rlfleet.envs.text import RewardError

    _, good = jsonl_task
    algo = small(env="text-jsonl", env_config={"path": str(good), "reward": "task_rewards:nan"}, warmup_steps=0).build()
    try:
        with pytest.raises(RewardError, match=r"returned nan.*for prompt \d+ '\d\+\d='"):
            algo.train()
    finally:
        algo.stop()


def test_dynamic_sampling_drops_equal_groups_and_refills_with_whole_groups(monkeypatch):
    """Two scripted rounds of 3 groups of 2: round 1 keeps group 1 only, round 2 groups 0
    and 2; the batch is those 3 groups, whole and in order, and the counts are logged."""
    from types import SimpleNamespace

    from rlfleet.algorithms.grpo.algorithm import GRPO
    from rlfleet.rl.lm.algorithm import LMAlgorithm

    rounds = iter([np.array([1, 1, 0, 1, 0, 0], np.float32), np.array([0, 1, 1, 1, 1, 0], np.float32)])
    calls = []

    def one_round(self):
        rewards = next(rounds)
        calls.append(len(calls))
        return {"rewards": rewards, "round": np.full(6, len(calls)), "row": np.arange(6)}, {}

    monkeypatch.setattr(LMAlgorithm, "collect_batch", one_round)
    algo = object.__new__(GRPO)
    algo.config, algo.text_env = small(loss_variant="dapo", group_size=2), SimpleNamespace(max_new_tokens=8)
    batch, metrics = algo.collect_batch()
    assert list(zip(batch["round"], batch["row"])) == [(1, 2), (1, 3), (2, 0), (2, 1), (2, 4), (2, 5)]
    assert metrics == {"dynamic_sampling/rounds": 2, "dynamic_sampling/groups_dropped": 3,
                       "dynamic_sampling/groups_kept": 3}
    # nothing informative within max_sampling_rounds: no batch, no update, the rounds counted
    rounds = iter([np.ones(6, np.float32)] * 2)
    algo.config = small(loss_variant="dapo", group_size=2, max_sampling_rounds=2)
    batch, metrics = algo.collect_batch()
    assert batch is None and metrics["dynamic_sampling/rounds"] == 2 and metrics["dynamic_sampling/groups_dropped"] == 6


@pytest.mark.parametrize("variant, extra", [("dapo", {"kl_mode": "reward"}), ("gspo", {}), ("dr_grpo", {})])
def test_each_loss_variant_trains_end_to_end(variant, extra):
    algo = small(loss_variant=variant, **extra).build()
    try:
        before = {k: v.copy() for k, v in algo.learner_group.get_weights().items()}
        result = algo.train()
        after = algo.learner_group.get_weights()
        assert any(not np.array_equal(before[k], after[k]) for k in before) or result.get(
            "dynamic_sampling/groups_kept") == 0
        assert np.isfinite(result["episode_return_mean"])
        # the KL as a reward penalty is no loss term
        assert ("kl_to_ref" in result) == (extra.get("kl_mode", "loss") == "loss" and "losses/policy_loss" in result)
        if variant == "dapo":
            assert result["env_steps"] == 16 * result["dynamic_sampling/rounds"]  # every round's completions count
    finally:
        algo.stop()


def _reference_logprobs(module, batch):
    n_new = batch["completion_mask"].shape[1]
    with torch.no_grad():
        lp = module.token_logprobs(torch.from_numpy(batch["sequences"]), torch.from_numpy(batch["attention_mask"]))
    return lp[:, -n_new:].numpy() * batch["completion_mask"]


def test_reference_in_runners_scores_with_the_frozen_reference_not_the_policy():
    algo = small(reference_in_runners=True, lr=3e-3).build()
    try:
        algo.train()
        algo.train()  # the policy has moved away from the reference
        learner, runner = algo.learner_group.learner, algo.env_runner_group.group.actors[0]
        b = algo.env_runner_group.sample()[0].batch
        mask = b["completion_mask"]
        np.testing.assert_allclose(b["ref_logprobs"] * mask, _reference_logprobs(learner.reference, b), atol=1e-5)
        policy = _reference_logprobs(learner.module, b)
        assert np.abs(policy - b["ref_logprobs"] * mask).max() > 1e-3  # so the check above can fail
        assert runner.reference_id == 1  # loaded once, not again with every broadcast
    finally:
        algo.stop()


def _lm_ppo(**kw):
    from rlfleet.algorithms.ppo.lm import LMPPOConfig

    return LMPPOConfig(env="text-addition", seed=0, warmup_steps=20, prompts_per_runner=8, group_size=2,
                       minibatch_size=8, n_layer=1, n_head=2, n_embd=16, **kw)


@pytest.mark.parametrize("make", [
    small,
    _lm_ppo,  # KL folded into token rewards, value head in the reference too
    lambda **kw: small(env="text-calculator", env_config={"warmup_error_rate": 0.5}, lr=1e-2, **kw),  # conversations
], ids=["grpo", "lm-ppo", "multi-turn"])
def test_reference_in_runners_learns_exactly_as_the_learners_reference(make):
    results = {}
    for where in (False, True):
        algo = make(reference_in_runners=where).build()
        try:
            results[where] = [algo.train() for _ in range(3)]
        finally:
            algo.stop()
    for a, b in zip(results[False], results[True]):
        for key in ("kl_to_ref", "losses/policy_loss", "episode_return_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert results[True][-1]["kl_to_ref"] > 1e-4  # the policy has left the reference: a wrong one would show


def test_a_restored_run_sends_the_checkpoints_reference_to_the_runners(tmp_path):
    first = small(reference_in_runners=True, lr=3e-3).build()
    try:
        for _ in range(3):
            first.train()
        path = first.save(str(tmp_path / "checkpoint"))
        saved_reference = {k: v.clone() for k, v in first.learner_group.learner.reference.state_dict().items()}
    finally:
        first.stop()
    second = small(reference_in_runners=True, lr=3e-3, warmup_steps=0, seed=7).build()
    try:
        runner = second.env_runner_group.group.actors[0]
        before = runner.reference_id
        assert not torch.equal(runner.reference.state_dict()["wte.weight"], saved_reference["wte.weight"])
        second.restore(path)
        assert runner.reference_id != before
        for k, v in runner.reference.state_dict().items():
            torch.testing.assert_close(v, saved_reference[k])
    finally:
        second.stop()


def test_a_stalled_weight_sync_ends_the_run_naming_the_runner(shared_ray):
    from rlfleet.algorithms.grpo.algorithm import GRPO
    from rlfleet.rl.runners.env_runner_group import RunnerFailureError, WeightSyncTimeoutError
    from tests.fleet_envs import StallingGeneratorFactory as StallingFactory

    class StallingGRPO(GRPO):
        runner_factory_class = StallingFactory

    algo = StallingGRPO(small(num_env_runners=1, weight_sync_timeout_s=2.0))
    try:
        result = algo.train()  # broadcasts version 2 in time, and says how long it took
        assert 0.0 < result["weight_sync_s"] < 2.0
        with pytest.raises(WeightSyncTimeoutError, match=re.escape(
                "weight sync: env runner 0 did not take weights version 3 within weight_sync_timeout_s=2 s")):
            algo.train()
        assert issubclass(WeightSyncTimeoutError, RunnerFailureError)  # train.py: exit 3, one line
    finally:
        algo.stop()


def test_sync_rollouts_log_importance_ratios_of_one():
    algo = small(kl_coef=0.0).build()
    try:
        result = algo.train()
    finally:
        algo.stop()
    # one epoch, sampled by these very weights: the sampler's and the learner's policy agree
    assert result["importance/ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    assert result["importance/outside_0.8_1.25"] == 0.0 and result["num_stale_completions"] == 0


@pytest.mark.parametrize("max_staleness, requests", [(0, 1), (1, 1), (2, 2)])
def test_async_rollouts_never_train_on_completions_staler_than_k(shared_ray, max_staleness, requests):
    import collections

    algo = small(num_env_runners=2, async_rollouts=True, max_staleness=max_staleness, tis_cap=2.0,
                 kl_coef=0.0, requests_per_runner=requests).build()
    lags, trained = [], []
    update = algo.learner_group.update

    def spy(batch, **kw):
        lags.extend((algo.weights_version - batch["weights_version"]).tolist())
        trained.append(len(batch["rewards"]))
        return update(batch, **kw)

    algo.learner_group.update = spy
    try:
        results = [algo.train() for _ in range(8)]
        # every runner holds its requests: the next fragments are on their way while the driver learns
        assert collections.Counter(algo.env_runner_group.in_flight.values()) == {0: requests, 1: requests}
    finally:
        algo.stop()
    last = results[-1]
    assert lags and max(lags) <= max_staleness
    print(f"k={max_staleness}: lags {sorted(set(lags))}, stale {last['num_stale_completions']}, trained {sum(trained)}")
    if max_staleness == 0:  # a runner asked again before the update samples with the old weights: dropped
        assert last["num_stale_completions"] > 0
    # every completion that arrived was trained on or dropped as stale, and counted
    assert last["env_steps"] == sum(trained) + last["num_stale_completions"]
    assert last["weights_version"] == 1 + len(trained)  # one new version per update, runners not waited for
    assert min(trained) >= 2 * 4 * 4  # every update takes at least a synchronous round's completions
    assert last["tokens_trained_total"] <= last["tokens_total"]
    assert all(np.isfinite(r["importance/ratio_mean"]) for r in results if "importance/ratio_mean" in r)
