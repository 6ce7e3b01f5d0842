"""Command-line options of ``conveyor run``: the parser, its help, and validation."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from conveyor.cli.errors import CliError
from conveyor.cli.inputs import Group, split_argv
from conveyor.cli.pipe import PipeSpec, add_pipe_options, pipe_options
from conveyor.cli.resources import Resources, add_resource_options, parse_resources

__all__ = ["Halt", "RunConfig", "UsageError", "parse_run_args", "run_parser", "usable_cores"]


class UsageError(CliError):
    """A bad command line; the CLI prints the message and exits with 255."""


class ErrorRaisingParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting with 2."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing usage and exiting."""
        raise UsageError(message)


def usable_cores() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


DESCRIPTION = """\
Run COMMAND once per input, in parallel, like GNU parallel.

Inputs: the arguments after each ':::' form a group, each FILE after '::::' (or
-a FILE) is a group of its lines ('-' is stdin); several groups make every
combination (cartesian product, the last group varying fastest). A group after
':::+' or '::::+' is linked to the one before: they advance together, as many jobs
as the shorter has (--link links all groups, the shorter ones wrapping around to
the longest). With no group, the lines of stdin are read as they arrive. -0
separates inputs by NUL instead of newline."""

EPILOG = """\
replacement strings (GNU parallel's):
  {}    the input (all of a job's arguments with several groups)
  {.}   without extension   {/} basename   {//} dirname   {/.} basename w/o extension
  {#}   job number (1, 2, ... in input order, also with --shuf)
  {%}   job slot (1 .. -j)
  {n} {n.} {n/} {n//} {n/.}   the same for the argument from input group n
  With no replacement string in COMMAND, the arguments are appended.
  Any other {word} stays as it is (awk '{print $1}', {a,b}), as in GNU parallel;
  --dry-run notes each on stderr, to catch a typo.

quoting (exactly):
  COMMAND's words are joined with spaces and run by the shell (--shell; default
  $CONVEYOR_SHELL, else $PARALLEL_SHELL, else /bin/sh), so shell syntax in COMMAND
  works (quote it for your own shell: conveyor run 'gzip -c {} > {}.gz').
  Inputs are never spliced into that shell code: each job runs
  SHELL -c SCRIPT sh VALUE... and every replacement string refers to its value,
  which the shell does not parse. So an input reaches the command literally, as one
  word or part of the word it stands in, wherever it stands: plain, '...', "...",
  $(...), backquotes, ${x:-...}, here-documents. Spaces, quotes, ; $ ` * and newlines
  in inputs are never interpreted (a file named 'a b; rm -rf x' never runs rm, and
  'echo "$(echo {})"' on '$(touch x)' prints $(touch x)).
  Inside $((...)) an input must be a number expression (digits, operators): the
  shell evaluates what is there, so other inputs fail their job before it runs.
  {} in a quoted here-document (<<'EOF') is refused. Commands that run their
  argument as code (eval {}, sh -c {}) do run it, as with GNU parallel.
  --dry-run and the job log show each command as equivalent shell text.
  -q/--quote also quotes COMMAND's own words: it then runs as a plain argv, no shell;
  {} with several values (input groups, -n) gives one word per value, as GNU's -q.
  With no COMMAND, each input is itself a shell command, unquoted.

skipping the shell:
  When COMMAND is plain words (letters, digits, _-./:,+@%= and replacement strings
  outside quotes) or -q is given, and its program is not a shell builtin (true and
  false excepted) nor an exported bash function, and is found in PATH, each job
  execs the program directly with the argv the shell would have built (x{}y on two
  values: two words). Output, exit status and environment are the same, but for
  what a shell itself sets (bash: SHLVL, _). Anything else runs under the shell.

command line limits:
  A job whose command line would exceed the system's limit (ARG_MAX for all
  arguments and the environment; on Linux also 128 KiB per argument, and each input
  is its own argument) is an error naming the job and the limit: before any job
  runs when the inputs are known (::: and :::: groups), otherwise that job fails
  (status 255) and the others go on.

output:
  By default each job's stdout, then its stderr, is written whole when the job ends:
  jobs never interleave. --line-buffer writes whole lines as they come. --tag puts
  the job's arguments and a TAB before each line. --keep-order prints jobs in the
  order they were started. With --retries only the last attempt's output is shown
  (all attempts' lines with --line-buffer).

exit status (GNU parallel's rules):
  0 if every job succeeded, else the number of failed jobs (at most 101); 255 for
  any other error (bad option or template, unreadable input, Ctrl-C). A job fails
  if it exits non-zero, is killed by a signal or times out, after all retries; jobs
  killed or never started because of --halt or Ctrl-C are not counted (nor logged).
  With --halt: success=N or N% that triggered exits 0; fail=1 exits with the status
  of the job that failed (its exit code, 128+N if signal N killed it, 255 if it
  timed out); any N% exits with the percentage of all jobs that failed (rounded up).

--halt WHEN,COND=N:
  WHEN is 'now' (kill running jobs at once) or 'soon' (start no new job, let running
  ones finish); COND is fail, success or done; N is a count or a percentage of all
  jobs (N%). E.g. now,fail=1  soon,fail=3  now,success=1  soon,done=50%.
  'never' is the default.

job log (--joblog FILE: SQLite, table 'jobs', one row per finished job, committed
as it ends, so even a SIGKILLed run loses no written row):
  columns seq, input, command, start (Unix time), duration, exit_code (-1 if a signal
  killed the job), signal, attempts, timed_out, received (bytes of stdout).
  'conveyor joblog FILE' prints it in GNU parallel's tab-separated --joblog layout.
  --resume skips the jobs the log has as finished (succeeded or failed);
  --resume-failed skips only the succeeded ones, so failed ones run again. A job is
  known by its number and input. Jobs that never finished (killed by Ctrl-C, --halt
  now, or the runner's own death) have no row and run again. Without --resume or
  --resume-failed an existing log is emptied first.

processes:
  Every job runs in its own process group (new session), stdin from /dev/null, with
  $PARALLEL_SEQ ({#}), $PARALLEL_JOBSLOT ({%}) and $PARALLEL_PID (conveyor's pid)
  set, as GNU parallel does.
  --timeout, --halt now, --memfree and Ctrl-C (or SIGTERM/SIGHUP to conveyor) stop a
  job's whole group by --termseq (default TERM,200,TERM,100,TERM,50,KILL,25: a signal,
  then milliseconds to wait). A job ends when its output is closed and its shell has
  exited; a process it left in the background with its output redirected elsewhere is
  not killed, as in a shell. A job killed by --timeout gets GNU parallel's warning on
  stderr ("This job was killed because it timed out"), and the job that makes --halt
  stop gets its notice ("This job failed:" + the command).

semaphore (conveyor sem):
  conveyor sem -j 4 --id NAME COMMAND  starts COMMAND in the background as soon as one
  of NAME's 4 slots is free (waits for one); conveyor sem --wait --id NAME  waits
  until every command started under NAME has ended. See conveyor sem --help.

differences from GNU parallel (deliberate; tests/test_cli_vs_gnu.py checks them):
  "{}" and '{}': GNU splices each input, shell-quoted, into the command text, so
    'echo "{}"' on 'a  b' prints 'a  b' with its quotes, and 'echo '{}'' splits it
    (a b); conveyor passes inputs out of band, so both print a  b: a value is never
    shell code, wherever {} stands (see quoting).
  --retries N: a failed job runs up to N more times (N+1 in all); GNU runs a job at
    most N times in all (and 0 means forever). Kept: it is what retries=N means in
    conveyor's Python API, and one word has one meaning in conveyor.
  --colsep REGEX is a Python regular expression (GNU: Perl's), and one character is
    taken literally: --colsep '|' splits at '|' (GNU splits between all characters).
  --shell: the default is /bin/sh (after $CONVEYOR_SHELL, $PARALLEL_SHELL); GNU uses
    the shell that started it, else $SHELL: the same command line should not behave
    differently from a script and from a terminal. Use --shell bash for bash syntax.
  -j -N below 1: conveyor runs 1 job, as GNU's manual says; GNU 20221122 exits 255.
  -j0 means min(1024, open-file limit / 4) slots (GNU measures its limits instead,
    which takes seconds).
  --load compares the 1-minute load average (GNU: the number of running processes).
  --memfree never kills the only running job (it could never finish otherwise), and
    reruns a killed job without counting it against --retries.
  --results also writes 'exitcode' in each job's directory, and names the values "",
    "." and ".." \\_empty, \\_. and \\_.. (GNU writes those into parent directories).
  -X/-m read all inputs (also stdin) before the first job, to spread them evenly.
  SIGHUP to conveyor (kill -HUP $PARALLEL_PID) stops the run as Ctrl-C does, killing
    running jobs; GNU lets them finish. One way to stop, for every signal.
  --pipe, --pipe-part: see "blocks of data on stdin" above for what differs.

examples:
  conveyor run gzip ::: *.log                       # gzip each file, -j = cores
  find . -name '*.jpg' | conveyor run -j 50% convert {} {.}.png
  conveyor run --tag -k 'wc -l {}' ::: *.txt        # tagged, in input order
  conveyor run --tagstring '{#} {/}' 'wc -l < {}' ::: *.txt   # tagged with STR
  conveyor run echo {1}-{2} ::: a b ::: 1 2         # a-1 a-2 b-1 b-2
  conveyor run echo {1}-{2} ::: a b :::+ 1 2        # a-1 b-2 (linked)
  conveyor run --link echo ::: a b c ::: 1 2        # a 1, b 2, c 1 (wraps)
  conveyor run -a hosts.txt ssh {} uptime           # inputs from a file
  conveyor run -n 2 echo {2}-{1} ::: a b c d        # b-a d-c: two inputs a job
  conveyor run --csv --header : 'mv {old} {new}' :::: renames.csv   # named columns
  conveyor run --colsep '\t' -a table.tsv 'mv {1} {2}'   # columns of each line
  conveyor run --timeout 30 --retries 2 --joblog jobs.db ./fetch.sh {} :::: urls.txt
  conveyor run --resume --joblog jobs.db ./fetch.sh {} :::: urls.txt   # after a crash
  conveyor run --halt now,success=1 'ping -c1 {} >/dev/null && echo {}' ::: h1 h2 h3
  conveyor run --dry-run mv {} {.}.bak ::: a.txt b.txt   # print, run nothing
  conveyor run --cluster tcp://10.0.0.5:8786 --joblog j.db ./sim.sh {} ::: 1 2 3
  conveyor run -X -j1 rm -f {} ::: *.tmp             # as many files a command as fit
  conveyor run -m -j1 tar czf logs.tgz ::: *.log       # {} = all of them
  conveyor run --results out/ ./test.sh ::: a b       # out/1/a/{stdout,stderr,seq,exitcode}
  conveyor run --results runs.csv ./bench {} ::: 1 2  # one table (also .tsv, .json)
  conveyor run --timeout 300% --termseq INT,2000,KILL,25 ./job ::: *.in
  conveyor run --load 80% --memfree 2G ./build {} ::: targets/*
  conveyor run --shell bash '[[ {} == *.gz ]] && zcat {} || cat {}' ::: *
  conveyor run -j0 'curl -s {} >/dev/null' :::: urls.txt   # as many at once as possible
  conveyor sem -j 2 --id dl wget URL; conveyor sem --wait --id dl

--cluster ADDRESS (a Dask scheduler: tcp://HOST:PORT, or tls://HOST:PORT with the TLS
files in Dask's configuration, e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE):
  each job runs on a worker's machine under /bin/sh, in its own process group, with
  --timeout, --halt and Ctrl-C killing it there; its output comes back whole (so
  --line-buffer and -u are refused) and the job log's Host is the worker's address.
  -j defaults to the cluster's worker threads. The workers need conveyor installed.
  A plaintext tcp:// address that is not loopback gets a warning: whoever reaches
  that port can run code on every worker.
"""


def run_parser() -> ErrorRaisingParser:
    """The argparse parser for ``conveyor run`` (without the ::: / :::: groups)."""
    p = ErrorRaisingParser(
        prog="conveyor run",
        usage="conveyor run [options] [COMMAND ...] [::: ARG ...] [:::: FILE ...] ...",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a(
        "-j",
        "--jobs",
        metavar="N|+N|-N|N%|0",
        help="run N jobs at once; +N/-N: the usable cores plus/minus N; N%%: that share "
        "of them, rounded up; 0: as many as possible "
        f"({MAX_JOBS} here) "
        f"(default: the usable cores, {usable_cores()} here; with --cluster: the "
        "cluster's worker threads). E.g. -j 50%%, -j +2, -j0",
    )
    a(
        "--timeout",
        metavar="SECONDS|N%",
        help="kill a job (its whole process group, see --termseq) that runs longer; it "
        "counts as failed. A suffix s, m, h or d gives the unit; N%% is relative to the "
        "median run time of the jobs that succeeded so far (none before the first). "
        "E.g. --timeout 1m, --timeout 300%%",
    )
    a(
        "--retries",
        metavar="N",
        type=int,
        default=0,
        help="run a failed job again, up to N more times (N+1 runs in all; GNU "
        "parallel: N in all, see below)",
    )
    a("--halt", metavar="SPEC", default="never", help="stop early, see below")
    add_resource_options(p)
    a("-k", "--keep-order", action="store_true", help="print output in input order")
    a("--tag", action="store_true", help="prefix each output line with the input and a TAB")
    a(
        "--tagstring",
        metavar="STR",
        help="prefix each output line with STR and a TAB; replacement strings in STR "
        "are replaced by the values as they are (implies --tag)",
    )
    a(
        "--line-buffer",
        "--lb",
        action="store_true",
        help="print whole lines as they come instead of whole jobs at their end",
    )
    a(
        "-u",
        "--ungroup",
        action="store_true",
        help="write output as it comes, not even whole lines (fastest; jobs' output "
        "may mix); not with -k, --tag or --line-buffer",
    )
    a("--dry-run", action="store_true", help="print the commands, run nothing")
    a("--progress", "--bar", action="store_true", help="show a progress bar on stderr")
    a(
        "--eta",
        action="store_true",
        help="--progress with the estimated time left: reads all inputs (also stdin) "
        "before the first job, to know their number",
    )
    a("--shuf", action="store_true", help="run the jobs in random order")
    a(
        "--delay",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="wait this long between job starts",
    )
    a("-0", "--null", action="store_true", help="inputs are separated by NUL, not newline")
    a(
        "-a",
        "--arg-file",
        metavar="FILE",
        action="append",
        default=[],
        help="an input group of FILE's lines, like ':::: FILE' (before the ::: groups; "
        "may be repeated)",
    )
    per_job = p.add_mutually_exclusive_group()
    per_job.add_argument(
        "-X",
        dest="multi",
        action="store_const",
        const="X",
        help="as many inputs per job as the command line can take, each word holding "
        "{} repeated per input (context replace: 'x{}y' on a b -> xay xby), spread "
        "evenly over the -j slots (all inputs, also stdin, are read first); with no {} "
        "they are appended. E.g. conveyor run -X rm -f {} ::: *.tmp",
    )
    per_job.add_argument(
        "-m",
        dest="multi",
        action="store_const",
        const="m",
        help="like -X, but {} is replaced by all the inputs as separate words ('x{}y' on "
        "a b -> xa by). E.g. conveyor run -m -j1 tar czf all.tgz ::: *.log",
    )
    per_job.add_argument(
        "-n",
        "--max-args",
        metavar="N",
        type=int,
        help="give each job N inputs (the last may get fewer): {} is all of them, "
        "{1}..{N} each; 0 runs one job per input with none",
    )
    per_job.add_argument(
        "-N",
        "--max-replace-args",
        metavar="N",
        type=int,
        dest="max_args",
        help="the same as -n",
    )
    a(
        "--colsep",
        "-C",
        metavar="REGEX",
        help="split each input into columns {1} {2} ... at this Python regular "
        "expression (one character is literal); {} is all columns",
    )
    a(
        "--csv",
        action="store_true",
        help="read inputs as CSV records (a quoted field may hold separators and newlines)"
        " and split them into columns {1} {2} ...",
    )
    a(
        "--header",
        metavar=":",
        help="':': the first value of each input group (with --colsep/--csv: the first "
        "line's columns) names it, for {name} in COMMAND; not itself an input",
    )
    a(
        "--link",
        "--xapply",
        action="store_true",
        help="take the input groups side by side (the i-th job gets the i-th value of "
        "each; shorter groups wrap around) instead of every combination",
    )
    a(
        "-q",
        "--quote",
        action="store_true",
        help="quote COMMAND's words too: run it as a plain argv without shell syntax",
    )
    a(
        "--shell",
        metavar="PATH",
        default=None,
        help="the POSIX shell that runs COMMAND (sh, dash, bash, ksh, zsh; default: "
        "$CONVEYOR_SHELL, else $PARALLEL_SHELL, else /bin/sh). E.g. --shell bash "
        "'[[ {} == *.gz ]] && echo {}'",
    )
    a("--joblog", metavar="FILE", help="record every finished job in this SQLite file")
    a(
        "--cluster",
        metavar="ADDRESS",
        help="run the jobs on a Dask cluster's workers (tcp://HOST:8786, tls://...; needs "
        "conveyor[dask] here and conveyor on the workers); e.g. conveyor run --cluster "
        "tcp://10.0.0.5:8786 ./render.sh {} ::: scenes/*",
    )
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true", help="with --joblog: skip jobs the log has as finished"
    )
    resume.add_argument(
        "--resume-failed",
        action="store_true",
        help="with --joblog: skip jobs the log has as succeeded, rerun failed",
    )
    add_pipe_options(p)  # --pipe, --pipe-part, --block, --recend, ... (cli/pipe.py)
    a(
        "command",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="the command (shell code) with replacement strings",
    )
    return p


@dataclass(frozen=True)
class Halt:
    """A parsed --halt spec: ``when`` 'never'/'now'/'soon', ``what`` fail/success/done."""

    when: str = "never"
    what: str = "fail"
    count: int = 1
    percent: float | None = None

    def threshold(self, total: int | None) -> int:
        """The number of matching jobs that triggers the halt."""
        if self.percent is None:
            return self.count
        return max(1, math.ceil((total or 0) * self.percent / 100))


_HALT = re.compile(r"(now|soon),(fail|success|done)=([0-9]+(?:\.[0-9]+)?)(%?)\Z")


def parse_halt(spec: str) -> Halt:
    """Parse ``never``, ``now,fail=1``, ``soon,done=30%`` (and GNU's 0/1/2 shorthands)."""
    spec = spec.strip().lower()
    legacy = {
        "0": "never",
        "1": "soon,fail=1",
        "2": "now,fail=1",
        "-1": "soon,success=1",
        "-2": "now,success=1",
    }
    spec = legacy.get(spec, spec)
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?%", spec):  # GNU: 1-99% is soon,fail=1-99%
        spec = f"soon,fail={spec}"
    if spec == "never":
        return Halt()
    m = _HALT.match(spec)
    if not m:
        raise UsageError(
            f"bad --halt spec {spec!r}: expected never, or now|soon,"
            "fail|success|done=N or =N% (e.g. now,fail=1)"
        )
    when, what, number, percent = m.groups()
    if percent:
        value = float(number)
        if not 0 < value <= 100:
            raise UsageError(f"bad --halt spec {spec!r}: percentage must be in (0, 100]")
        return Halt(when, what, 1, value)
    if "." in number or int(number) < 1:
        raise UsageError(f"bad --halt spec {spec!r}: the count must be a whole number >= 1")
    return Halt(when, what, int(number))


def _max_jobs() -> int:
    """``-j0``: as many jobs as possible. Each running job holds 3 file descriptors
    (two pipes and a pidfd) and a thread, so the limit is a quarter of the soft
    RLIMIT_NOFILE, at most 1024 (GNU parallel measures how many processes and files it
    can open, which takes seconds)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY or soft <= 0:
            soft = 4096
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(1, min(1024, (soft - 32) // 4))


MAX_JOBS = _max_jobs()


def parse_jobs(text: str) -> int:
    """``N``, ``+N``/``-N`` (cores plus/minus N), ``N%`` of the usable cores (rounded up,
    as GNU parallel) or ``0`` (as many as possible) -> a number of jobs >= 1.

    >>> parse_jobs("3"), parse_jobs("0") == MAX_JOBS
    (3, True)
    >>> parse_jobs("+1") == usable_cores() + 1, parse_jobs("-1000")
    (True, 1)
    """
    m = re.fullmatch(r"\s*([-+]?)([0-9]+(?:\.[0-9]+)?)(%?)\s*", text)
    if not m:
        raise UsageError(f"bad -j/--jobs value {text!r}: expected N, +N, -N, N% or 0")
    sign, value, percent = m.group(1), float(m.group(2)), m.group(3)
    if percent:
        if sign or value <= 0:
            raise UsageError(f"bad -j/--jobs value {text!r}: must be more than 0%")
        return max(1, math.ceil(usable_cores() * value / 100 - 1e-9))
    if value != int(value):
        raise UsageError(f"bad -j/--jobs value {text!r}: must be a whole number")
    if sign:
        return max(1, usable_cores() + int(value) * (1 if sign == "+" else -1))
    return MAX_JOBS if value == 0 else int(value)


_TIME_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_timeout(text: str | None) -> tuple[float | None, float | None]:
    """``--timeout``: (seconds, None) or (None, percent of the median run time).

    >>> parse_timeout("1.5"), parse_timeout("2m"), parse_timeout("200%")
    ((1.5, None), (120.0, None), (None, 200.0))
    """
    if text is None:
        return None, None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([smhd%]?)\s*", text, re.I)
    value = float(m.group(1)) if m else math.nan
    if not m or not (value > 0 and math.isfinite(value)):
        raise UsageError(
            f"bad --timeout {text!r}: must be a positive number of seconds (suffix s, m, h "
            "or d for the unit) or a percentage N% of the median run time"
        )
    unit = m.group(2).lower()
    if unit == "%":
        return None, value
    return value * _TIME_UNITS[unit], None


def choose_shell(given: str | None) -> str:
    """The shell for the jobs: ``--shell``, else $CONVEYOR_SHELL, else $PARALLEL_SHELL,
    else /bin/sh. A name without '/' is looked up in PATH.

    >>> choose_shell("/bin/sh")
    '/bin/sh'
    """
    import shutil

    shell = given or os.environ.get("CONVEYOR_SHELL") or os.environ.get("PARALLEL_SHELL")
    if not shell:
        return "/bin/sh"
    source = "--shell" if given else "$CONVEYOR_SHELL/$PARALLEL_SHELL"
    found = shell if "/" in shell else shutil.which(shell)
    if found is None or not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise UsageError(f"bad {source} {shell!r}: not an executable file")
    name = os.path.basename(found)
    if name in ("fish", "csh", "tcsh", "rc", "nu", "xonsh", "pwsh"):
        raise UsageError(
            f"bad {source} {shell!r}: jobs need a POSIX shell (sh, dash, bash, ksh, zsh); "
            "values reach them as arguments of the shell's positional parameters"
        )
    return found


def _check_multi(ns: argparse.Namespace, groups: Sequence[Group]) -> None:
    """-X/-m: the combinations they cannot be used in, named."""
    flag = f"-{ns.multi}"
    for other, given in (
        ("-n/-N", ns.max_args is not None),
        ("--colsep", ns.colsep is not None),
        ("--csv", ns.csv),
        ("--header", ns.header is not None),
        ("--link", ns.link),
    ):
        if given:
            raise UsageError(
                f"{flag} and {other}: {flag} puts as many inputs into a job as fit, so each "
                "job has a varying number of arguments; use one of them"
            )
    if not ns.command or ns.command == ["--"]:
        raise UsageError(f"{flag} needs a COMMAND (the inputs are its arguments)")
    text = " ".join(ns.command)
    positional = re.search(r"\{-?[1-9][0-9]*(?:\.|//|/\.|/)?\}", text)
    if positional:
        raise UsageError(
            f"{flag} and {positional.group(0)}: with {flag} a job has as many arguments as "
            "fit, so only {} (and {.} {/} {//} {/.} {#} {%}) can be used"
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything ``conveyor run`` was asked to do, validated."""

    command: list[str]
    groups: list[Group]
    jobs: int
    timeout: float | None
    retries: int
    halt: Halt
    keep_order: bool
    tag: bool
    tagstring: str | None
    line_buffer: bool
    ungroup: bool
    dry_run: bool
    progress: bool
    eta: bool
    shuf: bool
    delay: float
    null: bool
    link: bool
    colsep: str | None
    csv: bool
    header: bool
    max_args: int | None
    quote: bool
    joblog: str | None
    resume: str  # "new", "resume" or "resume-failed"
    cluster: str | None = None  # --cluster: a Dask scheduler's address
    jobs_given: bool = True  # whether -j was given (else --cluster sizes it)
    pipe: PipeSpec | None = None  # --pipe / --pipe-part
    # Issue 13 (each with a default, so that callers building a RunConfig by hand and
    # other branches adding fields keep working).
    timeout_percent: float | None = None  # --timeout N%: of the median successful run
    shell: str = "/bin/sh"
    multi: str | None = None  # -X or -m
    resources: Resources = field(
        default_factory=Resources
    )  # --load, --memfree, --termseq, --results


def _negative_values(parser: argparse.ArgumentParser, head: list[str]) -> list[str]:
    """Attach a value starting with '-' to its option (``--halt -1`` -> ``--halt=-1``,
    ``-j -2``, ``--results -.csv``):
    argparse would take ``-1`` for an option, as ``-0`` is one. Only the options before
    COMMAND are looked at."""
    takes_value = {
        s
        for action in parser._actions
        if action.option_strings and action.nargs is None and action.const is None
        for s in action.option_strings
    }
    out: list[str] = []
    i = 0
    while i < len(head):
        word = head[i]
        if not word.startswith("-") or word == "--":
            out.extend(head[i:])
            break
        if word in takes_value and i + 1 < len(head):
            value = head[i + 1]
            if re.match(r"-[0-9.]", value):  # -1, -50%, -.csv
                out.append(f"{word}={value}" if word.startswith("--") else word + value)
            else:
                out.extend((word, value))
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def parse_run_args(argv: Sequence[str]) -> RunConfig:
    """Parse ``conveyor run``'s arguments; raise :class:`UsageError` if they are bad."""
    head, groups = split_argv(argv)
    parser = run_parser()
    ns = parser.parse_args(_negative_values(parser, head))
    command = list(ns.command)
    if command and command[0] == "--":
        command.pop(0)
    timeout, timeout_percent = parse_timeout(ns.timeout)
    if ns.retries < 0:
        raise UsageError(f"bad --retries {ns.retries}: must be 0 or more")
    if not (ns.delay >= 0 and math.isfinite(ns.delay)):
        raise UsageError(f"bad --delay {ns.delay}: must be 0 or more seconds")
    if ns.ungroup:
        for flag, given in (
            ("-k/--keep-order", ns.keep_order),
            ("--tag/--tagstring", ns.tag or ns.tagstring is not None),
            ("--line-buffer", ns.line_buffer),
        ):
            if given:
                raise UsageError(
                    f"-u/--ungroup and {flag}: ungrouped output is written as it comes, "
                    "so it can be neither ordered, tagged nor line-buffered"
                )
    if ns.results is not None and (ns.ungroup or ns.line_buffer):
        flag = "-u/--ungroup" if ns.ungroup else "--line-buffer"
        raise UsageError(
            f"--results and {flag}: --results saves each job's whole output, which "
            f"{flag} writes as it comes"
        )
    if ns.header is not None and ns.header != ":":
        raise UsageError(f"bad --header {ns.header!r}: only ':' (the first line) is supported")
    if ns.csv and ns.colsep is not None:
        raise UsageError("--csv and --colsep: choose one (--csv splits at commas)")
    if ns.max_args is not None and ns.max_args < 0:
        raise UsageError(f"bad -n/-N {ns.max_args}: must be 0 or more")
    if ns.cluster is not None:
        for flag, given in (("--line-buffer", ns.line_buffer), ("-u/--ungroup", ns.ungroup)):
            if given:
                raise UsageError(
                    f"--cluster and {flag}: a remote job's output arrives whole when it ends"
                )
        if not ns.cluster.strip():
            raise UsageError("bad --cluster '': expected a scheduler address (tcp://HOST:PORT)")
        for flag, given in (("--load", ns.load), ("--memfree", ns.memfree)):
            if given is not None:
                raise UsageError(
                    f"--cluster and {flag}: {flag} measures this machine, and the jobs run on "
                    "the cluster's"
                )
    if ns.multi is not None:
        _check_multi(ns, groups)
    if (ns.resume or ns.resume_failed) and not ns.joblog:
        raise UsageError("--resume and --resume-failed need --joblog FILE")
    try:
        pipe = pipe_options(ns, groups, command)  # and -N with --pipe: records per job
    except ValueError as e:
        raise UsageError(str(e)) from None
    groups = [Group("file", path=path) for path in ns.arg_file] + groups
    return RunConfig(
        command=command,
        groups=groups,
        jobs=parse_jobs(str(usable_cores()) if ns.jobs is None else ns.jobs),
        timeout=timeout,
        retries=ns.retries,
        halt=parse_halt(ns.halt),
        keep_order=ns.keep_order,
        tag=ns.tag or ns.tagstring is not None,
        tagstring=ns.tagstring,
        line_buffer=ns.line_buffer,
        ungroup=ns.ungroup,
        dry_run=ns.dry_run,
        progress=ns.progress or ns.eta,
        eta=ns.eta,
        shuf=ns.shuf,
        delay=ns.delay,
        null=ns.null,
        link=ns.link,
        colsep=ns.colsep,
        csv=ns.csv,
        header=ns.header is not None,
        max_args=ns.max_args,
        quote=ns.quote,
        joblog=ns.joblog,
        resume="resume" if ns.resume else "resume-failed" if ns.resume_failed else "new",
        cluster=ns.cluster,
        jobs_given=ns.jobs is not None,
        pipe=pipe,
        timeout_percent=timeout_percent,
        shell=choose_shell(ns.shell),
        multi=ns.multi,
        resources=parse_resources(ns),
    )
