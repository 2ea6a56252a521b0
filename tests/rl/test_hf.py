"""rlfleet.rl.lm.hf against transformers' own forward pass: tiny randomly initialised GPT-2s, built
locally (nothing is downloaded), so every test runs in well under a second."""

import math
import pickle

import numpy as np
import pytest
import torch

from tests.extras import require_extra

transformers = require_extra("hf", "transformers")

from rlfleet.algorithms.grpo import GRPOConfig  # noqa: E402
from rlfleet.algorithms.grpo.learner import GRPOLearner  # noqa: E402
from rlfleet.envs.text import CharTokenizer, Tokenizer  # noqa: E402
from rlfleet.rl.lm.generator import GeneratorRunner  # noqa: E402
from rlfleet.rl.lm.hf import HFCausalLM, HFSpec, HFTokenizer  # noqa: E402

V, N_POSITIONS = 17, 32
PROMPTS = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3, 5], [8], [9, 7, 9, 3, 2], [3, 8, 4, 6, 2, 6]]
# GPT-2's default dropout (0.1) is kept in the config: the adapter must switch it off.
# initializer_range 0.3 rather than 0.02: at the training init the next-token distribution
# is nearly uniform, so a padding bug barely moves the logits and argmax is a rounding
# call; larger weights give peaked-but-not-degenerate distributions.
TINY = dict(model_type="gpt2", vocab_size=V, n_positions=N_POSITIONS, n_embd=16, n_layer=2, n_head=2,
            bos_token_id=1, eos_token_id=2, initializer_range=0.3)


def tiny_lm(value_head: bool = False, seed: int = 0) -> HFCausalLM:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{k: v for k, v in TINY.items() if k != "model_type"})
    return HFCausalLM(transformers.GPT2LMHeadModel(config), value_head=value_head).eval()


def pad_batch(seqs: list[list[int]], side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest: (B, T) ids and (B, T) mask."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, cols] = torch.tensor(s)
        mask[i, cols] = 1
    return ids, mask


@torch.no_grad()
def reference_logits(lm: HFCausalLM, ids: list[int]) -> torch.Tensor:
    """transformers' own forward of one unpadded sequence: no mask, its default positions,
    none of the adapter's code. (T, V)."""
    return lm.model(torch.tensor([ids])).logits[0]


@torch.no_grad()
def greedy_without_cache(lm: HFCausalLM, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Re-run the whole unpadded sequence through transformers each step and take the
    argmax; also the smallest top-1/top-2 logit gap, so argmax was not a rounding call."""
    ids, min_gap = list(prompt), math.inf
    for _ in range(n):
        logits = reference_logits(lm, ids)[-1]  # (V,)
        top2 = logits.topk(2).values
        min_gap = min(min_gap, float(top2[0] - top2[1]))
        ids.append(int(logits.argmax()))
    return ids[len(prompt):], min_gap


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- forward ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_logits_or_logprobs(side):
    lm = tiny_lm()
    seq = [3, 1, 4, 1, 5, 9, 2]
    alone = reference_logits(lm, seq)  # (7, V)
    # A non-zero pad id: if pads were attended to, their embedding would leak in.
    ids, mask = pad_batch([[6] * 11, seq, [2, 7, 1]], side, pad_id=13)
    logits = lm(ids, mask).logits  # (3, 11, V)
    torch.testing.assert_close(logits[1, mask[1].bool()], alone, atol=1e-5, rtol=0)
    logp = lm.token_logprobs(ids, mask)  # (3, 10)
    pair = (mask[:, :-1] * mask[:, 1:]).bool()  # (3, 10): both tokens real
    expected = torch.log_softmax(alone[:-1], -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    torch.testing.assert_close(logp[1, pair[1]], expected, atol=1e-5, rtol=0)
    assert (logp[~pair] == 0).all()
    # Left pads attend to nothing real: the forward and the gradients must stay finite.
    lm.zero_grad()
    lm.token_logprobs(ids, mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in lm.parameters() if p.grad is not None)


def test_dropout_is_off_so_train_mode_matches_eval_mode():
    lm = tiny_lm()
    assert lm.model.config.resid_pdrop > 0  # the config asks for dropout...
    ids, mask = pad_batch(PROMPTS, "left", pad_id=0)
    eval_logp = lm.token_logprobs(ids, mask)
    lm.train()  # ...the learner's mode, where it would act
    torch.testing.assert_close(lm.token_logprobs(ids, mask), eval_logp, atol=0, rtol=0)


def test_token_logprobs_and_entropy_against_categorical():
    lm = tiny_lm()
    ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    logp, entropy = lm.token_logprobs(ids, with_entropy=True)
    dist = torch.distributions.Categorical(logits=lm.model(ids).logits[:, :-1])
    torch.testing.assert_close(logp, dist.log_prob(ids[:, 1:]), atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, dist.entropy(), atol=1e-6, rtol=0)
    assert logp.dtype == torch.float32 and logp.shape == (2, 4)


def test_value_head_reads_the_last_hidden_state():
    lm = tiny_lm(value_head=True)
    ids, mask = pad_batch(PROMPTS, "left", pad_id=0)
    out = lm(ids, mask)
    assert out.logits.shape == (len(PROMPTS), ids.shape[1], V)
    assert out.values.shape == (len(PROMPTS), ids.shape[1])
    # Unpadded, the value of each token is the head on transformers' final hidden state.
    seq = torch.tensor([PROMPTS[1]])
    hidden = lm.model.transformer(seq).last_hidden_state  # (1, 8, 16)
    torch.testing.assert_close(out.values[1], lm.value_head(hidden)[0, :, 0], atol=1e-5, rtol=0)
    assert tiny_lm()(ids, mask).values is None


def test_too_long_inputs_are_refused_with_the_numbers():
    lm = tiny_lm()
    with pytest.raises(ValueError, match="sequence length 33 > max_position_embeddings 32"):
        lm(torch.zeros((1, 33), dtype=torch.long))
    with pytest.raises(ValueError, match="prompt 1 has 30 tokens.*35 > max_position_embeddings 32"):
        lm.generate([[1, 2], [3] * 30], max_new_tokens=5)
    with pytest.raises(ValueError, match="eos_id 17 is outside the vocabulary"):
        lm.generate([[1, 2]], max_new_tokens=5, eos_id=V)


# -- generate -----------------------------------------------------------------------------


def test_greedy_generate_with_cache_matches_a_no_cache_argmax_loop():
    lm = tiny_lm()
    n = 12
    out = lm.generate(PROMPTS, max_new_tokens=n, temperature=0)
    P = max(len(p) for p in PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        expected, min_gap = greedy_without_cache(lm, prompt, n)
        assert min_gap > 1e-3, "near-tie in the reference: the comparison would be luck"
        assert out["sequences"][i, P:].tolist() == expected
        assert out["sequences"][i, P - len(prompt) : P].tolist() == prompt
    assert out["completion_mask"].all()
    assert out["prompt_lengths"].tolist() == [len(p) for p in PROMPTS]


def sample_with_early_eos(lm: HFCausalLM, n: int, pad_id: int, **decoding) -> tuple[dict, int]:
    """Generate with an eos id that sequence 0 is known to emit by step 2: a probe run
    shows the token it samples at step 2, and the same seed replays the same draws, so
    post-eos padding is exercised for sure, not by luck."""
    probe = lm.generate(PROMPTS, max_new_tokens=n, generator=generator(1), **decoding)
    P = max(len(p) for p in PROMPTS)
    eos_id = int(probe["sequences"][0, P + 2])
    out = lm.generate(PROMPTS, max_new_tokens=n, eos_id=eos_id, pad_id=pad_id, generator=generator(1), **decoding)
    assert out["completion_mask"][0].sum() <= 3
    return out, eos_id


DECODINGS = {
    "greedy": dict(temperature=0.0),
    "temperature1": dict(temperature=1.0),
    "temperature0.7_topk4": dict(temperature=0.7, top_k=4),
    "topp0.8": dict(temperature=1.0, top_p=0.8),
}


@pytest.mark.parametrize("decoding", DECODINGS.values(), ids=DECODINGS.keys())
def test_sampler_logprobs_match_learner_recompute(decoding):
    """The PPO/GRPO ratio of an unchanged policy must be 1: generate's log-probs (plain
    policy, whatever the sampling distribution) equal a fresh forward pass's, on the
    returned left-padded batch and on the same rows packed from the left."""
    lm = tiny_lm()
    n = 10
    out, _ = sample_with_early_eos(lm, n, pad_id=0, **decoding)
    seqs, mask, comp = out["sequences"], out["attention_mask"], out["completion_mask"]
    P = seqs.shape[1] - n

    recomputed = lm.token_logprobs(seqs, mask)[:, P - 1 :]  # (B, N)
    torch.testing.assert_close(recomputed, out["logprobs"], atol=1e-5, rtol=0)
    assert (out["logprobs"][comp == 0] == 0).all()

    rows = [seqs[i][mask[i].bool()].tolist() for i in range(len(PROMPTS))]
    ids, right_mask = pad_batch(rows, "right", pad_id=0)
    logp = lm.token_logprobs(ids, right_mask)
    for i, plen in enumerate(out["prompt_lengths"].tolist()):
        k = int(comp[i].sum())
        torch.testing.assert_close(logp[i, plen - 1 : plen - 1 + k], out["logprobs"][i, :k], atol=1e-5, rtol=0)


def test_eos_then_pad_and_masked():
    lm = tiny_lm()
    n, pad_id = 10, 16
    out, eos_id = sample_with_early_eos(lm, n, pad_id=pad_id, temperature=1.0)
    P = out["sequences"].shape[1] - n
    stopped = 0
    for i in range(len(PROMPTS)):
        completion = out["sequences"][i, P:].tolist()
        if eos_id not in completion:
            assert out["completion_mask"][i].all()
            continue
        stopped += 1
        end = completion.index(eos_id) + 1  # eos itself is part of the completion
        assert out["completion_mask"][i].tolist() == [1] * end + [0] * (n - end)
        assert out["attention_mask"][i, P:].tolist() == [1] * end + [0] * (n - end)
        assert completion[end:] == [pad_id] * (n - end)
        assert (out["logprobs"][i, end:] == 0).all() and (out["logprobs"][i, :end] < 0).all()
    assert stopped >= 1


def test_generate_leaves_the_training_mode_as_it_found_it():
    lm = tiny_lm().train()
    lm.generate([[1, 2]], max_new_tokens=2, generator=generator(0))
    assert lm.training and lm.model.training


# -- spec, loading, tokenizer -------------------------------------------------------------


def test_spec_pickles_and_builds_a_random_model_with_a_value_head():
    spec = HFSpec(config=TINY, value_head=True)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec
    lm = again.build()
    assert isinstance(lm, HFCausalLM) and lm.model.config.n_layer == 2
    ids, mask = pad_batch(PROMPTS, "left", pad_id=0)
    assert lm(ids, mask).values.shape == ids.shape
    # Weights travel as a state dict (tied embedding and LM head included).
    other = spec.build()
    other.load_state_dict(lm.state_dict())
    torch.testing.assert_close(other(ids, mask).logits, lm(ids, mask).logits, atol=0, rtol=0)


def test_spec_loads_a_local_directory(tmp_path):
    lm = tiny_lm()
    lm.model.save_pretrained(tmp_path)
    loaded = pickle.loads(pickle.dumps(HFSpec(path=str(tmp_path)))).build().eval()
    ids, mask = pad_batch(PROMPTS, "left", pad_id=0)
    torch.testing.assert_close(loaded(ids, mask).logits, lm(ids, mask).logits, atol=0, rtol=0)


def test_nothing_is_downloaded_by_default():
    # local_files_only=True: an id that is not on disk fails at once, with no network.
    with pytest.raises(OSError):
        HFCausalLM.from_pretrained("rlfleet-test/no-such-model")


@pytest.mark.parametrize("fields, needle", [
    (dict(), "exactly one of path and config"),
    (dict(path="x", config=TINY), "exactly one of path and config"),
    (dict(config={"vocab_size": V}), "needs a 'model_type'"),
])
def test_spec_refuses_bad_fields(fields, needle):
    with pytest.raises(ValueError, match=needle):
        HFSpec(**fields)


def char_tokenizer(*, pad: bool = True, bos: bool = True) -> "transformers.PreTrainedTokenizerBase":
    """A character-level fast tokenizer built in memory: specials, then digits and ``+= ab``."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{ch: i + 3 for i, ch in enumerate("0123456789+= ab")}}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    raw.decoder = decoders.Fuse()
    specials = dict(eos_token="<eos>", pad_token="<pad>" if pad else None, bos_token="<bos>" if bos else None)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, **specials)


def test_tokenizer_adapter_follows_the_protocol():
    tok = HFTokenizer(char_tokenizer())
    assert isinstance(tok, Tokenizer)
    assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 2, 18)
    assert tok.encode("12+3=") == [1, 4, 5, 13, 6, 14]
    assert tok.encode("12+3=", add_bos=False) == [4, 5, 13, 6, 14]
    answer = tok.encode("15", add_bos=False)
    assert tok.decode(answer + [tok.eos_id] + tok.encode("ab", add_bos=False)) == "15"
    assert tok.decode(np.array([1, *answer, 2, 0, 0]), stop_at_eos=False) == "15"
    assert pickle.loads(pickle.dumps(tok)).encode("ab") == [1, 16, 17]  # remote runners get a copy


def test_tokenizer_without_pad_or_bos_falls_back():
    tok = HFTokenizer(char_tokenizer(pad=False, bos=False))
    assert tok.pad_id == tok.eos_id == 2
    assert tok.encode("1+1=") == tok.encode("1+1=", add_bos=False) == [4, 13, 4, 14]


# -- in the GRPO pipeline -----------------------------------------------------------------


def test_runner_and_learner_run_grpo_on_an_hf_model():
    """A GeneratorRunner samples with the model a GRPO learner built from the same spec;
    the runner's batch (prompts re-padded to max_prompt_tokens) scores the same under the
    learner, and one update moves the weights."""
    n_chars = CharTokenizer().vocab_size  # text-addition's tokenizer
    spec = HFSpec(config={**TINY, "vocab_size": n_chars}, value_head=False)
    config = GRPOConfig(env="text-addition", seed=0, prompts_per_runner=2, group_size=3, minibatch_size=6,
                        device="cpu", warmup_steps=0)
    torch.manual_seed(0)
    learner = GRPOLearner(module_spec=spec, config=config)
    runner = GeneratorRunner(text_env="text-addition", env_config={}, lm_spec=spec, prompts_per_sample=2,
                             group_size=3, temperature=1.0, top_k=None, seed=0)
    before = learner.get_weights()
    runner.set_weights(before, version=1)
    batch = runner.sample().batch
    assert batch["sequences"].shape == (6, 7 + 4)  # max_prompt_tokens "20+20=" with bos, then 4 new

    n_new = batch["completion_mask"].shape[1]
    with torch.no_grad():
        logp = learner.module.token_logprobs(torch.from_numpy(batch["sequences"]),
                                             torch.from_numpy(batch["attention_mask"]))[:, -n_new:]
    np.testing.assert_allclose(logp.numpy() * batch["completion_mask"], batch["logprobs"], atol=1e-5)

    batch["rewards"] = np.array([1, 0, 0, 0, 1, 0], np.float32)  # signal, whatever the random model wrote
    metrics = learner.update(batch, env_steps=0).metrics
    assert metrics["losses/clip_fraction"] == 0.0 and abs(metrics["kl_to_ref"]) < 1e-6  # ratio 1 at step one
    after = learner.get_weights()
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_grpo_post_trains_a_local_hf_model_directory(tmp_path):
    from rlfleet.algorithms.grpo import GRPOConfig
    from rlfleet.envs.text import ListPrompts, TextEnvSpec

    tok = HFTokenizer(char_tokenizer())
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=16,
                                                         n_layer=1, n_head=2)).save_pretrained(tmp_path)
    spec = TextEnvSpec(tokenizer=tok, prompts=ListPrompts(["1+2=", "3+4="]),
                       reward_fn=lambda p, c: float(len(c)),  # varies even for a random model
                       max_prompt_tokens=6, max_new_tokens=3)
    algo = GRPOConfig(env=spec, hf_model=str(tmp_path), seed=0, warmup_steps=0, prompts_per_runner=2, group_size=4,
                      minibatch_size=8).build()
    try:
        before = {k: v.copy() for k, v in algo.learner_group.get_weights().items()}
        result = algo.train()
        after = algo.learner_group.get_weights()
        assert any(not np.array_equal(before[k], after[k]) for k in before)
        assert result["env_steps"] == 8 and abs(result["kl_to_ref"]) < 1e-4  # first update: still the reference
    finally:
        algo.stop()


@pytest.fixture
def hf_dir(tmp_path):
    """A tiny random GPT-2 and its character tokenizer, saved as one local directory."""
    tok = char_tokenizer()
    tok.save_pretrained(tmp_path / "model")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1,
                                                         n_head=2, bos_token_id=1, eos_token_id=2)
                                 ).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_a_named_text_env_speaks_the_hf_models_tokenizer(hf_dir):
    from rlfleet.rl.lm.generator import resolve_text_env

    spec = resolve_text_env(GRPOConfig(env="text-addition", hf_model=str(hf_dir)))
    assert isinstance(spec.tokenizer, HFTokenizer) and spec.tokenizer.encode("12+3=") == [1, 4, 5, 13, 6, 14]
    assert spec.max_prompt_tokens == len("<20+20=")  # bos and 5 characters, counted by this tokenizer
    assert spec.max_new_tokens == 4  # "40" and eos fit the default


def test_train_cli_post_trains_an_hf_model_directory(hf_dir, tmp_path):
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "rlfleet.scripts.train", "--algo", "grpo", "--env", "text-addition",
           "--set", f"hf_model={hf_dir}", "--set", "warmup_steps=5", "--set", "prompts_per_runner=2",
           "--set", "group_size=4", "--set", "minibatch_size=8", "--stop-timesteps", "16",
           "--logdir", str(tmp_path / "run"), "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "progress.jsonl")]
    assert rows[-1]["env_steps"] == 16 and "losses/policy_loss" in rows[-1]

    # a directory that is not there, and a model too small for the tokenizer: exit 2, one line, no run dir
    small_model = tmp_path / "small"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=8, n_positions=32, n_embd=16, n_layer=1,
                                                         n_head=2, bos_token_id=1, eos_token_id=2)
                                 ).save_pretrained(small_model)
    for flags, message in (
        ([f"hf_model={tmp_path / 'nope'}"], f"tokenizer '{tmp_path / 'nope'}' is not a local directory"),
        ([f"hf_model={small_model}", f"hf_tokenizer={hf_dir}"],
         f"hf_model '{small_model}' has 8 embeddings but its tokenizer 18 ids"),
    ):
        cmd = [sys.executable, "-m", "rlfleet.scripts.train", "--algo", "grpo", "--env", "text-addition",
               "--logdir", str(tmp_path / "bad"), "--quiet"] + [a for f in flags for a in ("--set", f)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


CHAT = ("{% for m in messages %}{% if m['role'] == 'assistant' %}a={{ m['content'] }}{{ eos_token }}"
        "{% else %}b={{ m['content'] }}{% endif %} {% endfor %}{% if add_generation_prompt %}a={% endif %}")


class Replier:
    """Replies "ab" to the policy's first turn, ends after its second (reward 1)."""

    def reset(self, seed):
        self.turn = 0
        return f"{seed}+1="

    def step(self, completion):
        self.turn += 1
        return ("ab", 0.0, False) if self.turn == 1 else ("", 1.0, True)


def test_a_chat_template_renders_the_turns_and_only_assistant_tokens_train():
    from rlfleet.envs.text import MultiTurnSpec
    from rlfleet.rl.lm.conversation import play
    from rlfleet.rl.lm.generator import with_chat_budget
    from rlfleet.rl.lm.learner import supervised_sequences

    raw = char_tokenizer()
    raw.chat_template = CHAT
    tok = HFTokenizer(raw)
    chat = tok.chat
    assert chat.first("12+1=") == "b=12+1= a=" and chat.after_turn("ab") == " b=ab a="
    # the pieces put together are the template's own rendering of the conversation
    whole = raw.apply_chat_template([{"role": "user", "content": "12+1="}, {"role": "assistant", "content": "3"},
                                     {"role": "user", "content": "ab"}, {"role": "assistant", "content": "13"}],
                                    tokenize=False)
    assert chat.first("12+1=") + "3<eos>" + chat.after_turn("ab") + "13<eos> " == whole

    spec = with_chat_budget(MultiTurnSpec(tokenizer=tok, make_env=Replier, max_prompt_tokens=6, max_new_tokens=12,
                                          max_turns=2, max_turn_tokens=4))
    assert (spec.max_prompt_tokens, spec.max_new_tokens) == (6 + 4, 12 + 2 * 6)  # "b=" " a=" ; " b=" " a="
    torch.manual_seed(0)
    lm = HFCausalLM(transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=18, n_positions=64, n_embd=16,
                                                                         n_layer=1, n_head=2, bos_token_id=1,
                                                                         eos_token_id=2))).eval()
    out = play(lm, spec, [12, 12], temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        P = spec.max_prompt_tokens
        real = out["attention_mask"][i].astype(bool)
        prompt, convo = out["sequences"][i, :P][real[:P]].tolist(), out["sequences"][i, P:][real[P:]].tolist()
        mask = out["completion_mask"][i][: len(convo)].astype(bool)
        assert prompt == tok.encode("b=12+1= a=", add_bos=False)
        first = convo[: int(np.argmin(mask))]  # the policy's first turn: up to the reply
        reply = tok.encode(" b=ab a=", add_bos=False)
        assert convo[len(first): len(first) + len(reply)] == reply and not mask[len(first): len(first) + len(reply)].any()
        assert mask[len(first) + len(reply):].all() and mask[: len(first)].all()  # the second turn trains again
    with torch.no_grad():  # the learner's recomputation agrees with the sampler on the assistant's tokens
        lp = lm.token_logprobs(torch.from_numpy(out["sequences"]), torch.from_numpy(out["attention_mask"]))
    np.testing.assert_allclose(lp[:, -spec.max_new_tokens:].numpy() * out["completion_mask"],
                               out["logprobs"] * out["completion_mask"], atol=1e-5)
    # the warm-up renders conversations the same way
    seq, attn, loss = supervised_sequences([("12+1=", [("3", True), ("ab", False), ("13", True)])], tok, 40, chat)
    text = raw.decode(seq[0][attn[0].astype(bool)].tolist())
    assert text == "b=12+1= a=3<eos> b=ab a=13<eos>"
    trained = raw.decode(seq[0][1:][loss[0].astype(bool)].tolist())
    assert trained == "3<eos>13<eos>"
