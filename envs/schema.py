"""Spaces as plain, JSON- and msgpack-safe data: checkpoints, ``GET /metadata``, export
contracts and the external-simulator protocol describe spaces this way."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import tree
from gymnasium import spaces


class SpaceSchemaError(ValueError):
    """A space schema that does not describe a supported space."""


def _bound(values: np.ndarray) -> Any:
    """Box bounds as JSON-safe data: one number when all are equal, else nested lists;
    infinities as the strings "inf" and "-inf" (JSON has no infinity)."""
    flat = values.reshape(-1)
    if flat.size and (flat == flat[0]).all():
        values = flat[:1].reshape(())
    as_list = values.tolist()
    return tree.map_structure(lambda x: ("inf" if x > 0 else "-inf") if np.isinf(x) else x, as_list)


def space_to_schema(space: gym.Space) -> dict[str, Any]:
    """A space as plain, JSON-safe data; :func:`space_from_schema` inverts it."""
    if isinstance(space, spaces.Box):
        return {"type": "box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "multi_discrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "multi_binary", "n": int(space.n) if np.ndim(space.n) == 0 else list(space.n)}
    if isinstance(space, spaces.Dict):
        return {"type": "dict", "spaces": {key: space_to_schema(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "tuple", "spaces": [space_to_schema(sub) for sub in space.spaces]}
    raise SpaceSchemaError(f"no schema for space {space}")


def space_from_schema(schema: Any) -> gym.Space:
    if not isinstance(schema, dict) or "type" not in schema:
        raise SpaceSchemaError(f"a space schema is a mapping with a 'type', got {schema!r}")
    kind = schema["type"]
    try:
        if kind == "box":
            shape, dtype = tuple(schema["shape"]), np.dtype(schema["dtype"])

            def bound(x: Any) -> np.ndarray:
                values = np.asarray(tree.map_structure(float, x), np.float64)
                return np.broadcast_to(values, shape).astype(dtype)
            return spaces.Box(bound(schema["low"]), bound(schema["high"]), shape, dtype)
        if kind == "discrete":
            return spaces.Discrete(int(schema["n"]), start=int(schema.get("start", 0)))
        if kind == "multi_discrete":
            return spaces.MultiDiscrete(schema["nvec"], start=schema.get("start"))
        if kind == "multi_binary":
            return spaces.MultiBinary(schema["n"])
        if kind == "dict":
            return spaces.Dict({key: space_from_schema(sub) for key, sub in schema["spaces"].items()})
        if kind == "tuple":
            return spaces.Tuple([space_from_schema(sub) for sub in schema["spaces"]])
    except (KeyError, TypeError, ValueError) as e:
        raise SpaceSchemaError(f"bad {kind!r} space schema {schema!r}: {type(e).__name__}: {e}") from None
    raise SpaceSchemaError(f"unknown space type {kind!r} (known: box, discrete, multi_discrete, multi_binary, "
                           "dict, tuple)")
