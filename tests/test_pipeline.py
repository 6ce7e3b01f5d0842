"""conveyor.pipeline: results, order, options and statistics on every stage kind and backend."""

from __future__ import annotations

import functools
import itertools
import operator
import time
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor
from conveyor import Failure

import faults
import tasks

pytestmark = pytest.mark.timeout(120)
BACKENDS = ["thread", "process", "auto"]


def is_odd(x: int) -> bool:
    return x % 2 == 1


def upto(x: int) -> range:
    return range(x % 4)


def nap_then(x: int, seconds: float = 0.01) -> int:
    time.sleep(seconds)
    return x


@pytest.mark.parametrize("first", BACKENDS)
@pytest.mark.parametrize("second", ["thread", "process"])
def test_every_stage_kind_on_a_mix_of_backends_gives_what_plain_python_gives(
    first: str, second: str
) -> None:
    items = list(range(200))
    results = list(
        conveyor.pipeline(items)
        .map(tasks.square, backend=first, workers=2)
        .filter(is_odd, backend=second, workers=2)
        .flat_map(upto, backend=first, workers=2)
        .batch(7)
        .map(sum, backend=second, workers=2)
        .batch(3)
        .unbatch()
        .map(lambda s: (s, 1), backend=first, workers=2)
        .starmap(tasks.add, backend=second, workers=2)
    )
    expected_flat = [y for x in items if is_odd(x * x) for y in upto(x * x)]
    sums = [sum(expected_flat[i : i + 7]) for i in range(0, len(expected_flat), 7)]
    assert results == [s + 1 for s in sums]


def test_results_stream_in_input_order_even_when_later_items_finish_first() -> None:
    delays = [0.2, 0.0, 0.1, 0.0, 0.0, 0.05] * 3
    results = list(
        conveyor.pipeline(delays)
        .map(tasks.slow_identity, backend="thread", workers=6)
        .map(tasks.slow_identity, backend="process", workers=2, chunksize=1)
    )
    assert results == delays


def test_unordered_gives_every_result_once() -> None:
    delays = [0.05, 0.0] * 10
    p = conveyor.pipeline(enumerate(delays), ordered=False).starmap(
        lambda i, d: (time.sleep(d), i)[1], backend="thread", workers=4
    )
    assert sorted(p) == list(range(20))


def test_an_ordered_pipeline_streams_the_head_before_the_end_is_done(tmp_path: Any) -> None:
    # the first result arrives while later items are still blocked on a gate
    gate = str(tmp_path / "go")
    results = iter(
        conveyor.pipeline(range(10)).map(
            lambda x: x if x == 0 else tasks_wait(gate, x), backend="thread", workers=10
        )
    )
    assert next(results) == 0
    (tmp_path / "go").write_text("")
    assert list(results) == list(range(1, 10))


def tasks_wait(gate: str, x: int) -> int:
    assert faults.wait_for_path(gate)
    return x


def test_fused_process_stages_send_each_item_over_the_pipe_once() -> None:
    items = [tasks.Traveller(i) for i in range(50)]

    def crossings(pipeline: conveyor._pipeline.Pipeline) -> tuple[list[int], int, int]:
        tasks.Traveller.sent = tasks.Traveller.arrived = 0
        values = [t.value for t in pipeline]
        return values, tasks.Traveller.sent, tasks.Traveller.arrived

    fused = (
        conveyor.pipeline(items)
        .map(tasks.bump, backend="process", workers=2)
        .filter(lambda t: t.value % 5, backend="process", workers=2)
        .map(tasks.bump, backend="process", workers=2)
    )
    values, sent, arrived = crossings(fused)
    assert values == [i + 2 for i in range(50) if (i + 1) % 5]
    assert (sent, arrived) == (50, len(values))  # each item out once, each result back once
    assert [s.kind for s in fused.stats().stages] == ["map+filter+map"]

    # different options: not fused, so every item crosses twice each way
    apart = (
        conveyor.pipeline(items)
        .map(tasks.bump, backend="process", workers=2)
        .map(tasks.bump, backend="process", workers=1)
    )
    values, sent, arrived = crossings(apart)
    assert values == [i + 2 for i in range(50)]
    assert (sent, arrived) == (100, 100)


def test_on_error_return_and_skip_per_stage_keep_the_order() -> None:
    results = list(
        conveyor.pipeline(range(10))
        .map(functools.partial(faults.fail_on, bad=3), on_error="return")
        .map(lambda x: -x, backend="process", workers=2)
        .filter(lambda x: x != -16, on_error="skip")
    )
    assert results[:3] == [0, -1, -4]
    assert isinstance(results[3], Failure) and results[3].item == 3
    assert isinstance(results[3].exception, ValueError)
    assert results[4:] == [-25, -36, -49, -64, -81]

    skipped = list(
        conveyor.pipeline(range(6)).map(
            functools.partial(faults.fail_on, bad=2), backend="process", on_error="skip"
        )
    )
    assert skipped == [0, 1, 9, 16, 25]


def test_a_failure_in_a_fused_stage_names_that_stage_and_its_item() -> None:
    p = (
        conveyor.pipeline(range(10))
        .map(tasks.square, backend="process", workers=2)
        .map(functools.partial(faults.fail_on, bad=16), backend="process", workers=2)
    )
    with pytest.raises(ValueError, match="item 16 is bad") as info:
        list(p)
    assert info.value.__notes__ == [  # type: ignore[attr-defined]
        "conveyor.pipeline: stage 2 'fail_on' (map, backend='process') failed on item 16"
    ]


def test_retries_and_task_timeout_apply_per_stage(tmp_path: Any) -> None:
    out = list(
        conveyor.pipeline([(str(tmp_path), i, 2) for i in range(4)]).starmap(
            faults.fail_times, backend="process", retries=2, workers=2
        )
    )
    assert out == [0, 1, 2, 3]
    timed = list(
        conveyor.pipeline([0.0, 30.0, 0.0]).map(
            tasks.slow_identity, backend="process", task_timeout=0.5, on_error="return"
        )
    )
    assert timed[0] == timed[2] == 0.0
    assert isinstance(timed[1].exception, conveyor.TaskTimeout)


def test_initializer_runs_in_each_stage_worker() -> None:
    results = list(
        conveyor.pipeline(range(4)).map(
            lambda x: (x, SEEN.get("init")),
            backend="thread",
            workers=2,
            initializer=SEEN.__setitem__,
            initargs=("init", "yes"),
        )
    )
    assert results == [(i, "yes") for i in range(4)]


SEEN: dict[str, str] = {}


def test_batch_max_wait_passes_on_a_partial_batch() -> None:
    def trickle() -> Any:
        yield from range(3)
        time.sleep(1.0)
        yield from range(3, 5)

    started = time.monotonic()
    results = iter(conveyor.pipeline(trickle()).batch(10, max_wait=0.1))
    assert next(results) == [0, 1, 2]
    assert time.monotonic() - started < 0.9  # not held back until the source went on
    assert list(results) == [[3, 4]]


def test_stats_show_items_failures_and_the_bottleneck() -> None:
    p = (
        conveyor.pipeline(range(60), buffer=4)
        .map(abs, backend="thread", workers=2)
        .map(functools.partial(nap_then, seconds=0.01), backend="thread", workers=1, name="slow")
        .filter(lambda x: x % 10, on_error="skip")
    )
    stats = p.run()
    first, slow, last = stats.stages
    assert (first.items_in, first.items_out) == (60, 60)
    assert (last.items_in, last.items_out) == (60, 54)
    assert stats.items == 54 and stats.finished
    assert slow.busy_seconds >= 0.5 and stats.bottleneck() is slow
    assert first.waited_output > 0.2  # the fast stage waited on the slow one's full buffer
    assert "slow" in str(stats)


def test_progress_shows_one_bar_per_stage(capsys: pytest.CaptureFixture[str]) -> None:
    list(conveyor.pipeline(range(5), progress=True).map(abs, name="first").map(abs, name="second"))
    err = capsys.readouterr().err
    assert "first" in err and "second" in err


def test_bad_options_are_named() -> None:
    p = conveyor.pipeline(range(3))
    with pytest.raises(TypeError, match="task_timeout"):
        p.map(abs, timeout=1)
    with pytest.raises(TypeError, match="'colour'"):
        p.map(abs, colour="red")
    with pytest.raises(ValueError, match="backend"):
        p.map(abs, backend="gpu")
    with pytest.raises(ValueError, match="task_timeout"):
        p.filter(abs, task_timeout=-1)
    with pytest.raises(ValueError, match="batch size"):
        p.batch(0)
    with pytest.raises(TypeError, match="must be callable"):
        p.map(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source must be iterable"):
        conveyor.pipeline(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer"):
        conveyor.pipeline([], buffer=0)


def test_an_infinite_source_with_a_slow_last_stage_runs_in_constant_memory() -> None:
    payload = 64 * 1024

    def big(i: int) -> bytes:
        return bytes(payload)

    process = psutil.Process()
    p = (
        conveyor.pipeline(itertools.count(), buffer=32)
        .map(big, backend="thread", workers=4)
        .map(len, backend="process", workers=2)
        .map(functools.partial(nap_then, seconds=0.002), backend="thread", workers=2)
    )
    results = iter(p)
    rss = []
    for n, value in enumerate(results, start=1):
        assert value == payload
        if n in (300, 3000):
            rss.append(process.memory_info().rss)
        if n == 3000:
            break
    pulled = p.stats().source_items  # type: ignore[union-attr]
    results.close()
    grew = (rss[1] - rss[0]) / 2**20
    print(f"\n  RSS grew {grew:.1f} MB over 2700 items of 64 KB; source read {pulled - 3000} ahead")
    assert pulled - 3000 < 1000  # read only as the stages made room
    assert grew < 40  # unbounded, the fast first stages would have made gigabytes


# ------------------------------------------------------------------ property: same as Python

INT_OPS = st.one_of(
    st.builds(lambda k: ("map", functools.partial(operator.add, k)), st.integers(-3, 3)),
    st.builds(lambda k: ("map", functools.partial(operator.mul, k)), st.integers(-2, 2)),
    st.builds(lambda m: ("filter", functools.partial(_divisible, m)), st.integers(2, 4)),
    st.just(("flat_map", upto)),
    st.builds(lambda n: ("batch", n), st.integers(1, 5)),
)


def _divisible(m: int, x: int) -> bool:
    return x % m != 0


def _chains() -> st.SearchStrategy[list[tuple[str, Any]]]:
    """Chains that keep items well typed: after a batch, only unbatch or a sum."""

    @st.composite
    def chain(draw: st.DrawFn) -> list[tuple[str, Any]]:
        ops: list[tuple[str, Any]] = []
        batched = False
        for _ in range(draw(st.integers(0, 6))):
            if batched:
                op = draw(st.sampled_from([("unbatch", None), ("map", sum)]))
                batched = False
            else:
                op = draw(INT_OPS)
                batched = op[0] == "batch"
            ops.append(op)
        return ops

    return chain()


def _plain(items: list[int], ops: list[tuple[str, Any]]) -> list[Any]:
    out: list[Any] = list(items)
    for kind, arg in ops:
        if kind == "map":
            out = [arg(x) for x in out]
        elif kind == "filter":
            out = [x for x in out if arg(x)]
        elif kind == "flat_map":
            out = [y for x in out for y in arg(x)]
        elif kind == "batch":
            out = [out[i : i + arg] for i in range(0, len(out), arg)]
        else:
            out = [y for x in out for y in x]
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.integers(-50, 50), max_size=40), ops=_chains(), buffer=st.integers(1, 8))
def test_any_chain_gives_what_the_same_chain_in_plain_python_gives(
    items: list[int], ops: list[tuple[str, Any]], buffer: int
) -> None:
    p = conveyor.pipeline(items, buffer=buffer)
    for kind, arg in ops:
        if kind == "batch":
            p = p.batch(arg)
        elif kind == "unbatch":
            p = p.unbatch()
        else:
            p = getattr(p, kind)(arg, workers=2)
    assert list(p) == _plain(items, ops)


def test_unbatch_of_something_not_iterable_names_the_stage_and_the_item() -> None:
    with pytest.raises(TypeError) as info:
        list(conveyor.pipeline([[1], 5]).unbatch())
    assert info.value.__notes__ == [  # type: ignore[attr-defined]
        "conveyor.pipeline: stage 1 'unbatch' (unbatch, backend='-') failed on item 5"
    ]
