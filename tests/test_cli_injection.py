"""``conveyor run`` never lets an input become shell code (issue 16, item 7).

Fuzzed with Hypothesis: hostile values (quotes, ``$(...)``, backquotes, ``;``, newlines,
globs, here-document delimiters, undecodable bytes, any NUL-free text) x every shell
context a replacement string can stand in. Each example runs one script holding all the
contexts, under dash (``/bin/sh`` here) and bash, and asserts that the command received
exactly the value in each context and that no file was created in its directory.
The compiled template is exercised directly (one shell per example); the real CLI is
checked on a batch of the same values, and ``--dry-run``'s text is checked to be
equivalent shell code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.cli.templates import UnsafeValue, compile_template

from cli_helpers import run

SHELLS = [sh for sh in ("dash", "bash") if shutil.which(sh)]

# (template line, expected output for a value; shells it applies to). Each line prints
# its result followed by NUL, so the outputs can be compared one by one.
Expect = Callable[[str], str]
_all = tuple(SHELLS)


def _subst(value: str) -> str:  # what $(...) and `...` make of a printed value
    return value.rstrip("\n")


NESTED_HEREDOC = "cat <<EOF\n$(printf '%s' '{}')\nEOF\nprintf '\\0'"
CONTEXTS: list[tuple[str, Expect, tuple[str, ...]]] = [
    ("printf '%s\\0' {}", lambda v: v, _all),
    ("printf '%s\\0' x{}y", lambda v: f"x{v}y", _all),
    ("printf '%s\\0' \"{}\"", lambda v: v, _all),
    ("printf '%s\\0' \"a {} b\"", lambda v: f"a {v} b", _all),
    ("printf '%s\\0' '{}'", lambda v: v, _all),
    ("printf '%s\\0' 'a {} b'", lambda v: f"a {v} b", _all),
    ("printf '%s\\0' \"$(printf '%s' {})\"", _subst, _all),
    ("printf '%s\\0' \"$(printf '%s' \"{}\")\"", _subst, _all),
    ("printf '%s\\0' \"$(printf '%s' '{}')\"", _subst, _all),
    ("printf '%s\\0' \"$(printf '%s' \"$(printf '%s' {})\")\"", _subst, _all),
    ("printf '%s\\0' \"`printf '%s' {}`\"", _subst, _all),
    ("printf '%s\\0' \"`printf '%s' \"{}\"`\"", _subst, _all),
    ("printf '%s\\0' \"`printf '%s' '{}'`\"", _subst, _all),
    ("x=`printf '%s' {}`; printf '%s\\0' \"$x\"", _subst, _all),
    ("printf '%s\\0' \"${unset_var:-{}}\"", lambda v: v, _all),
    ("y={}; printf '%s\\0' \"${y#{}}\"", lambda v: "", _all),
    ("x={}; printf '%s\\0' \"$x\"", lambda v: v, _all),
    ("case {} in {}) printf 'same\\0';; *) printf 'other\\0';; esac", lambda v: "same", _all),
    ("f() { printf '%s\\0' \"$1\" {}; }; f arg", lambda v: f"arg\0{v}", _all),
    ("printf '%s\\0' done # {} in a comment stays text", lambda v: "done", _all),
    ("cat <<EOF\n{}\nEOF\nprintf '\\0'", lambda v: f"{v}\n", _all),
    ("cat <<-EOF\n\t{}\n\tEOF\nprintf '\\0'", lambda v: f"{v}\n", _all),
    (NESTED_HEREDOC, lambda v: f"{_subst(v)}\n", _all),
    ("cat <<<{}; printf '\\0'", lambda v: f"{v}\n", ("bash",)),
    ("cat <<<\"a {}\"; printf '\\0'", lambda v: f"a {v}\n", ("bash",)),
    ("printf '%s\\0' $'a{}b'", lambda v: f"a{v}b", ("bash",)),
    ("printf '%s\\0' \"${#unset_var}{}\"", lambda v: f"0{v}", _all),
]

HOSTILE = [
    "$(touch pwned)",
    "`touch pwned`",
    "'; touch pwned; '",
    '"; touch pwned; "',
    "$(touch pwned)'\"`touch pwned`",
    "\nEOF\ntouch pwned\n",
    "EOF",
    "a[$(touch pwned)]",
    "${x:=$(touch pwned)}",
    "*",
    "?",
    "[a]",
    "~",
    "-n",
    "\\",
    "\\'",
    "'",
    '"',
    "`",
    "$",
    "}",
    "{}",
    ")",
    "<(",
    ">(",
    "#",
    " ",
    "\t",
    "\n",
]

values = st.one_of(
    st.lists(st.sampled_from(HOSTILE), max_size=5).map("".join),
    st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=30),
    st.binary(max_size=20).map(lambda b: os.fsdecode(b.replace(b"\0", b""))),
)


def _script_for(shell: str, skip: str = "") -> tuple[str, list[Expect]]:
    lines = [(t, e) for t, e, shells in CONTEXTS if shell in shells and t != skip]
    return "\n".join(t for t, _ in lines), [e for _, e in lines]


def _outputs(argv: list[str], cwd: Path) -> list[bytes]:
    done = subprocess.run(argv, capture_output=True, cwd=cwd, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split(b"\0")[:-1]


def _expected(expects: list[Expect], value: str) -> list[bytes]:
    return [os.fsencode(e(value)) for e in expects]


@pytest.mark.parametrize("shell", SHELLS)
@settings(max_examples=100, deadline=None)
@given(value=values)
def test_values_are_literal_in_every_context(shell: str, value: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _check_contexts(shell, value, Path(directory))


def _dash_delimiter_bug(value: str, delimiter: str = "EOF") -> bool:
    """Whether dash (0.5.12) would drop a byte of ``value`` written into a here-document's body:
    a line that starts (after tabs, for ``<<-``) with part of the delimiter and then a
    non-ASCII character loses that character's first byte (``E`` + U+0080 against ``EOF``)."""
    for line in value.split("\n"):
        line = line.lstrip("\t")
        for k in range(1, len(delimiter)):
            if line[:k] == delimiter[:k] and len(line) > k and ord(line[k]) >= 0x80:
                return True
    return False


def _check_contexts(shell: str, value: str, tmp_path: Path) -> None:
    script, expects = _script_for(shell)
    template = compile_template([script], groups=1)
    argv = template.argv((value,), seq=1, slot=1)
    assert value in argv[4:]  # passed as an argument of the shell...
    assert argv[2] == template.argv(("x",), seq=1, slot=1)[2]  # ...never into its script
    got = _outputs([shell, *argv[1:]], tmp_path)
    assert b"\0".join(got) == b"\0".join(_expected(expects, value))
    # --dry-run's text is equivalent shell code. Not checked under bash for a value in
    # $(...) in a here-document: bash reads the body's lines first, so a value's line
    # equal to the delimiter (or ending in a backslash) changes the text shown; this
    # exception is documented in Template.display.
    if shell == "bash":
        script, expects = _script_for(shell, skip=NESTED_HEREDOC)
        template = compile_template([script], groups=1)
        got = _outputs([shell, *template.argv((value,), seq=1, slot=1)[1:]], tmp_path)
    shown = template.display((value,), seq=1, slot=1)
    if shell == "dash" and _dash_delimiter_bug(value):
        return  # the shown text cannot say it (see Template.display); the job was right above
    assert _outputs([shell, "-c", shown], tmp_path) == got
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=100, deadline=None)
@given(value=values)
def test_arithmetic_takes_numbers_only(value: str) -> None:
    template = compile_template(["echo $(( {} + 1 ))"], groups=1)
    numeric = value.strip() != "" and all(c in "0123456789+-*/%<>=!&|^~?:(), \t\n" for c in value)
    try:
        template.argv((value,), seq=1, slot=1)
    except UnsafeValue as e:
        assert not numeric
        assert "$((...))" in str(e)
    else:
        assert numeric or value.strip() == ""


def test_arithmetic_on_numbers_works_and_other_values_fail_their_job(tmp_path: Path) -> None:
    r = run("-k", "echo $(( {} * 2 )) $(({#}+1))", ":::", "21", "-3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "42 2\n-6 3\n"
    r = run("echo $(( {} ))", ":::", "a[$(touch pwned)]", cwd=tmp_path)
    assert r.returncode == 255
    assert "job 1 (input 'a[$(touch pwned)]')" in r.stderr
    assert "$((...))" in r.stderr
    assert not (tmp_path / "pwned").exists()


def test_issue_16_injection_through_command_substitution(tmp_path: Path) -> None:
    # The reported command: the value was spliced into "$(...)" and ran.
    r = run("-k", 'echo "$(echo {})"', ":::", "$(touch pwned)", "`touch pwned`", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "$(touch pwned)\n`touch pwned`\n"
    r = run('echo "$(basename {} .txt)"', ":::", "it's.txt", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "it's\n")
    assert list(tmp_path.iterdir()) == []


def test_cli_passes_hostile_values_in_every_context(tmp_path: Path) -> None:
    script, expects = _script_for("dash")
    inputs = tmp_path / "inputs"
    hostile = [*HOSTILE, "a b  c", "ünïcödé", "x\ny", ""]
    inputs.write_bytes(b"\0".join(os.fsencode(v) for v in hostile) + b"\0")
    work = tmp_path / "work"
    work.mkdir()
    r = run("-k", "-0", script, "::::", str(inputs), cwd=work)
    assert r.returncode == 0, r.stderr
    got = os.fsencode(r.stdout).split(b"\0")[:-1]
    expected = [b for v in hostile for b in _expected(expects, v)]
    assert b"\0".join(got) == b"\0".join(expected)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("delimiter", ["'EOF'", '"EOF"', "\\EOF"])
def test_quoted_here_document_is_refused(delimiter: str) -> None:
    r = run(f"cat <<{delimiter}\n{{}}\nEOF", ":::", "a")
    assert r.returncode == 255
    assert "quoted here-document" in r.stderr
    assert "Traceback" not in r.stderr


# -- the direct-exec path: a COMMAND of plain words runs without the shell --------------------

ARGV_PRINTER = "#!/bin/sh\nprintf '%s\\0' \"$@\"\n"
DIRECT = "{program} x{{}}y {{}} -{{.}}- {{/}} {{#}}"


def _argv_printer(directory: Path) -> Path:
    program = directory / "print-argv"
    program.write_text(ARGV_PRINTER)
    program.chmod(0o755)
    return program


def _shell_words(value: str, seq: int) -> list[str]:
    """What the shell builds for DIRECT: word splitting only at value boundaries."""
    from conveyor.cli.templates import transform

    return [f"x{value}y", value, f"-{transform('.', value)}-", transform("/", value), str(seq)]


@settings(max_examples=100, deadline=None)
@given(value=values)
def test_direct_exec_builds_the_shells_argv(value: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        program = _argv_printer(Path(directory))
        template = compile_template([DIRECT.format(program=program)], groups=1)
        assert template.executable == str(program)
        direct = template.direct_argv((value,), seq=7, slot=1)
        assert direct == [str(program), *_shell_words(value, 7)]
        # The same argv as the shell builds from the script (run it to see).
        shell_argv = template.argv((value,), seq=7, slot=1)
        got = _outputs(shell_argv, Path(directory))
        assert got == [os.fsencode(w) for w in _shell_words(value, 7)]
        assert list(Path(directory).iterdir()) == [program]


def test_cli_direct_exec_passes_hostile_values_literally(tmp_path: Path) -> None:
    program = _argv_printer(tmp_path)
    inputs = tmp_path / "inputs"
    hostile = [*HOSTILE, "a b  c", "ünïcödé", "x\ny", ""]
    inputs.write_bytes(b"\0".join(os.fsencode(v) for v in hostile) + b"\0")
    work = tmp_path / "work"
    work.mkdir()
    r = run("-k", "-j1", "-0", DIRECT.format(program=program), "::::", str(inputs), cwd=work)
    assert r.returncode == 0, r.stderr
    got = os.fsencode(r.stdout).split(b"\0")[:-1]
    expected = [os.fsencode(w) for i, v in enumerate(hostile, 1) for w in _shell_words(v, i)]
    assert got == expected
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "command, direct",
    [
        ("ls -l {}", True),
        ("ls {} > out", False),
        ("ls '{}'", False),
        ("ls $HOME {}", False),
        ("echo {}", False),  # a builtin: the shell's own echo
        ("true {}", False),  # a builtin (faster than exec'ing coreutils' true)
        ("A=1 ls {}", False),  # an assignment
        ("ls ~ {}", False),  # tilde expansion
        ("ls *.txt {}", False),  # a glob
        ("ls {a,b} {}", False),  # brace expansion (bash)
        ("no-such-program-here {}", False),  # the shell reports it
    ],
)
def test_which_commands_skip_the_shell(command: str, direct: bool) -> None:
    template = compile_template([command], groups=1)
    assert (template.direct_argv(("v",), seq=1, slot=1) is not None) == direct
