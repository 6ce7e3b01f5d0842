"""A joblib parallel backend on conveyor's worker pool (and so scikit-learn's ``n_jobs``).

Register it once, then choose it by name::

    import joblib, conveyor.joblib
    conveyor.joblib.register()
    with joblib.parallel_config(backend="conveyor", n_jobs=4):
        ...  # joblib.Parallel, scikit-learn's n_jobs=... run on conveyor

Backend options (``parallel_config(backend="conveyor", task_timeout=60, retries=1)``):

* ``task_timeout``: seconds one unit joblib hands over (a batch of its tasks) may run before it
  is stopped with :class:`conveyor.TaskTimeout`. With a limit or retries set, the backend asks
  joblib for batches of one task (``batch_size="auto"``), so the limit is per task.
* ``retries``: times a failed batch is run again (for example after its worker was killed).
* ``workers_backend``: ``"process"`` (default) or ``"thread"``.

What differs from loky, joblib's default:

* A worker that dies (SIGKILL, the OOM killer, a segfault) fails only the batch it was running,
  with :class:`conveyor.WorkerCrashed` (or the batch is retried); loky fails every pending task
  with ``TerminatedWorkerError`` and restarts all its workers.
* Aborting a call (a task raised) cancels the batches not yet started; batches already running
  finish in the background instead of their workers being killed.
* Nested ``Parallel`` calls follow joblib's rule for every backend (threads one level down,
  sequential below that); workers are not told to limit their BLAS/OpenMP threads.

Data flow::

    caller thread (joblib.Parallel)      conveyor default pool               joblib's callback
    -------------------------------      ---------------------               -----------------
    submit(BatchedCalls) -------------->  Pool.submit -> Future
                                          worker runs the batch
                                          Future done (dispatcher thread) -->  callback(future):
                                                                               retrieve_result_
                                                                               callback, dispatch
                                                                               the next batch

Guarantees:

* The pool is conveyor's default process pool for ``n_jobs`` workers: started on first use,
  kept across ``Parallel`` calls (no start-up per call), stopped at interpreter exit.
* ``abort_everything`` cancels every batch of the call that has not started, so a failed call
  leaves no queued work behind it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from joblib.parallel import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    register_parallel_backend,
)

from ._api import _default_pool
from ._cpus import usable_cpus
from ._options import engine_limits

__all__ = ["ConveyorBackend", "register"]


class ConveyorBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` on conveyor's pool; see the module's notes.

    Example::

        >>> import joblib
        >>> register()
        >>> with joblib.parallel_config(backend="conveyor", n_jobs=2, retries=1):
        ...     joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(3))
        [0, 1, 2]
    """

    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        task_timeout: float | None = None,
        retries: int = 0,
        workers_backend: str = "process",
        **kwargs: Any,
    ):
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs
        )
        if workers_backend not in ("process", "thread"):
            raise ValueError(
                f'workers_backend must be "process" or "thread", got {workers_backend!r}'
            )
        self._limits = engine_limits(task_timeout, retries)
        self._one_task_batches = task_timeout is not None or retries > 0
        self._workers_backend = workers_backend
        self._submit: Any = None
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many workers ``n_jobs`` means (negative: counted back from the CPUs)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(usable_cpus() + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Take the pool for ``n_jobs`` workers; one worker means joblib's sequential backend."""
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        pool = _default_pool(self._workers_backend, n_jobs, None)
        self._submit = pool.options(**self._limits).submit
        return n_jobs

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        """Run one of joblib's batches on a worker; ``callback(future)`` when it is done."""
        future: Future[Any] = self._submit(func)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        """The batch's results, or its exception raised."""
        return future.result()

    def compute_batch_size(self) -> int:
        """joblib's automatic batching, or one task per batch when limits are per task."""
        if self._one_task_batches:
            return 1
        return int(super().compute_batch_size())

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch that has not started (the pool itself stays up)."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()

    def terminate(self) -> None:
        """End of a ``Parallel`` call: forget its batch statistics; the pool is kept."""
        self.reset_batch_stats()


def register(name: str = "conveyor", make_default: bool = False) -> None:
    """Make ``joblib.parallel_config(backend=name)`` (``"conveyor"``) run on conveyor.

    Example::

        >>> register()
        >>> import joblib
        >>> with joblib.parallel_config(backend="conveyor", n_jobs=2):
        ...     joblib.Parallel()(joblib.delayed(pow)(2, x) for x in range(4))
        [1, 2, 4, 8]
    """
    register_parallel_backend(name, ConveyorBackend, make_default=make_default)
