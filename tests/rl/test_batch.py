import numpy as np

from rlfleet.rl.batch import concat_batches, flatten_time, num_rows, take_rows


def make_batch(T: int, B: int, offset: float) -> dict:
    """A time-major batch with a dict obs and two action leaves; values encode (t, b)."""
    t = np.arange(T)[:, None]
    b = np.arange(B)[None, :]
    code = (offset + 10 * t + b).astype(np.float32)  # (T, B): 10 t + b, shifted per batch
    return {
        "obs": {
            "pos": np.stack([code, -code], -1),  # (T, B, 2)
            "mode": code.astype(np.int64),  # (T, B)
        },
        "actions": [code.astype(np.int64), np.repeat(code[..., None], 3, -1)],  # (T, B), (T, B, 3)
        "rewards": code,
        "terminated": (code % 2 == 0),
    }


def test_concat_batches_joins_envs_side_by_side_on_nested_columns():
    a, b = make_batch(4, 2, 0.0), make_batch(4, 3, 100.0)
    out = concat_batches([a, b])
    assert out["obs"]["pos"].shape == (4, 5, 2)
    assert out["obs"]["mode"].shape == (4, 5)
    assert isinstance(out["actions"], list) and len(out["actions"]) == 2
    assert out["actions"][0].shape == (4, 5)
    assert out["actions"][1].shape == (4, 5, 3)
    # env columns 0..1 come from a, 2..4 from b, at every time step
    np.testing.assert_array_equal(out["rewards"][:, :2], a["rewards"])
    np.testing.assert_array_equal(out["rewards"][:, 2:], b["rewards"])
    np.testing.assert_array_equal(out["obs"]["pos"][:, 2:], b["obs"]["pos"])
    np.testing.assert_array_equal(out["actions"][1][:, :2], a["actions"][1])
    np.testing.assert_array_equal(out["terminated"][:, 2:], b["terminated"])
    assert out["obs"]["mode"].dtype == np.int64
    assert out["terminated"].dtype == bool


def test_concat_batches_along_time_axis():
    a, b = make_batch(2, 3, 0.0), make_batch(5, 3, 100.0)
    out = concat_batches([a, b], axis=0)
    assert out["rewards"].shape == (7, 3)
    np.testing.assert_array_equal(out["rewards"][2:], b["rewards"])
    np.testing.assert_array_equal(out["obs"]["pos"][:2], a["obs"]["pos"])


def test_concat_of_one_batch_is_that_batch():
    a = make_batch(3, 2, 0.0)
    out = concat_batches([a])
    np.testing.assert_array_equal(out["rewards"], a["rewards"])
    np.testing.assert_array_equal(out["obs"]["pos"], a["obs"]["pos"])


def test_flatten_time_row_t_times_b_plus_b_is_step_t_env_b():
    T, B = 4, 3
    batch = make_batch(T, B, 0.0)
    flat = flatten_time(batch)
    assert flat["rewards"].shape == (T * B,)
    assert flat["obs"]["pos"].shape == (T * B, 2)
    assert flat["actions"][1].shape == (T * B, 3)
    for t in range(T):
        for b in range(B):
            row = t * B + b
            assert flat["rewards"][row] == 10 * t + b
            np.testing.assert_array_equal(flat["obs"]["pos"][row], batch["obs"]["pos"][t, b])
            assert flat["obs"]["mode"][row] == batch["obs"]["mode"][t, b]
            np.testing.assert_array_equal(flat["actions"][1][row], batch["actions"][1][t, b])
            assert flat["terminated"][row] == batch["terminated"][t, b]


def test_num_rows_counts_leading_axis():
    assert num_rows(flatten_time(make_batch(4, 3, 0.0))) == 12
    assert num_rows(make_batch(4, 3, 0.0)) == 4


def test_take_rows_with_index_array_and_slice_keeps_structure():
    flat = flatten_time(make_batch(3, 2, 0.0))  # rewards by row: 0 1 10 11 20 21
    idx = np.array([5, 0, 3])
    out = take_rows(flat, idx)
    np.testing.assert_array_equal(out["rewards"], [21.0, 0.0, 11.0])
    np.testing.assert_array_equal(out["obs"]["pos"], [[21.0, -21.0], [0.0, -0.0], [11.0, -11.0]])
    np.testing.assert_array_equal(out["obs"]["mode"], [21, 0, 11])
    assert isinstance(out["actions"], list)
    np.testing.assert_array_equal(out["actions"][0], [21, 0, 11])
    np.testing.assert_array_equal(out["actions"][1], [[21.0] * 3, [0.0] * 3, [11.0] * 3])

    sliced = take_rows(flat, slice(2, 4))
    np.testing.assert_array_equal(sliced["rewards"], [10.0, 11.0])
    np.testing.assert_array_equal(sliced["terminated"], [True, False])
