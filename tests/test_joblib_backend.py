"""The joblib backend: the same jobs give the same answers as under loky; faults stay local.

Differential: each job runs under ``backend="loky"`` and ``backend="conveyor"`` and must give
the same results (lists, generators, unordered generators), the same exceptions and the same
nested backend. Then what loky cannot do: a worker killed under joblib fails only its batch
(or the batch is retried), and a per-task limit stops one task, not the call.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

joblib = pytest.importorskip("joblib")

import conveyor  # noqa: E402
import conveyor.joblib  # noqa: E402

import faults  # noqa: E402
import tasks  # noqa: E402

conveyor.joblib.register()

BACKENDS = ("loky", "conveyor")


def run(backend: str, job: Callable[[], Any], **config: Any) -> tuple[str, Any]:
    """What ``job`` gave under ``backend``: its value, or its exception's type and text."""
    with joblib.parallel_config(backend=backend, **config):
        try:
            return "value", job()
        except Exception as exc:
            return "raised", (type(exc).__name__, str(exc))


def same_under_both(job: Callable[[], Any], **config: Any) -> Any:
    outcomes = [run(backend, job, **config) for backend in BACKENDS]
    assert outcomes[0] == outcomes[1]
    return outcomes[1]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    items=st.lists(st.integers(-3, 9), max_size=40),
    return_as=st.sampled_from(["list", "generator", "generator_unordered"]),
    batch_size=st.sampled_from(["auto", 1, 4]),
    n_jobs=st.sampled_from([1, 2]),
)
def test_parallel_calls_match_loky(
    items: list[int], return_as: str, batch_size: Any, n_jobs: int
) -> None:
    def job() -> Any:
        parallel = joblib.Parallel(return_as=return_as, batch_size=batch_size)
        results = parallel(joblib.delayed(tasks.fail_on)(x, 7) for x in items)
        if return_as == "list":
            return results
        values = list(results)
        return sorted(values) if return_as == "generator_unordered" else values

    same_under_both(job, n_jobs=n_jobs)


def test_keyword_arguments_and_lambdas_match_loky() -> None:
    offset = 5
    same_under_both(
        lambda: joblib.Parallel()(
            joblib.delayed(lambda a, b=0: a * b + offset)(x, b=x) for x in range(9)
        ),
        n_jobs=2,
    )
    same_under_both(
        lambda: joblib.Parallel()(joblib.delayed(operator.truediv)(1, x) for x in [1, 0]),
        n_jobs=2,
    )


def inner_parallel(x: int) -> tuple[str, Any, list[int]]:
    """The backend joblib picks for a nested call in a worker, and that call's results."""
    from joblib.parallel import get_active_backend

    backend, n_jobs = get_active_backend()
    inner = joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x - i) for i in range(3))
    return type(backend).__name__, n_jobs, inner


def test_nested_parallelism_follows_joblibs_rules_like_loky() -> None:
    outcome = same_under_both(
        lambda: joblib.Parallel()(joblib.delayed(inner_parallel)(x) for x in range(3)),
        n_jobs=2,
    )
    assert outcome[0] == "value"


def test_n_jobs_one_falls_back_to_sequential_like_loky() -> None:
    from joblib.parallel import get_active_backend

    def job() -> Any:
        return joblib.Parallel(n_jobs=1)(joblib.delayed(tasks.where)() for _ in range(2))

    outcome = run("conveyor", job, n_jobs=1)
    assert {pid for pid, _ in outcome[1]} == {__import__("os").getpid()}
    with joblib.parallel_config(backend="conveyor", n_jobs=2):
        assert type(get_active_backend()[0]).__name__ == "ConveyorBackend"


def test_it_runs_in_conveyors_workers() -> None:
    pool = conveyor._api._default_pool("process", 2, None)  # type: ignore[attr-defined]
    with joblib.parallel_config(backend="conveyor", n_jobs=2):
        pids = joblib.Parallel()(joblib.delayed(tasks.where)() for _ in range(8))
    assert {pid for pid, _ in pids} <= set(pool._backend.worker_pids())


def test_a_killed_worker_fails_only_its_batch_and_the_backend_serves_on() -> None:
    with (
        faults.no_leftovers(),
        joblib.parallel_config(backend="conveyor", n_jobs=2),
        pytest.raises(conveyor.WorkerCrashed),
    ):
        joblib.Parallel(batch_size=1)(joblib.delayed(faults.crash_on)(x, 3) for x in range(6))
    with joblib.parallel_config(backend="conveyor", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(faults.square)(x) for x in range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize("return_as", ["list", "generator_unordered"])
def test_retries_let_a_call_survive_a_killed_worker(tmp_path: Path, return_as: str) -> None:
    with faults.no_leftovers(), joblib.parallel_config(backend="conveyor", n_jobs=2, retries=1):
        results = joblib.Parallel(return_as=return_as)(
            joblib.delayed(faults.crash_times)(str(tmp_path), x, 1 if x == 4 else 0)
            for x in range(10)
        )
        assert sorted(results) == list(range(10))
    # The killed task ran twice. Others ran at least once: tasks that went to the dead worker
    # in the same message, with their results not yet sent, are run again (not failed).
    attempts = {int(p.name.split(".")[1]): int(p.read_text()) for p in tmp_path.glob("attempts.*")}
    assert attempts[4] == 2 and sorted(attempts) == list(range(10))


def test_task_timeout_stops_the_task_not_the_call() -> None:
    # The limit also covers loading the task in the worker, and a cold worker imports joblib
    # for its first batch: warm both workers up first, then the limit is the task's alone.
    with joblib.parallel_config(backend="conveyor", n_jobs=2):
        joblib.Parallel(batch_size=1)(joblib.delayed(faults.nap)(0.05) for _ in range(8))
    with joblib.parallel_config(backend="conveyor", n_jobs=2, task_timeout=2.0):
        generator = joblib.Parallel(return_as="generator")(
            joblib.delayed(faults.nap)(s) for s in (0.0, 0.0, 60.0)
        )
        assert next(generator) == 0.0 and next(generator) == 0.0
        with pytest.raises(conveyor.TaskTimeout):
            next(generator)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"task_timeout": 0}, "task_timeout must"),
        ({"retries": -1}, "retries must"),
        ({"workers_backend": "gpu"}, "workers_backend must"),
    ],
)
def test_bad_backend_options_are_named(option: dict[str, Any], match: str) -> None:
    with (
        pytest.raises(ValueError, match=match),
        joblib.parallel_config(backend="conveyor", **option),
    ):
        pass


def test_the_thread_workers_backend() -> None:
    with joblib.parallel_config(backend="conveyor", n_jobs=2, workers_backend="thread"):
        results = joblib.Parallel()(joblib.delayed(tasks.where)() for _ in range(4))
    assert {pid for pid, _ in results} == {__import__("os").getpid()}


def test_grid_search_gives_the_same_best_params_as_loky() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    data, target = load_iris(return_X_y=True)

    def search() -> Any:
        grid = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": [0.01, 0.1]}, n_jobs=2, cv=3)
        return grid.fit(data, target).best_params_

    outcome = same_under_both(search)
    assert outcome[0] == "value"
