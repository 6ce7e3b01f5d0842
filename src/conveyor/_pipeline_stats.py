"""What :meth:`conveyor.pipeline(...).run() <conveyor._pipeline.Pipeline.run>` returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PipelineStats", "StageStats"]


@dataclass
class StageStats:
    """What one stage did (fused process stages count as one row, their names joined by +).

    * ``items_in``/``items_out``: items taken from the buffer before / put into the one after
      (a filter's out is smaller, a flat_map's or unbatch's larger, a batch's counts batches);
    * ``failures``: items whose function failed for good (after retries), whatever on_error;
    * ``busy_seconds``: worker-seconds spent running the stage's function; ``utilization`` is
      that over ``workers`` x the run's wall time: near 1.0 means this stage is the bottleneck;
    * ``waited_input``: seconds the stage had nothing to do because its input buffer was empty
      (the stages before it are slower); ``waited_output``: seconds it could not hand results on
      because the buffer after it was full (a stage after it is slower).
    """

    name: str
    kind: str
    backend: str
    workers: int
    items_in: int = 0
    items_out: int = 0
    failures: int = 0
    busy_seconds: float = 0.0
    utilization: float = 0.0
    waited_input: float = 0.0
    waited_output: float = 0.0


@dataclass
class PipelineStats:
    """Statistics of a pipeline run: what :meth:`Pipeline.run` returns.

    ``stages`` has one :class:`StageStats` per stage; ``source_waited`` is how long reading the
    source waited for room (the pipeline is slower than the source), ``consumer_waited`` how
    long the caller waited for results. ``str()`` gives a table.

    Example::

        >>> import conveyor
        >>> stats = conveyor.pipeline(range(10)).map(abs).filter(bool).run()
        >>> [(s.name, s.items_in, s.items_out) for s in stats.stages]
        [('abs', 10, 10), ('bool', 10, 9)]
    """

    stages: list[StageStats]
    seconds: float
    items: int
    source_items: int
    source_waited: float
    consumer_waited: float
    #: whether the run went to the end (False while it runs, and after an error or a stop)
    finished: bool = True

    def bottleneck(self) -> StageStats | None:
        """The stage with the highest utilization (the one to give more workers), or None."""
        busy = [s for s in self.stages if s.busy_seconds > 0]
        return max(busy, key=lambda s: s.utilization) if busy else None

    def __str__(self) -> str:
        head = (
            f"{'stage':<24} {'backend':<8} {'workers':>7} {'in':>8} {'out':>8} {'failed':>6} "
            f"{'busy s':>8} {'util':>5} {'wait in':>8} {'wait out':>8}"
        )
        lines = [
            f"pipeline: {self.items} results in {self.seconds:.2f} s "
            f"(source: {self.source_items} items, waited {self.source_waited:.2f} s for room)",
            head,
        ]
        for s in self.stages:
            lines.append(
                f"{s.name[:24]:<24} {s.backend:<8} {s.workers:>7} {s.items_in:>8} "
                f"{s.items_out:>8} {s.failures:>6} {s.busy_seconds:>8.2f} "
                f"{s.utilization:>5.0%} {s.waited_input:>8.2f} {s.waited_output:>8.2f}"
            )
        return "\n".join(lines)
