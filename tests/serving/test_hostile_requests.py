"""What a served model makes of hostile request bodies and of a checkpoint file caught
mid-write, without a server: one-line ``BadRequest`` (HTTP 400) for the first, the loaded
weights serving on, quietly, for the second."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from gymnasium import spaces

from rlfleet.rl.inference import parse_observations
from rlfleet.scripts.tools.serving import PolicyService
from rlfleet.runtime.base import BadRequest
from tests.extras import needs_extra
from tests.serving.conftest import train

IMAGE = spaces.Box(0, 255, (84, 84, 4), np.uint8)


def b64_leaf(shape, data: bytes = b"", dtype: str = "uint8") -> dict:
    import base64

    return {"b64": base64.b64encode(data).decode(), "dtype": dtype, "shape": shape}


@pytest.mark.parametrize("shape,message", [
    ([2**32, 2**32], "observation: shape (4294967296, 4294967296), expected (84, 84, 4) (one observation)"),
    ([2**40, 84, 84, 4], "observation: 0 bytes do not fill shape (1099511627776, 84, 84, 4) of uint8"),
    ([2**64, 84, 84, 4], "observation: 0 bytes do not fill shape (18446744073709551616, 84, 84, 4) of uint8"),
    ([84, -84, -4], "observation: b64 shape must be a list of non-negative integers, got [84, -84, -4]"),
    ([84.0, 84, 4], "observation: b64 shape must be a list of non-negative integers, got [84.0, 84, 4]"),
    ("84", "observation: b64 shape must be a list of non-negative integers, got '84'"),
    ([True, 84, 84, 4], "observation: b64 shape must be a list of non-negative integers"),
    ([1] * 100, "observation: shape (1, 1, 1"),
])
def test_a_b64_leaf_with_a_hostile_shape_is_a_bad_request(shape, message):
    with pytest.raises(BadRequest) as e:
        parse_observations(b64_leaf(shape), IMAGE, spaces.Discrete(2), max_batch=8)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_b64_leaf_that_fits_still_decodes():
    frames = np.arange(2 * 84 * 84 * 4, dtype=np.uint8).reshape(2, 84, 84, 4)
    obs, single = parse_observations(b64_leaf([2, 84, 84, 4], frames.tobytes()), IMAGE, spaces.Discrete(2), max_batch=8)
    assert not single and np.array_equal(obs, frames)
    with pytest.raises(BadRequest, match="b64 dtype must be a name such as 'uint8', got"):
        parse_observations({**b64_leaf([84, 84, 4]), "dtype": {"x": 1}}, IMAGE, spaces.Discrete(2), max_batch=8)


@pytest.mark.parametrize("body,message", [
    (b'{"obs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "body nests deeper than 100 levels"),
    (b'{"obs": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"}", "body nests deeper than 100 levels"),
    (b'{"obs": ' + b"[" * 101 + b"]" * 101 + b"}", "body nests deeper than 100 levels"),
    (b'{"obs": [1' + b"0" * 5000 + b"]}", "body is not valid JSON"),
    (b'{"obs": "\xff"}', "body is not valid JSON"),
    (b'{"obs": ', "body is not valid JSON"),
])
@needs_extra("serve", "ray.serve")
def test_a_hostile_body_is_a_bad_request_in_one_line(body, message):
    from rlfleet.runtime.serving import decode_body

    with pytest.raises(BadRequest) as e:
        decode_body(body)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert decode_body(b'{"obs": ' + b"[" * 98 + b"]" * 98 + b"}") == {"obs": json.loads("[" * 98 + "]" * 98)}


# -- --watch and a checkpoint caught mid-write -----------------------------------------------------


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """(a copy of an older checkpoint directory, of a newer one) of the same run."""
    root = tmp_path_factory.mktemp("versions")
    path = root / "checkpoint"
    train("ppo-cartpole", path, iterations=1)
    old = shutil.copytree(path, root / "old")
    train("ppo-cartpole", path, iterations=2)
    new = shutil.copytree(path, root / "new")
    return old, new


def versions(service: PolicyService) -> int:
    obs = np.zeros(4, np.float32).tolist()
    (item,) = [service.parse("/act", {"obs": obs})]
    return service.run("/act", [item])[0]["weights_version"]


def test_watch_serves_the_loaded_weights_while_the_checkpoint_is_half_written_then_loads_it(two_versions, tmp_path):
    old, new = two_versions
    directory = tmp_path / "checkpoint"
    shutil.copytree(old, directory)
    service = PolicyService(str(directory))
    before = versions(service)
    shutil.copy(new / "state.json", directory / "state.json")  # a copy in place, caught halfway
    weights = (new / "model.safetensors").read_bytes()
    with open(directory / "model.safetensors", "wb") as f:
        f.write(weights[: len(weights) // 2])
    for _ in range(3):
        service.watch()  # does not raise, twice on the same half file included
        assert versions(service) == before
    shutil.rmtree(directory)  # a directory swapped for a new one: missing for a moment
    service.watch()
    assert versions(service) == before
    shutil.copytree(new, directory)
    service.watch()
    assert versions(service) == before + 1


def test_watch_logs_a_checkpoint_that_stays_unloadable_once(two_versions, tmp_path, caplog):
    old, new = two_versions
    directory = shutil.copytree(old, tmp_path / "checkpoint")
    service = PolicyService(str(directory / "state.json"))  # the directory named by its file
    (directory / "model.safetensors").write_bytes((new / "model.safetensors").read_bytes()[:100])
    with caplog.at_level("WARNING", logger="rlfleet.scripts.tools.serving"):
        for _ in range(4):
            service.watch()
    assert len(caplog.records) == 1 and "does not load" in caplog.records[0].getMessage()
    # asked for, a reload says why it failed (the request that asks is about reloading)
    with pytest.raises(BadRequest, match="reload failed, still serving the loaded weights: corrupt checkpoint"):
        service.reload()
    # the service read, never wrote
    assert (directory / "model.safetensors").read_bytes() == (new / "model.safetensors").read_bytes()[:100]
    assert sorted(os.listdir(directory)) == sorted(os.listdir(old))
