"""``conveyor.pipeline``: the public builder of pipelines and the iterator of a run.

A pipeline is a chain of map jobs over the existing backends joined by bounded buffers, not a
new scheduler. The modules: _stages.py (stages as written and as run: fusion), _chain.py (the
function a worker runs for fused stages), _feed.py (the bounded buffer), _pipeline_run.py (one
run: its threads, data flow, races and the one stop path), _pipeline_stats.py (statistics).
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._chain import FILTER, FLAT, MAP, STAR
from ._options import JobOptions, check_backend, check_callable, check_workers
from ._pipeline_run import Run
from ._pipeline_stats import PipelineStats, StageStats
from ._stages import _Stage

__all__ = ["Pipeline", "PipelineRun", "PipelineStats", "StageStats", "pipeline"]

#: items each buffer between two stages holds before the stage feeding it waits
DEFAULT_BUFFER = 256
_STAGE_OPTIONS = (
    "backend",
    "workers",
    "task_timeout",
    "retries",
    "on_error",
    "initializer",
    "initargs",
    "chunksize",
    "name",
)


class Pipeline:
    """A chain of stages over a source; iterate it for the results, or call :meth:`run`.

    Made by :func:`conveyor.pipeline`. Each stage method returns a new Pipeline (the one it was
    called on is unchanged). Every function stage takes the options of :func:`conveyor.map`:
    ``backend`` (``"thread"`` by default here, ``"process"`` or ``"auto"``), ``workers``,
    ``task_timeout``, ``retries``, ``on_error``, ``initializer``, ``initargs``, ``chunksize``,
    and ``name`` (for errors, progress bars and stats; the function's name by default).

    Example::

        >>> import conveyor
        >>> list(conveyor.pipeline(range(6)).map(abs).filter(lambda x: x % 2).batch(2))
        [[1, 3], [5]]
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        ordered: bool = True,
        buffer: int = DEFAULT_BUFFER,
        progress: bool | dict[str, Any] = False,
        _stages: tuple[_Stage, ...] = (),
    ):
        try:
            iter(source)
        except TypeError:
            raise TypeError(
                f"source must be iterable, got {source!r} (of type {type(source).__name__})"
            ) from None
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be True or False, got {ordered!r}")
        if isinstance(buffer, bool) or not isinstance(buffer, numbers.Integral) or buffer < 1:
            raise ValueError(f"buffer must be a whole number of at least 1, got {buffer!r}")
        self._source: Iterable[Any] = source
        self._ordered: bool = ordered
        self._buffer: int = int(buffer)
        self._progress: bool | dict[str, Any] = progress
        self._stages: tuple[_Stage, ...] = _stages
        self._last: Run | None = None

    # ----------------------------------------------------------------- building

    def _with(self, stage: _Stage) -> Pipeline:
        return Pipeline(
            self._source,
            ordered=self._ordered,
            buffer=self._buffer,
            progress=self._progress,
            _stages=(*self._stages, stage),
        )

    def _function_stage(
        self, kind: str, fn: Callable[..., Any], options: dict[str, Any]
    ) -> Pipeline:
        check_callable(fn)
        if "timeout" in options:
            raise TypeError(
                "unexpected option 'timeout'; the per-item limit of a stage is task_timeout"
            )
        unknown = sorted(set(options) - set(_STAGE_OPTIONS))
        if unknown:
            raise TypeError(
                f"unexpected option {unknown[0]!r} for {kind}(); the options are "
                f"{', '.join(_STAGE_OPTIONS)}"
            )
        backend = check_backend(options.get("backend", "thread"))
        workers = check_workers(options.get("workers"))
        task_timeout = options.get("task_timeout")
        JobOptions(  # checks them, naming the option
            chunksize=options.get("chunksize", "auto"),
            task_timeout=task_timeout,
            retries=options.get("retries", 0),
            on_error=options.get("on_error", "raise"),
        )
        initializer = options.get("initializer")
        if initializer is not None:
            check_callable(initializer, "initializer")
        initargs = options.get("initargs", ())
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
        inner = getattr(fn, "func", fn)  # functools.partial: the function's own name
        name = options.get("name") or getattr(inner, "__name__", None) or type(fn).__name__
        return self._with(
            _Stage(
                kind,
                fn,
                str(name),
                backend=backend,
                workers=workers,
                task_timeout=None if task_timeout is None else float(task_timeout),
                retries=options.get("retries", 0),
                on_error=options.get("on_error", "raise"),
                initializer=initializer,
                initargs=initargs,
                chunksize=options.get("chunksize", "auto"),
            )
        )

    def map(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Each item becomes ``fn(item)``.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([1, 2]).map(lambda x: x * 10, backend="process"))
            [10, 20]
        """
        return self._function_stage(MAP, fn, options)

    def starmap(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Each item (a tuple) becomes ``fn(*item)``.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([(2, 3), (3, 2)]).starmap(pow))
            [8, 9]
        """
        return self._function_stage(STAR, fn, options)

    def filter(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Keep the items for which ``fn(item)`` is true.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline(range(5)).filter(lambda x: x % 2))
            [1, 3]
        """
        return self._function_stage(FILTER, fn, options)

    def flat_map(self, fn: Callable[..., Any], **options: Any) -> Pipeline:
        """Each item becomes the items of the iterable ``fn(item)`` (none, one or many).

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([1, 3]).flat_map(range))
            [0, 0, 1, 2]
        """
        return self._function_stage(FLAT, fn, options)

    def batch(self, size: int, max_wait: float | None = None) -> Pipeline:
        """Group items into lists of ``size`` (the last may be shorter).

        With ``max_wait`` (seconds), a batch that has waited that long since its first item is
        passed on as it is, so a slow trickle of input still moves. A Failure from an earlier
        ``on_error="return"`` stage is passed on by itself, not put into a batch.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline(range(5)).batch(2))
            [[0, 1], [2, 3], [4]]
        """
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"batch size must be a whole number of at least 1, got {size!r}")
        if max_wait is not None and (
            isinstance(max_wait, bool) or not isinstance(max_wait, numbers.Real) or max_wait < 0
        ):
            raise ValueError(f"max_wait must be a number of seconds >= 0 or None, got {max_wait!r}")
        return self._with(
            _Stage(
                "batch",
                None,
                f"batch({size})",
                backend="-",
                size=int(size),
                max_wait=None if max_wait is None else float(max_wait),
            )
        )

    def unbatch(self) -> Pipeline:
        """Each item (an iterable, such as a batch) becomes its elements.

        Example::

            >>> import conveyor
            >>> list(conveyor.pipeline([[1, 2], [3]]).unbatch())
            [1, 2, 3]
        """
        return self._with(_Stage("unbatch", None, "unbatch", backend="-"))

    # ----------------------------------------------------------------- running

    def __iter__(self) -> PipelineRun:
        """Start a run and iterate its results (each ``iter()`` starts a new run)."""
        run = Run(self._source, self._stages, self._ordered, self._buffer, self._progress)
        self._last = run
        return PipelineRun(run)

    def run(self) -> PipelineStats:
        """Run to the end, dropping the results; returns the run's :class:`PipelineStats`.

        Example::

            >>> import conveyor
            >>> conveyor.pipeline(range(3)).map(abs).run().items
            3
        """
        results = iter(self)
        for _ in results:
            pass
        return results.stats()

    def stats(self) -> PipelineStats | None:
        """Statistics of the latest run so far (None before the first).

        Example::

            >>> import conveyor
            >>> p = conveyor.pipeline(range(3)).map(abs)
            >>> sum(p), p.stats().stages[0].items_out
            (3, 3)
        """
        return None if self._last is None else self._last.stats()

    def close(self) -> None:
        """Stop the latest run: every stage stops, workers running its tasks are killed.

        Example::

            >>> import conveyor
            >>> p = conveyor.pipeline(range(3)).map(abs); results = iter(p); p.close()
        """
        if self._last is not None:
            self._last.close()

    def __repr__(self) -> str:
        stages = ".".join(f"{s.kind}({s.name})" for s in self._stages)
        return f"<conveyor.Pipeline {stages or '(no stages)'}>"


class PipelineRun(Iterator[Any]):
    """The iterator of one run of a pipeline: results, ``stats()`` and ``close()``.

    Dropping it (garbage collection), ``break`` in a ``for`` loop over the pipeline, or
    ``close()`` stops every stage.

    Example::

        >>> import conveyor
        >>> results = iter(conveyor.pipeline(range(100)).map(abs))
        >>> next(results), results.close()
        (0, None)
    """

    def __init__(self, run: Run):
        self._run = run
        self._values: list[Any] = []
        self._next = 0
        # The stage threads hold the run, not this iterator: when it is dropped, stop the run.
        self._finalizer = weakref.finalize(self, run.stop)

    def __next__(self) -> Any:
        if self._next < len(self._values):
            value = self._values[self._next]
            self._next += 1
            return value
        self._values, self._next = self._run.next_values(), 1
        return self._values[0]

    def stats(self) -> PipelineStats:
        """Statistics of this run so far (see :class:`PipelineStats`)."""
        return self._run.stats()

    def close(self) -> None:
        """Stop every stage now (idempotent)."""
        self._values = []
        self._run.close()


def pipeline(
    source: Iterable[Any],
    *,
    ordered: bool = True,
    buffer: int = DEFAULT_BUFFER,
    progress: bool | dict[str, Any] = False,
) -> Pipeline:
    """Start a pipeline over ``source`` (any iterable, read lazily in a thread of its own).

    Add stages with ``.map``, ``.starmap``, ``.filter``, ``.flat_map`` (each on the backend and
    with the options it is given), ``.batch(n, max_wait=)`` and ``.unbatch()``; iterate the
    pipeline for the results, or call ``.run()`` for per-stage statistics.

    * Every stage runs at the same time as the others; each buffer between two stages holds at
      most about ``buffer`` items, and the source is read only as the stages make room, so an
      endless source runs in constant memory.
    * ``ordered=True``: results in the order of the source; ``False``: as they are ready.
    * An exception in any stage (``on_error="raise"``, the default) or in the source stops every
      stage (workers running its tasks are killed) and is raised to the caller with a note
      naming the stage and the item. ``on_error="return"`` passes a :class:`conveyor.Failure`
      on to the output in the item's place; ``"skip"`` drops the item.
    * Adjacent ``backend="process"`` stages with the same options run in one worker call.
    * ``progress=True``: one bar per stage.

    Example::

        >>> import conveyor
        >>> list(
        ...     conveyor.pipeline(range(10))
        ...     .map(lambda x: x * x, backend="process")
        ...     .filter(lambda x: x % 2, backend="process")
        ...     .batch(3)
        ... )
        [[1, 9, 25], [49, 81]]
    """
    return Pipeline(source, ordered=ordered, buffer=buffer, progress=progress)
