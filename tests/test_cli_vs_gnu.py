"""Differential test: ``conveyor run`` against GNU parallel on the same command lines.

Each case runs through both tools in a fresh directory; their stdout (sorted by line
unless the case keeps order) and exit status must be equal. A case where conveyor
deliberately differs carries the reason, and the test then asserts that the outputs
*do* differ, so that the table stays true; ``conveyor run --help`` documents each one.

GNU parallel comes from Debian's package ``parallel`` (``.ci/run`` installs it); without
it these tests skip with a reason. Runtime: about 1 s per case on a quiet machine (GNU
parallel's start-up dominates), so the table is kept to the behaviours users rely on.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_helpers import CLI


def _gnu_parallel() -> str | None:
    path = shutil.which("parallel")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return path if "GNU parallel" in version.stdout else None


GNU = _gnu_parallel()
# GNU parallel's --csv needs Perl's Text::CSV (Debian: libtext-csv-perl).
HAS_TEXT_CSV = (
    shutil.which("perl") is not None
    and subprocess.run(["perl", "-MText::CSV", "-e1"], capture_output=True, check=False).returncode
    == 0
)
pytestmark = [
    pytest.mark.gnu,
    pytest.mark.skipif(
        GNU is None,
        reason="GNU parallel is not installed (apt-get install parallel; .ci/run does it)",
    ),
]


@dataclass(frozen=True)
class Case:
    name: str
    args: list[str]
    stdin: bytes = b""
    ordered: bool = False  # compare stdout as is (else sorted lines)
    files: tuple[tuple[str, str], ...] = ()  # (name, text) written into the directory first
    differs: str = ""  # why conveyor deliberately differs ("" = it must not)


PATHS = ["a.tar.gz", "dir.x/file.txt", "/c", "a/b/", ".bashrc", "a/.b", "file.", "./a", "/"]


def _halt(spec: str, command: str, *statuses: str) -> list[str]:
    return ["-j1", "--halt", spec, command, ":::", *statuses]


CASES = [
    Case("basic", ["echo {}", ":::", "a", "b", "c"]),
    Case("keep-order", ["-k", "-j3", "sleep 0.{}; echo {}", ":::", "3", "1", "2"], ordered=True),
    Case("quotes", ["-k", "echo {}", ":::", "it's", 'say "hi"', "a  b"], ordered=True),
    Case("dollar-backquote", ["-k", "echo {}", ":::", "$HOME", "$(echo x)", "`echo y`", "a;b|c&"]),
    Case("glob", ["-k", "echo {}", ":::", "*", "?", "[a]"], ordered=True),
    Case("null-separated-newlines", ["-0", "-k", "echo {}"], stdin=b"a\nb\0c\0", ordered=True),
    Case("stdin-lines-empty-line", ["-k", "echo x{}y"], stdin=b"a\n\nb c\n", ordered=True),
    Case(
        "paths",
        ["-k", "echo {} {.} {/} {//} {/.}", ":::", *PATHS],
        ordered=True,
    ),
    Case("groups", ["-k", "echo {1}-{2} {}", ":::", "a", "b", ":::", "1", "2"], ordered=True),
    Case(
        "group-from-stdin",
        ["-k", "echo {1}{2}", "::::", "-", ":::", "1", "2"],
        b"a\nb\n",
        ordered=True,
    ),
    Case("append", ["-k", "echo", ":::", "a b", "c", ":::", "d"], ordered=True),
    Case("no-command", ["-k", ":::", "echo a", "echo b | tr b B"], ordered=True),
    Case("seq-and-slot", ["-j1", "-k", "echo {#} {%}", ":::", "a", "b"], ordered=True),
    Case("quote-q", ["-q", "-k", "printf", "%s|\\n", "{}", ":::", "a b", "c;d"], ordered=True),
    Case("cmdsub", ["-k", 'echo "$(echo {})"', ":::", "$(echo pwned)", "it's", "a  b"]),
    Case("basename-cmdsub", ["-k", 'echo "$(basename {} .txt)"', ":::", "it's.txt", "a  b.txt"]),
    Case("backquotes", ["-k", "echo `echo {}`", ":::", "a  b", "it's"], ordered=True),
    Case("arithmetic", ["-k", "echo $(({}*2))", ":::", "3", "-4"], ordered=True),
    Case("awk-braces-with-space", ["-k", "echo {} | awk '{print $2}'", ":::", "a b"]),
    Case("dry-run", ["--dry-run", "-k", "echo {} {.}", ":::", "a b.x", "it's", "c"], ordered=True),
    Case("exit-codes", ["echo {}; exit {}", ":::", "0", "1", "2", "3"]),
    Case("all-succeed", ["exit {}", ":::", "0", "0"]),
    Case("killed-by-signal", ["kill -9 $$", ":::", "x"]),
    Case("tag", ["--tag", "-k", "echo {}", ":::", "a", "b c"], ordered=True),
    Case("tag-groups", ["--tag", "-k", "echo {}", ":::", "a", "b", ":::", "1"], ordered=True),
    Case("halt-now-fail", _halt("now,fail=1", "echo {}; exit {}", "0", "3", "0")),
    Case("halt-soon-fail-2", _halt("soon,fail=2", "exit {}", "1", "0", "2", "0")),
    Case("halt-now-success", _halt("now,success=1", "exit {}", "1", "0", "1")),
    Case("halt-done-percent", _halt("now,done=50%", "exit {}", "1", "1", "0", "1")),
    Case("halt-fail-percent-never", _halt("soon,fail=50%", "exit {}", "3", "0", "0")),
    Case("halt-killed", _halt("now,fail=1", "kill -9 $$", "x")),
    # Input shaping (issue 13).
    Case("link", ["-k", "--link", "echo", ":::", "a", "b", "c", ":::", "1", "2"], ordered=True),
    Case("link-plus", ["-k", "echo", ":::", "a", "b", "c", ":::+", "1", "2"], ordered=True),
    Case(
        "link-plus-in-product",
        ["-k", "echo", ":::", "a", "b", ":::", "1", "2", "3", ":::+", "x", "y"],
        ordered=True,
    ),
    Case(
        "link-all-with-plus",
        ["-k", "--link", "echo", ":::", "a", "b", ":::", "1", "2", "3", ":::+", "x", "y"],
        ordered=True,
    ),
    Case(
        "linked-files",
        ["-k", "echo", "::::", "f", "::::+", "g", "h"],
        ordered=True,
        files=(("f", "f1\nf2\n"), ("g", "g1\ng2\ng3\n"), ("h", "h1\nh2\n")),
    ),
    Case("arg-file", ["-k", "-a", "f", "echo"], ordered=True, files=(("f", "f1\nf 2\n"),)),
    Case(
        "arg-files-and-args",
        ["-k", "-a", "f", "-a", "g", "echo", ":::", "x", "y"],
        ordered=True,
        files=(("f", "f1\nf2\n"), ("g", "g1\n")),
    ),
    Case("arg-file-missing", ["-a", "nonexistent", "echo"]),
    Case("colsep", ["-k", "--colsep", ",", "echo {}[{3}][{1}]"], b"a,b,,\n,x\n\n", ordered=True),
    Case("colsep-append", ["-k", "--colsep", "\t", "echo"], b"a\tb\nc\n", ordered=True),
    Case("colsep-regex", ["-k", "--colsep", " +", "echo {2}-{1}"], b"a  b\nc d\n", ordered=True),
    Case("colsep-last", ["-k", "--colsep", ":", "echo {-1}"], b"a:b:c\nd\n", ordered=True),
    Case(
        "colsep-arg-file",
        ["-k", "--colsep", ",", "-a", "t", "echo {2} {1}"],
        ordered=True,
        files=(("t", "a,b\nc,d\n"),),
    ),
    Case("max-args-append", ["-k", "-n3", "echo", ":::", "a", "b", "c", "d"], ordered=True),
    Case("max-args-positions", ["-k", "-n2", "echo {1}{2}{3}", ":::", "a", "b", "c"], ordered=True),
    Case("max-args-stdin", ["-k", "-n", "2", "echo {2}-{1}"], b"a\nb\nc\n", ordered=True),
    Case(
        "max-args-groups",
        ["-k", "-n2", "echo {} {2}", ":::", "a", "b", ":::", "x", "y"],
        ordered=True,
    ),
    Case("max-args-ops", ["-k", "-n2", 'echo {.} "{/}"', ":::", "d/a.x", "b.y", "c"], ordered=True),
    Case("max-args-zero", ["-k", "-N0", "echo {} x", ":::", "a", "b"], ordered=True),
    Case("max-replace-args", ["-k", "-N2", "echo {2}-{1}", ":::", "a", "b", "c"], ordered=True),
    Case("max-args-tag", ["-k", "--tag", "-n2", "echo {#}", ":::", "a", "b", "c"], ordered=True),
    Case(
        "max-args-dry-run",
        ["-k", "--dry-run", "-n2", "echo {#} {}", ":::", "a b", "c"],
        ordered=True,
    ),
    Case("max-args-link", ["-k", "-n2", "--link", "echo", ":::", "a", "b", "c", ":::", "1", "2"]),
    Case("csv", ["-k", "--csv", "echo {2}-{1}"], b'a,"b,c"\n"x\ny",z\n"q""r",\n', ordered=True),
    Case("csv-args", ["-k", "--csv", "echo {}", ":::", 'x,"y,z"', "a,b"], ordered=True),
    Case(
        "header-csv",
        ["-k", "--csv", "--header", ":", "echo {h2}{h1}"],
        b"h1,h2\n1,2\n",
        ordered=True,
    ),
    Case(
        "header-colsep",
        ["-k", "--header", ":", "--colsep", ",", "echo {n}={name}"],
        b"name,n\nfoo,1\nbar,2\n",
        ordered=True,
    ),
    Case(
        "header-stdin", ["-k", "--header", ":", "echo {name} {1} {}"], b"name\nfoo\n", ordered=True
    ),
    Case(
        "header-groups",
        ["-k", "--header", ":", "echo {a}{b}", ":::", "a", "1", "2", ":::", "b", "x"],
    ),
    Case(
        "header-ops", ["-k", "--header", ":", "echo {f.} {f/}", ":::", "f", "d/x.y"], ordered=True
    ),
    Case(
        "colsep-dry-run", ["-k", "--dry-run", "--colsep", ",", "echo {2}"], b"a,b c\n", ordered=True
    ),
    # Output (issue 13).
    Case(
        "tagstring", ["-k", "--tagstring", "{#}:{}-{.}", "echo x", ":::", "a.b", "c"], ordered=True
    ),
    Case(
        "tagstring-groups",
        ["-k", "--tagstring", "{2}", "echo", ":::", "a", ":::", "b"],
        ordered=True,
    ),
    Case("tagstring-literal", ["-k", "--tagstring", "{foo} {", "echo", ":::", "a"], ordered=True),
    Case(
        "tagstring-header",
        ["-k", "--header", ":", "--tagstring", "<{n}>", "echo"],
        b"n\nv\n",
        ordered=True,
    ),
    Case("ungroup", ["-u", "echo {}; echo e{} >&2", ":::", "a", "b", "c"]),
    # Where conveyor used to differ (issue 13).
    Case("unknown-braces", ["-k", "echo {} | sed 's/{x}/y/'", ":::", "{x}"], ordered=True),
    Case("awk-braces", ["-k", "echo {} | awk '{print $2}'; echo {foo} {a.b}", ":::", "a b"]),
    Case("env-seq", ["-k", "-j1", "echo $PARALLEL_SEQ $PARALLEL_JOBSLOT {}", ":::", "a", "b"]),
    Case("env-pid", ["-k", 'test "$PARALLEL_PID" -gt 1 && echo ok', ":::", "a"]),
    Case("quote-q-groups", ["-k", "-q", "printf", "[%s]\\n", "{}", ":::", "a", "b", ":::", "c"]),
    Case("quote-q-word-groups", ["-k", "-q", "printf", "[%s]\\n", "x{}y", ":::", "a", ":::", "c"]),
    Case("jobs-zero", ["-k", "-j0", "echo", ":::", "a", "b", "c"], ordered=True),
    Case("jobs-plus", ["-k", "-j+1", "echo {%}", ":::", "a"], ordered=True),
    Case("jobs-minus", ["-k", "-j", "-1", "echo {%}", ":::", "a", "b"], ordered=True),
    Case("jobs-percent-up", ["-k", "-j1%", "echo {%}", ":::", "a", "b"], ordered=True),
    Case("halt-legacy-success", _halt("-1", "exit {}", "1", "0", "1")),
    Case("halt-legacy-now-success", _halt("-2", "exit {}", "1", "0", "1")),
    Case("halt-legacy-percent", _halt("50%", "exit {}", "1", "0", "0", "0")),
    Case("halt-soon-fail-1", _halt("soon,fail=1", "exit {}", "0", "4", "0")),
    Case("timeout", ["--timeout", "0.5", "sleep {}; echo {}", ":::", "0", "5"]),
    Case("timeout-unit", ["--timeout", "1m", "echo {}", ":::", "a"]),
    Case(
        "timeout-percent",
        ["-j1", "--timeout", "300%", "sleep {}; echo {}", ":::", "0.1", "0.1", "0.1", "6"],
    ),
    Case(
        "halt-timeout", ["-j1", "--halt", "now,fail=1", "--timeout", "0.3", "sleep 5", ":::", "a"]
    ),
    Case("direct-exec", ["-k", "/usr/bin/printf", "%s.", ":::", "a b", "$(x)", "'"], ordered=True),
    Case(
        "direct-exec-context", ["-k", "/usr/bin/printf %s. x{}y", ":::", "a b", "-"], ordered=True
    ),
    Case("multi-X", ["-k", "-j4", "-X", "echo x{}y"], b"".join(b"%d\n" % i for i in range(1, 11))),
    Case("multi-m", ["-k", "-j4", "-m", "echo x{}y"], b"".join(b"%d\n" % i for i in range(1, 11))),
    Case("multi-X-append", ["-k", "-j1", "-X", "echo"], b"a\nb c\nd\n", ordered=True),
    Case("multi-X-two-words", ["-k", "-j1", "-X", "echo a{}b {} c"], b"1\n2\n3\n", ordered=True),
    Case("multi-X-groups", ["-k", "-j1", "-X", "echo {}", ":::", "a", "b", ":::", "1", "2"]),
    Case(
        "multi-X-seq", ["-k", "-j2", "-X", "echo {#}:{}", ":::", "a", "b", "c", "d"], ordered=True
    ),
    Case("results-dir", ["--results", "out", "echo {}", ":::", "a"], ordered=True),
    # Deliberate differences, each documented in `conveyor run --help`:
    Case(
        "jobs-minus-below-one",
        ["-k", "-j", "-100", "echo {%}", ":::", "a", "b"],
        ordered=True,
        differs="-j -N below 1 core: GNU parallel 20221122 exits 255 ('Cannot run any "
        "jobs') though its manual says 1 is used; conveyor uses 1, as the manual says",
    ),
    Case(
        "double-quoted-braces",
        ["-k", 'echo "{}"', ":::", "a  b"],
        differs="GNU splices the quoted value into the text, so its quotes show: 'a  b'; "
        'conveyor passes values out of band, so "{}" is the value itself',
    ),
    Case(
        "single-quoted-braces",
        ["-k", "echo '{}'", ":::", "a  b"],
        differs="GNU's spliced quotes cancel the user's, so the value is word-split "
        "(a b); conveyor gives the value as written (a  b)",
    ),
    Case(
        "retries-count",
        ["--retries", "2", "echo x >> count; wc -l < count; exit 1", ":::", "x"],
        differs="--retries N: GNU runs a job at most N times in all, conveyor N more times",
    ),
    Case(
        "colsep-one-character-is-literal",
        ["-k", "--colsep", "|", "echo {2}"],
        b"a|b\n",
        ordered=True,
        differs="a one-character --colsep is taken literally; GNU reads '|' as a regex "
        "(empty alternatives) and splits between every character",
    ),
]


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd
    )


def _finish(proc: subprocess.Popen[bytes], stdin: bytes) -> tuple[int, bytes]:
    try:
        out, _ = proc.communicate(stdin, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_as_gnu_parallel(case: Case, tmp_path: Path) -> None:
    assert GNU is not None
    if "--csv" in case.args and not HAS_TEXT_CSV:
        pytest.skip("GNU parallel's --csv needs Perl's Text::CSV (libtext-csv-perl)")
    ours_dir, theirs_dir = tmp_path / "conveyor", tmp_path / "gnu"
    for directory in (ours_dir, theirs_dir):
        directory.mkdir()
        for name, text in case.files:
            (directory / name).write_text(text)
    # Both at once: GNU parallel's start-up (Perl) is most of a case's time.
    gnu = _start([GNU, "--will-cite", *case.args], theirs_dir)
    conveyor = _start([*CLI, "run", *case.args], ours_dir)
    theirs = _finish(gnu, case.stdin)
    ours = _finish(conveyor, case.stdin)
    if not case.ordered:
        theirs = (theirs[0], b"".join(sorted(theirs[1].splitlines(keepends=True))))
        ours = (ours[0], b"".join(sorted(ours[1].splitlines(keepends=True))))
    if case.differs:
        assert ours != theirs, f"listed as a difference, but both give {ours!r}: {case.differs}"
    else:
        assert ours == theirs


def test_every_difference_is_in_the_help() -> None:
    from conveyor.cli.options import EPILOG

    section = EPILOG[EPILOG.index("differences from GNU parallel") :]
    keys = ("'a  b' with its quotes", "--retries N", "'{}'", "--colsep", "--shell", "-j0")
    for key in keys:
        assert key in section


def _joblog_rows(text: str) -> list[list[str]]:
    """A GNU-layout joblog without its times (Starttime, JobRuntime differ by nature)."""
    rows = [line.split("\t") for line in text.splitlines()]
    return [[*row[:2], "T", "T", *row[4:]] if i else row for i, row in enumerate(rows)]


def test_joblog_command_prints_gnu_parallels_layout(tmp_path: Path) -> None:
    assert GNU is not None
    args = ["-j1", "echo {}; exit {}", ":::", "0", "3", "12"]
    gnu_log, our_log = tmp_path / "gnu.tsv", tmp_path / "ours.db"
    subprocess.run([GNU, "--will-cite", "--joblog", str(gnu_log), *args], capture_output=True)
    subprocess.run([*CLI, "run", "--joblog", str(our_log), *args], capture_output=True)
    ours = subprocess.run([*CLI, "joblog", str(our_log)], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr
    assert _joblog_rows(ours.stdout) == _joblog_rows(gnu_log.read_text())
    # The fields GNU's layout formats: start with 3 decimals, runtime padded to 10.
    first = ours.stdout.splitlines()[1].split("\t")
    assert len(first[2].split(".")[1]) == 3 and len(first[3]) == 10


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "exitcode"  # conveyor's addition
    }


@pytest.mark.parametrize(
    "results",
    ["out", "out/", "res_{}/", "res_{}", "header"],
)
def test_results_layout_is_gnu_parallels(tmp_path: Path, results: str) -> None:
    assert GNU is not None
    args = ["--results", results, "echo {1}{2}; echo e{} >&2", ":::", "a", "b c/d", ":::", "x"]
    if "{}" in results:
        args = ["--results", results, "echo {}; echo e{} >&2", ":::", "a", "b c"]
    if results == "header":  # the groups' names instead of their numbers
        args = ["--header", ":", "--results", "foo", "echo {a} {b}", ":::", "a", "I", "II"]
        args += [":::", "b", "III"]
    trees = []
    for name, argv in (("gnu", [GNU, "--will-cite"]), ("ours", [*CLI, "run"])):
        directory = tmp_path / name
        directory.mkdir()
        done = subprocess.run([*argv, *args], cwd=directory, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout == b""  # saved, not printed
        trees.append(_tree(directory))
    assert trees[0] == trees[1]


def test_results_table_is_gnu_parallels(tmp_path: Path) -> None:
    assert GNU is not None
    tables = []
    for _name, argv in (("gnu", [GNU, "--will-cite"]), ("ours", [*CLI, "run"])):
        args = ["-k", "-j1", "--results", "-.csv", "echo {}; echo e >&2; exit {#}", ":::", "a"]
        done = subprocess.run([*argv, *args, 'b,"c'], capture_output=True, timeout=60, text=True)
        rows = [row[:2] + row[4:] for row in csv.reader(done.stdout.splitlines(keepends=True))]
        tables.append((done.returncode, rows))
    assert tables[0] == tables[1]
