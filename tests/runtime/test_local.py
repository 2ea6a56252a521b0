import pytest

from rlfleet.runtime import LocalRuntime, ObjectRef, make_runtime


class Counter:
    """A stand-in actor: records its index, what it was given, and whether it stopped."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.received: list = []
        self.stopped = False

    def whoami(self) -> int:
        return self.index

    def add(self, a: int, b: int) -> int:
        return self.index * 100 + a + b

    def take(self, obj):
        self.received.append(obj)
        return id(obj)

    def stop(self) -> None:
        self.stopped = True


def make_group(n: int, log: list | None = None):
    def factory(i: int) -> Counter:
        actor = Counter(i)
        if log is not None:
            log.append(actor)
        return actor

    return LocalRuntime().create_group(factory, n, num_cpus=1.0)


def test_make_runtime_local():
    assert isinstance(make_runtime("local"), LocalRuntime)
    with pytest.raises(ValueError, match="'spark'"):
        make_runtime("spark")


def test_create_group_builds_n_actors_each_with_its_index():
    built: list[Counter] = []
    group = make_group(4, built)
    assert group.size == 4
    assert [a.index for a in built] == [0, 1, 2, 3]
    results = group.call("whoami")
    assert [(r.index, r.value) for r in results] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert all(r.ok and r.error is None for r in results)


def test_call_on_all_actors_passes_args():
    group = make_group(3)
    assert [r.value for r in group.call("add", 2, 5)] == [7, 107, 207]


def test_call_on_chosen_indices_only():
    built: list[Counter] = []
    group = make_group(4, built)
    results = group.call("take", "x", indices=[3, 1])
    assert [r.index for r in results] == [3, 1]
    assert [len(a.received) for a in built] == [0, 1, 0, 1]
    assert group.call("add", 1, 1, indices=[]) == []


def test_object_ref_is_resolved_to_the_same_object_for_every_actor():
    runtime = LocalRuntime()
    built: list[Counter] = []

    def factory(i: int) -> Counter:
        built.append(Counter(i))
        return built[-1]

    group = runtime.create_group(factory, 3)
    weights = {"w": [1.0, 2.0, 3.0]}
    ref = runtime.put(weights)
    assert isinstance(ref, ObjectRef)
    ids = [r.value for r in group.call("take", ref)]
    assert ids == [id(weights)] * 3
    for actor in built:
        assert actor.received == [weights]
        assert actor.received[0] is weights  # shared, not copied per actor


def test_plain_args_are_passed_through_unchanged():
    built: list[Counter] = []
    group = make_group(2, built)
    payload = [1, 2]
    group.call("take", payload)
    assert built[0].received[0] is payload and built[1].received[0] is payload


def test_num_puts_counts_puts_not_calls():
    runtime = LocalRuntime()
    group = runtime.create_group(Counter, 5)
    assert runtime.num_puts == 0
    ref = runtime.put(object())
    group.call("take", ref)
    group.call("take", ref)
    assert runtime.num_puts == 1
    runtime.put(1)
    assert runtime.num_puts == 2


def test_errors_in_local_actors_propagate():
    group = make_group(2)
    with pytest.raises(TypeError):
        group.call("add", 1)  # missing argument


def test_shutdown_stops_every_actor_and_empties_the_group():
    built: list[Counter] = []
    group = make_group(3, built)
    group.shutdown()
    assert [a.stopped for a in built] == [True, True, True]
    assert group.size == 0


def test_shutdown_tolerates_actors_without_stop():
    group = LocalRuntime().create_group(lambda i: object(), 2)
    group.shutdown()
    assert group.size == 0


def test_call_each_gives_actor_i_its_own_args_and_resolves_refs():
    runtime = LocalRuntime()
    built: list[Counter] = []

    def factory(i: int) -> Counter:
        built.append(Counter(i))
        return built[-1]

    group = runtime.create_group(factory, 3)
    shared = object()
    ref = runtime.put(shared)
    results = group.call_each("add", [(1, 2), (3, 4), (5, 6)])
    assert [(r.index, r.value) for r in results] == [(0, 3), (1, 107), (2, 211)]
    group.call_each("take", [(ref,), ("b",), (ref,)])
    assert built[0].received[0] is shared and built[2].received[0] is shared
    assert built[1].received == ["b"]


def test_restart_stops_the_old_actor_and_rebuilds_it_with_its_index():
    built: list[Counter] = []
    group = make_group(3, built)
    old = built[1]
    group.restart(1)
    assert old.stopped
    assert len(built) == 4 and built[3].index == 1
    assert [r.value for r in group.call("whoami")] == [0, 1, 2]
    assert group.call("take", "x", indices=[1])[0].ok
    assert built[3].received == ["x"] and old.received == []
    assert group.num_restarts == 1
