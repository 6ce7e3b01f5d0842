"""The ``conveyor`` command line: ``conveyor run`` (a GNU-parallel-class command runner)
and ``conveyor demo`` (threads vs processes on a CPU-bound job).

Modules, each with one job: ``__main__`` (entry point, subcommand dispatch), ``options``
(run's argparse parser and validation), ``inputs`` (::: / :::: / stdin), ``templates``
(replacement strings and quoting), ``process`` (one job in its own process group),
``output`` (grouped / line-buffered / ordered output), ``joblog`` (SQLite log, resume),
``run`` (the scheduler), ``errors`` (what exits with 255), ``demo``.
"""
