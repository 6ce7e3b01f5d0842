"""``conveyor run``: replacement strings, appending, and shell quoting (real CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import run

# Expected values are GNU parallel 20221122's output for the same inputs.
GNU_TABLE = [
    # input          {.}          {/}         {//}    {/.}
    ("a.tar.gz", "a.tar", "a.tar.gz", ".", "a.tar"),
    (".bashrc", "", ".bashrc", ".", ""),
    ("a/.bashrc", "a/", ".bashrc", "a", ""),
    ("dir.x/file", "dir.x/file", "file", "dir.x", "file"),
    ("dir.x/file.txt", "dir.x/file", "file.txt", "dir.x", "file"),
    ("/", "/", "", "/", ""),
    ("a/b/", "a/b/", "", "a", ""),
    ("c", "c", "c", ".", "c"),
    ("/c", "/c", "c", "/", "c"),
    ("file.", "file", "file.", ".", "file"),
    ("./a", "./a", "a", ".", "a"),
    ("a/b.c/", "a/b.c/", "", "a", ""),
]


def test_replacement_strings_match_gnu_parallel() -> None:
    inputs = [row[0] for row in GNU_TABLE]
    r = run("-k", "echo {}:{.}:{/}:{//}:{/.}", ":::", *inputs)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [":".join(row) for row in GNU_TABLE]


def test_positional_and_product() -> None:
    r = run("-k", "echo {1}-{2} {2.} {-1/} {1//}", ":::", "a", "d/b", ":::", "x/1.c", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "a-x/1.c x/1 1.c .",
        "a-2 2 2 .",
        "d/b-x/1.c x/1 1.c d",
        "d/b-2 2 2 d",
    ]


def test_job_number_and_slot() -> None:
    r = run("-k", "-j", "3", "echo {#} {%}", ":::", *"abcdefg")
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert [int(n) for n, _ in lines] == list(range(1, 8))
    assert {int(s) for _, s in lines} <= {1, 2, 3}


def test_input_appended_without_replacement_string() -> None:
    r = run("-k", "printf", "'[%s]'", ":::", "a b", "c", ":::", "d")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[a b][d][c][d]"


def test_all_arguments_for_braces_with_several_groups() -> None:
    r = run("-k", "printf '<%s>' {}; echo", ":::", "a b", ":::", "c")
    assert r.stdout == "<a b><c>\n"


NASTY = [
    "a b; rm -rf x",
    "it's",
    'say "hi"',
    "$(touch pwned)",
    "`touch pwned`",
    "*",
    "tab\there",
    "back\\slash",
    "-n",
    "",
    "semi;colon|pipe&amp>",
    "~",
    "{}",
    "#hash",
    "ünïcödé",
    "$HOME",
]


@pytest.mark.parametrize(
    "form", ["{}", '"{}"', "'{}'", "pre{}post", '"pre {} post"', "'pre {} post'"]
)
def test_inputs_reach_the_command_literally(tmp_path: Path, form: str) -> None:
    (tmp_path / "x").mkdir()
    r = run("-k", f"printf '%s\\n' {form}", ":::", *NASTY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    expected = [form.strip("'\"").replace("{}", value) for value in NASTY]
    assert r.stdout.split("\n")[:-1] == expected
    assert (tmp_path / "x").is_dir()  # rm never ran
    assert not (tmp_path / "pwned").exists()


def test_file_named_like_an_injection_never_runs_rm(tmp_path: Path) -> None:
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    name = "a b; rm -rf x"
    (tmp_path / name).write_text("content\n")
    for command in ("cat {}", "cat", "cat {/}", 'cat "{}"', "cat '{}'", "cat {.}"):
        r = run(command, ":::", name, cwd=tmp_path)
        assert r.returncode == 0, (command, r.stderr)
        assert r.stdout == "content\n"
    r = run("cat", cwd=tmp_path, input=name + "\n")  # the same name from stdin
    assert r.stdout == "content\n"
    r = run("-q", "cat", "{}", cwd=tmp_path, input=name + "\n")
    assert r.stdout == "content\n"
    assert (victim / "keep").read_text() == "precious"


def test_quote_option_makes_command_words_literal(tmp_path: Path) -> None:
    r = run("-q", "printf", "%s|\n", "a;b", "x{}y", "$HOME", ":::", "1 2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a;b|\nx1 2y|\n$HOME|\n"
    # without -q the same words are shell code
    r = run("printf", "'%s|\\n'", "a\\;b", ":::", "1")
    assert r.stdout == "a;b|\n1|\n"


def test_no_command_runs_inputs_as_commands() -> None:
    r = run("-k", ":::", "echo one", "echo two | tr a-z A-Z")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "one\nTWO\n"


def test_shell_syntax_in_command_and_dollar_braces(tmp_path: Path) -> None:
    r = run(
        "-k",
        "echo {} | tr a-z A-Z > {}.out; X=v; echo ${X}{#} >> {}.out",
        ":::",
        "a",
        "b",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.out").read_text() == "A\nv1\n"
    assert (tmp_path / "b.out").read_text() == "B\nv2\n"


def test_literal_braces_with_space_or_backslash() -> None:
    r = run("-k", "echo {} | awk '{ print $1 \"!\" }'; echo \\{x\\}", ":::", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi!\n{x}\n"


def test_unknown_braces_stay_text_as_in_gnu_parallel() -> None:
    # awk and sed one-liners, bash brace expansion: GNU parallel leaves {word} alone.
    r = run("-k", "echo {} | awk '{print $1}'; echo {a,b} {0} {foo}", ":::", "x y")
    assert (r.returncode, r.stdout) == (0, "x\n{a,b} {0} {foo}\n"), r.stderr
    r = run("--shell", "bash", "-k", "echo {a,b}", ":::", "x")
    assert (r.returncode, r.stdout) == (0, "a b x\n"), r.stderr


def test_dry_run_notes_unknown_braces() -> None:
    r = run("--dry-run", "echo {fo} {}", ":::", "a")
    assert (r.returncode, r.stdout) == (0, "echo {fo} a\n")
    assert "{fo} in COMMAND is no replacement string" in r.stderr
    assert "note" not in run("--dry-run", "echo {}", ":::", "a").stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["echo {3}", ":::", "a", ":::", "b"], "refers to input group 3, but there are only 2"),
        (["echo {2}"], "refers to input group 2, but there is only 1 input group"),
        (["echo 'oops {}", ":::", "a"], "unterminated ' quote"),
    ],
)
def test_malformed_templates_are_clear_errors(args: list[str], message: str) -> None:
    r = run(*args, input="x\n")
    assert r.returncode == 255
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
