import math
import pickle
import re

import numpy as np
import pytest

from rlfleet.envs.registry import EnvNotFoundError
from rlfleet.envs.text import (
    DEFAULT_ALPHABET,
    CharTokenizer,
    JsonlPrompts,
    ListPrompts,
    Prompt,
    PromptSource,
    RewardError,
    TextEnvSpec,
    Tokenizer,
    check_prompt_lengths,
    score,
)
from rlfleet.envs.text_tasks import TextAdditionTask, make_text_env


def rng(seed=0):
    return np.random.default_rng(seed)


def true_sum(prompt_text):
    """The right answer to an addition prompt "a+b=", worked out independently of the task."""
    a, b = prompt_text.removesuffix("=").split("+")
    return int(a) + int(b)


def write_lines(tmp_path, lines, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- CharTokenizer -------------------------------------------------------------------------


def test_tokenizer_round_trips_every_character_of_its_alphabet():
    tok = CharTokenizer()
    ids = tok.encode(DEFAULT_ALPHABET)
    assert ids[0] == tok.bos_id
    assert len(ids) == len(DEFAULT_ALPHABET) + 1
    assert len(set(ids)) == len(ids)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == DEFAULT_ALPHABET
    assert tok.encode("12+3=", add_bos=False) == tok.encode("12+3=")[1:]


def test_tokenizer_special_ids_are_pad_zero_then_bos_eos():
    tok = CharTokenizer("ab")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 5
    assert tok.encode("ba") == [1, 4, 3]
    assert isinstance(tok, Tokenizer)


def test_decode_skips_specials_and_stops_at_eos_unless_told_not_to():
    tok = CharTokenizer()
    ids = tok.encode("12") + [tok.eos_id] + tok.encode("34", add_bos=False) + [tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "12"
    assert tok.decode(ids, stop_at_eos=False) == "1234"
    assert tok.decode(np.array(ids)) == "12"  # numpy integers as a sampler returns them


def test_encode_unknown_character_names_it_and_the_text():
    expected = r"character 'X' at position 2 is not in the tokenizer's alphabet \(text '1\+X=3'"
    with pytest.raises(ValueError, match=expected):
        CharTokenizer().encode("1+X=3")


def test_decode_id_outside_the_vocabulary_is_an_error():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match=r"token id 7 at position 1 is outside the vocabulary \[0, 5\)"):
        tok.decode([3, 7])


def test_tokenizer_alphabet_must_be_nonempty_and_without_repeats():
    with pytest.raises(ValueError, match="non-empty alphabet"):
        CharTokenizer("")
    with pytest.raises(ValueError, match=r"repeats characters \['a'\]"):
        CharTokenizer("aba")


# --- prompt sources ------------------------------------------------------------------------


def test_list_prompts_from_strings_and_records():
    source = ListPrompts(["hi", {"prompt": "2+2=", "answer": 4, "topic": "math"}])
    assert source.prompts == [Prompt("hi"), Prompt("2+2=", "4", {"topic": "math"})]
    assert isinstance(source, PromptSource)
    batch = source.sample(50, rng(0))
    assert len(batch) == 50
    assert {p.text for p in batch} == {"hi", "2+2="}
    assert source.sample(50, rng(0)) == batch
    assert source.sample(0, rng(0)) == []


def test_list_prompts_errors_name_the_item():
    with pytest.raises(ValueError, match="at least one prompt"):
        ListPrompts([])
    with pytest.raises(ValueError, match=r"prompt 1: no key 'prompt' in the record \(keys: \['text'\]\)"):
        ListPrompts(["ok", {"text": "x"}])
    with pytest.raises(ValueError, match=r"prompt 0: 'prompt' must be a string, got int"):
        ListPrompts([{"prompt": 3}])
    with pytest.raises(ValueError, match="number of samples must be an integer >= 0, got -1"):
        ListPrompts(["a"]).sample(-1, rng())


def test_jsonl_prompts_read_records_and_skip_blank_lines(tmp_path):
    path = write_lines(tmp_path, ['{"q": "1+1=", "answer": "2"}', "", '{"q": "2+3=", "answer": 5, "id": 7}'])
    source = JsonlPrompts(path, text_key="q")
    assert source.prompts == [Prompt("1+1=", "2"), Prompt("2+3=", "5", {"id": 7})]
    assert len(source) == 2


def test_jsonl_invalid_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": "c"'], name="bad.jsonl")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: invalid JSON"):
        JsonlPrompts(path)


def test_jsonl_missing_key_names_file_line_and_key(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "a"}', "", '{"question": "b"}'], name="keys.jsonl")
    expected = r"keys\.jsonl, line 3: no key 'prompt' in the record \(keys: \['question'\]\)"
    with pytest.raises(ValueError, match=expected):
        JsonlPrompts(path)


def test_jsonl_line_that_is_not_a_record_names_the_line(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "a"}', "[1, 2]"])
    with pytest.raises(ValueError, match=r"line 2: expected a string or a record with key 'prompt', got list"):
        JsonlPrompts(path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_jsonl_empty_file_names_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"empty\.jsonl: no prompts, the file is empty"):
        JsonlPrompts(path)


# --- score -----------------------------------------------------------------------------------


def test_score_returns_one_float_per_pair():
    prompts = [Prompt("a", "x"), Prompt("b", "y")]
    rewards = score(lambda p, c: float(c == p.answer), prompts, ["x", "z"])
    assert rewards.dtype == np.float64
    np.testing.assert_array_equal(rewards, [1.0, 0.0])


def test_score_reports_a_raising_reward_fn_with_prompt_and_completion():
    def picky(prompt, completion):
        if completion == "boom":
            raise KeyError("no such field")
        return 0.0

    expected = r"picky raised KeyError: 'no such field'; on prompt 1 'what is 2\+2\?' with completion 'boom'"
    with pytest.raises(RewardError, match=expected) as info:
        score(picky, [Prompt("fine"), Prompt("what is 2+2?")], ["ok", "boom"])
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_score_rejects_non_finite_rewards_naming_the_prompt(bad):
    expected = rf"returned {bad}, not a finite number, for prompt 0 '3\+4=' with completion '7'"
    with pytest.raises(RewardError, match=expected):
        score(lambda p, c: bad, [Prompt("3+4=")], ["7"])


def test_score_rejects_non_numbers_and_truncates_long_prompts():
    long_text = "x" * 500
    expected = r"returned None, not a number, for prompt 0 'x{80}'\.\.\. \(500 chars\)"
    with pytest.raises(RewardError, match=expected) as info:
        score(lambda p, c: None, [Prompt(long_text)], ["c"])
    assert long_text not in str(info.value)


def test_score_needs_one_completion_per_prompt():
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        score(lambda p, c: 0.0, [Prompt("a"), Prompt("b")], ["x"])


# --- check_prompt_lengths ------------------------------------------------------------------


def test_prompt_length_check_counts_bos_and_names_the_first_too_long_prompt():
    tok = CharTokenizer()
    prompts = [Prompt("1+1="), Prompt("10+10="), Prompt("100+100=")]
    check_prompt_lengths(prompts, tok, max_prompt_tokens=9)  # "100+100=" is 8 chars + bos
    expected = r"prompt 1 '10\+10=' is 7 tokens, over max_prompt_tokens 6 \(1 more of 3 prompts are too long\)"
    with pytest.raises(ValueError, match=expected):
        check_prompt_lengths(prompts, tok, max_prompt_tokens=6)


def test_prompt_length_check_names_an_untokenizable_prompt():
    with pytest.raises(ValueError, match=r"prompt 1 cannot be tokenized: character 'A'"):
        check_prompt_lengths([Prompt("ok"), Prompt("A")], CharTokenizer(), 10)
    with pytest.raises(ValueError, match="max_prompt_tokens must be >= 1, got 0"):
        check_prompt_lengths([Prompt("ok")], CharTokenizer(), 0)


# --- TextAdditionTask ----------------------------------------------------------------------


def test_addition_prompts_have_the_format_and_cover_the_operand_range():
    task = TextAdditionTask(max_operand=3)
    prompts = task.sample(400, rng(1))
    seen = set()
    for p in prompts:
        match = re.fullmatch(r"(\d+)\+(\d+)=", p.text)
        assert match, p.text
        a, b = int(match[1]), int(match[2])
        assert p.answer == str(a + b)
        seen.add((a, b))
    assert seen == {(a, b) for a in range(4) for b in range(4)}


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("12", 1.0),
        (" 12", 1.0),
        ("12\n", 1.0),
        ("12abc", 1.0),
        ("12 13", 1.0),  # only the leading number counts
        ("13", 0.0),
        ("", 0.0),
        ("1 2", 0.0),  # cut at the space: "1"
        ("012", 0.0),  # leading zero is not the answer's text
        ("-12", 0.0),
        ("123", 0.0),
        ("abc12", 0.0),
    ],
)
def test_addition_reward_rule(completion, reward):
    assert TextAdditionTask().reward(Prompt("5+7=", "12"), completion) == reward


def test_addition_reward_on_a_decoded_completion_with_eos_and_padding():
    tok = CharTokenizer()
    ids = tok.encode("12", add_bos=False) + [tok.eos_id, tok.pad_id]
    assert TextAdditionTask().reward(Prompt("5+7=", "12"), tok.decode(ids)) == 1.0


def test_addition_reward_without_an_answer_is_reported_by_score():
    task = TextAdditionTask()
    expected = r"TextAdditionTask\.reward raised ValueError: .*needs prompt\.answer.*prompt 0 '5\+7='"
    with pytest.raises(RewardError, match=expected):
        score(task.reward, [Prompt("5+7=")], ["12"])


def test_supervised_examples_are_all_correct_by_default():
    task = TextAdditionTask(max_operand=9)
    examples = task.supervised_examples(200, rng(2))
    assert all(task.reward(Prompt(p, str(true_sum(p))), c) == 1.0 for p, c in examples)


@pytest.mark.parametrize("error_rate", [0.0, 0.3, 0.75, 1.0])
def test_warmup_error_rate_and_wrong_answers_stay_near_and_in_range(error_rate):
    task = TextAdditionTask(max_operand=5)
    examples = task.supervised_examples(1000, rng(3), error_rate=error_rate)
    wrong = 0
    for prompt, completion in examples:
        right = true_sum(prompt)
        if int(completion) != right:
            wrong += 1
            assert 1 <= abs(int(completion) - right) <= 3
        assert 0 <= int(completion) <= task.max_answer
    assert abs(wrong / 1000 - error_rate) <= 0.01


def test_addition_task_is_reproducible_from_seeds():
    task = TextAdditionTask()
    assert task.sample(20, rng(7)) == task.sample(20, rng(7))
    assert task.sample(20, rng(7)) != task.sample(20, rng(8))
    assert task.supervised_examples(20, rng(7), error_rate=0.5) == task.supervised_examples(20, rng(7), error_rate=0.5)
    assert TextAdditionTask(seed=4).eval_prompts(20) == TextAdditionTask(seed=4).eval_prompts(20)
    assert TextAdditionTask(seed=4).eval_prompts(20) != TextAdditionTask(seed=5).eval_prompts(20)


def test_addition_task_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_operand must be an integer >= 1, got 0"):
        TextAdditionTask(max_operand=0)
    with pytest.raises(ValueError, match=r"error_rate must be a number in \[0, 1\], got 1.5"):
        TextAdditionTask().supervised_examples(4, rng(), error_rate=1.5)


# --- make_text_env -------------------------------------------------------------------------


def test_text_addition_spec_fits_its_prompts_and_answers():
    spec = make_text_env("text-addition")
    assert isinstance(spec.prompts, TextAdditionTask) and spec.prompts.max_operand == 20
    assert spec.max_new_tokens == 4
    assert spec.max_prompt_tokens == len("20+20=") + 1
    prompts = spec.prompts.sample(500, rng(0))
    check_prompt_lengths(prompts, spec.tokenizer, spec.max_prompt_tokens)
    completions = [p.answer for p in prompts]
    assert max(len(spec.tokenizer.encode(c, add_bos=False)) + 1 for c in completions) <= spec.max_new_tokens
    np.testing.assert_array_equal(score(spec.reward_fn, prompts, completions), np.ones(500))


def test_text_addition_config_and_warmup():
    spec = make_text_env("text-addition", {"max_operand": 499, "max_new_tokens": 5, "warmup_error_rate": 0.5})
    assert spec.max_prompt_tokens == len("499+499=") + 1
    examples = spec.warmup_examples(100, rng(0))
    rewards = score(spec.reward_fn, [Prompt(p, str(true_sum(p))) for p, _ in examples], [c for _, c in examples])
    assert rewards.mean() == 0.5


def test_text_env_spec_survives_pickling_for_remote_runners():
    spec = pickle.loads(pickle.dumps(make_text_env("text-addition", {"warmup_error_rate": 0.2})))
    assert spec.reward_fn(Prompt("1+2=", "3"), "3") == 1.0
    assert len(spec.warmup_examples(5, rng())) == 5


def test_make_text_env_errors_name_the_closest_valid_choice():
    with pytest.raises(EnvNotFoundError, match=r"unknown text env 'text-additon'; did you mean 'text-addition'\?"):
        make_text_env("text-additon")
    expected = r"unknown config key 'max_operands' for text env 'text-addition'; did you mean 'max_operand'\?"
    with pytest.raises(ValueError, match=expected):
        make_text_env("text-addition", {"max_operands": 5})
    with pytest.raises(ValueError, match=r"max_new_tokens 4 < 5, .* largest answer 1000 and eos \(max_operand 500\)"):
        make_text_env("text-addition", {"max_operand": 500})
    with pytest.raises(ValueError, match=r"error_rate must be a number in \[0, 1\], got -0.1"):
        make_text_env("text-addition", {"warmup_error_rate": -0.1})


def test_text_env_spec_checks_token_budgets():
    task = TextAdditionTask()
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0"):
        TextEnvSpec(CharTokenizer(), task, task.reward, max_prompt_tokens=8, max_new_tokens=0)
