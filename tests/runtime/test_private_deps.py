"""Private names of Ray and torch that rlfleet patches or calls. pyproject.toml pins both
below their next minor version; the next bump of a pin starts here: each name below fails
by name when a version drops it, and every private name the library's source reaches for
must be listed. Where one is gone at run time, the lean Ray start falls back to Ray's own
start and says so in one line."""

from __future__ import annotations

import importlib
import io
import pathlib
import tokenize

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# dotted name -> where it is used and what happens without it
PRIVATE = {
    "ray._private.node.Node.start_api_server": "runtime/lean_start.py lean_start: skipped (falls back, one line)",
    "ray._private.node.Node.start_monitor": "runtime/lean_start.py lean_start: skipped (falls back, one line)",
    "ray._private.node.Node.start_log_monitor": "runtime/lean_start.py lean_start: skipped (falls back, one line)",
    "ray._private.utils.get_dashboard_dependency_error": "runtime/lean_start.py, ray_backend.py: the lean start's minimal agent; "
                                                         "ray_dashboard=true without ray[default]",
    "ray._private.services.get_node": "runtime/lean_start.py lean_start: the node lookup (falls back, one line)",
    # its get_all_node_info lives on instances (delegated): test_prestart's lookup test calls it by name
    "ray._raylet.GcsClient": "runtime/lean_start.py node_lookup_without_second_polls (falls back, one line)",
    "ray._private.worker": "runtime/ray_backend.py StartingRayRuntime: the logger whose SIGTERM warning is dropped",
    "torch._foreach_mul_": "rl/optim.py Adam, rl/learner.py gradient clipping",
    "torch._foreach_add_": "rl/optim.py Adam",
    "torch._foreach_lerp_": "rl/optim.py Adam",
    "torch._foreach_addcmul_": "rl/optim.py Adam",
    "torch._foreach_sqrt": "rl/optim.py Adam",
    "torch._foreach_div_": "rl/optim.py Adam",
    "torch._foreach_addcdiv_": "rl/optim.py Adam",
    "torch._fused_adam_": "rl/optim.py Adam's fused step (the foreach path without it)",
    "torch._foreach_norm": "rl/learner.py gradient clipping",
    "torch.Tensor._version": "rl/models/module.py acting_layers: a parameter changed in place",
}
# the library's own code; scripts/peers/ runs other libraries for comparison
SOURCES = ["rl", "runtime", "algorithms", "envs", "scripts"]
SKIP = ["scripts/peers"]


def resolve(dotted: str) -> object:
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module of {dotted} imports")


@pytest.mark.parametrize("dotted", sorted(PRIVATE))
def test_each_private_name_rlfleet_relies_on_exists(dotted):
    try:
        resolve(dotted)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{dotted} is gone in this version ({e}); used by {PRIVATE[dotted]}", pytrace=False)


def private_names_in(source: str) -> set[str]:
    """``torch._x`` and ``ray._x...`` as the code writes them (``from ray._private import
    node`` gives ``ray._private.node``); strings and comments are not code."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type in (tokenize.NAME, tokenize.OP, tokenize.NEWLINE)]
    found = set()
    for i, t in enumerate(tokens):
        if t.string not in ("torch", "ray") or (i and tokens[i - 1].string == "."):
            continue
        chain, j = [t.string], i + 1
        while j + 1 < len(tokens) and tokens[j].string == "." and tokens[j + 1].type == tokenize.NAME:
            chain.append(tokens[j + 1].string)
            j += 2
        if not any(part.startswith("_") and not part.startswith("__") for part in chain):
            continue
        if i and tokens[i - 1].string == "from" and j < len(tokens) and tokens[j].string == "import":
            k = j + 1  # import a as b, c
            while k < len(tokens) and tokens[k].type != tokenize.NEWLINE:
                if tokens[k].type == tokenize.NAME and tokens[k].string != "as" and tokens[k - 1].string != "as":
                    found.add(".".join(chain + [tokens[k].string]))
                k += 1
        else:
            found.add(".".join(chain))
    return found


def test_every_private_name_in_the_source_is_listed():
    used = {}
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not any(rel.startswith(s) for s in SKIP):
                for name in private_names_in(path.read_text(encoding="utf-8")):
                    used.setdefault(name, rel)
    assert used, "the scan found nothing: it no longer reads the source"
    # an import of a module (ray._private.node) is covered by the names listed under it
    unlisted = {name: rel for name, rel in used.items() if not any(d == name or d.startswith(name + ".") for d in PRIVATE)}
    assert not unlisted, f"private names used but not in PRIVATE (add each, with where it is used): {unlisted}"


def test_the_scan_reads_imports_and_attribute_chains_but_not_strings():
    source = ('from ray._private import node as ray_node, utils\nimport torch\n'
              'torch._foreach_mul_(x, 2)\nlog = "ray._private.worker"  # torch._nothing\ntorch.nn.Linear\n')
    assert private_names_in(source) == {"ray._private.node", "ray._private.utils", "torch._foreach_mul_"}


@pytest.fixture
def ray_backend(monkeypatch):
    from rlfleet.runtime import lean_start as ray_backend

    monkeypatch.setattr(ray_backend, "_fallback_noted", [])  # as in a new process
    return ray_backend


def test_a_missing_lean_start_name_falls_back_with_one_line_once(ray_backend, monkeypatch, capfd):
    from ray._private.node import Node

    monkeypatch.delattr(Node, "start_monitor")
    api_server = Node.start_api_server
    for _ in range(2):  # every start falls back; the line comes once
        with ray_backend.lean_start(True):
            assert not hasattr(Node, "start_monitor") and Node.start_api_server is not api_server  # the rest patched
    assert Node.start_api_server is api_server
    out, err = capfd.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert "lacks ray._private.node.Node.start_monitor;" in err and "falls back to Ray's normal start" in err


def test_a_node_lookup_this_ray_cannot_make_falls_back_to_rays_with_one_line(ray_backend, monkeypatch, capfd):
    import ray._raylet

    monkeypatch.delattr(ray._raylet, "GcsClient")
    lookup = ray_backend.node_lookup_without_second_polls(lambda address, node_id: ("ray's lookup", node_id))
    assert lookup("127.0.0.1:1", "n1") == ("ray's lookup", "n1")
    assert lookup("127.0.0.1:1", "n2") == ("ray's lookup", "n2")
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and "lacks ray._raylet.GcsClient.get_all_node_info;" in err, err


def test_a_lean_start_with_every_name_present_says_nothing(ray_backend, capfd):
    with ray_backend.lean_start(True):
        pass
    assert capfd.readouterr() == ("", "")
