"""A pipeline's stages as written (:class:`_Stage`) and as run (:class:`_Group`).

Adjacent process stages with the same options are fused into one group (:func:`_plan`), whose
function runs them in turn in one worker call (:class:`~conveyor._chain.Chain`).
:func:`_engine_options` is the one place a stage's options become the engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._chain import FILTER, FLAT, MAP, STAR, Chain
from ._options import JobOptions
from ._work import MODE_MAP, MODE_STAR

__all__ = ["FUNCTION_KINDS"]

#: the stages that run a function on a pool (batch and unbatch run in a thread of the run)
FUNCTION_KINDS = (MAP, STAR, FILTER, FLAT)


@dataclass(frozen=True)
class _Stage:
    """One stage as the user wrote it."""

    kind: str
    fn: Callable[..., Any] | None
    name: str
    backend: str = "thread"
    workers: int | None = None
    task_timeout: float | None = None
    retries: int = 0
    on_error: str = "raise"
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    chunksize: int | str = "auto"
    size: int = 0  # batch: items per batch
    max_wait: float | None = None  # batch: seconds a partial batch waits for more

    def pool_key(self) -> tuple[Any, ...]:
        return (
            self.workers,
            self.task_timeout,
            self.retries,
            self.on_error,
            self.initializer,
            self.initargs,
            self.chunksize,
        )

    def fuses_with(self, other: _Stage) -> bool:
        """Whether ``other``, right after this stage, can run in the same worker call."""
        return (
            self.kind in FUNCTION_KINDS
            and other.kind in FUNCTION_KINDS
            and self.backend == other.backend == "process"
            and self.pool_key() == other.pool_key()
        )


@dataclass
class _Group:
    """What runs as one job: a stage, or several fused process stages (numbered from 1)."""

    stages: list[_Stage]
    number: int  # the first stage's number in the pipeline
    position: int  # index among the groups: reads feeds[position], fills feeds[position + 1]
    passes_failures: bool = False  # an earlier stage may send a Failure down

    @property
    def first(self) -> _Stage:
        return self.stages[0]

    @property
    def name(self) -> str:
        return "+".join(stage.name for stage in self.stages)

    @property
    def kind(self) -> str:
        return "+".join(stage.kind for stage in self.stages)

    @property
    def direct(self) -> bool:
        """One map/starmap stage that sees no Failure: run its function itself, one value
        per item (no list per item to build and flatten)."""
        return len(self.stages) == 1 and self.first.kind in (MAP, STAR) and not self.passes_failures

    def function(self) -> tuple[Callable[..., Any], int]:
        if self.direct:
            assert self.first.fn is not None
            return self.first.fn, MODE_STAR if self.first.kind == STAR else MODE_MAP
        steps = [(stage.kind, stage.fn) for stage in self.stages]
        return Chain(steps), MODE_MAP  # type: ignore[arg-type]

    def label(self, step: int = 0) -> str:
        stage = self.stages[step]
        return (
            f"stage {self.number + step} {stage.name!r} ({stage.kind}, backend={stage.backend!r})"
        )


def _engine_options(group: _Group, mode: int, ordered: bool) -> JobOptions:
    """The ONE place a stage's options become the engine's map job options.

    Fused stages share one worker call, so their ``task_timeout`` limits add up. Failures come
    back as values (``on_error="return"``): the pipeline applies each stage's own ``on_error``.
    """
    limits = [stage.task_timeout for stage in group.stages]
    return JobOptions(
        mode=mode,
        ordered=ordered,
        chunksize=group.first.chunksize,
        task_timeout=None if None in limits else sum(t or 0.0 for t in limits),
        retries=group.first.retries,
        on_error="return",
        progress=False,
    )


def _plan(stages: tuple[_Stage, ...]) -> list[_Group]:
    """Fuse adjacent compatible process stages into groups."""
    groups: list[_Group] = []
    returns = False
    for number, stage in enumerate(stages, start=1):
        if groups and groups[-1].stages[-1].fuses_with(stage):
            groups[-1].stages.append(stage)
        else:
            groups.append(_Group([stage], number, len(groups), passes_failures=returns))
        returns = returns or stage.on_error == "return"
    return groups
