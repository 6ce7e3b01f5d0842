"""Command templates for ``conveyor run``: replacement strings, and how values reach the shell.

A template is compiled once from the COMMAND words into a fixed shell script; each job
runs that script with its values passed *out of band*, as arguments of the shell, never
spliced into the script's text.

Replacement strings (as GNU parallel defines them)::

    {}     the input; with several input groups, all of a job's arguments
    {.}    the input without its extension:       dir.x/file.txt -> dir.x/file
    {/}    the basename:                          dir/file.txt   -> file.txt
    {//}   the dirname (Perl's dirname):          dir/file.txt   -> dir,  file -> .
    {/.}   the basename without its extension:    dir/file.txt   -> file
    {#}    the job number, 1, 2, ... in input order
    {%}    the job slot, 1 .. --jobs (a slot is reused when its job ends)
    {n} {n.} {n/} {n//} {n/.}   the same for argument n (1-based, from the n-th input
           group; {-1} is the last group)

With no replacement string in COMMAND, the job's arguments are appended, one word each.
Any other ``{word}`` (no spaces or quotes inside, not preceded by ``$``) is an error, so a
typo never silently becomes literal text: write ``\\{word\\}`` or ``{ word }`` for literal
braces.

How values reach the command (the security rule): the COMMAND words, joined by spaces,
are shell code. Each replacement string becomes a reference to a shell variable, and
the job runs ``/bin/sh -c 'v1=$1 v2=$2; set --; SCRIPT' sh VALUE1 VALUE2``: a value is
an argument of ``sh``, so the shell never parses it as code, whatever it contains and
wherever the replacement string stands. The reference written depends on the shell
context at the replacement string, so that the value is exactly one literal word (or
part of the word it is in)::

    context                      {} becomes            e.g. (value 'a b')
    plain, $(...), `...`         "${v1}"               echo {}          -> a b
    "..." and here-document      ${v1}                 echo "x{}y"      -> xa by
    '...'                        '"${v1}"'             echo 'x{}y'      -> xa by
    ${x:-...}, ${x#...}          "${v1}"               the value as a literal pattern
    $((...))                     ${v1}, integers and operators only (see below)

Inside ``$((...))`` the shell evaluates the text, and bash evaluates names in it again
(``a[$(cmd)]`` runs ``cmd``), so there a value must be a number expression (digits,
spaces and ``+-*/%<>=!&|^~?:(),``); any other value fails its job with a message before
it runs. ``{}`` in a quoted here-document (``<<'EOF'``), where the shell expands
nothing, is rejected when the template is compiled. A ``{}`` in a ``#`` comment stays
literal text. What the shell is told to run as code -- ``eval {}``, ``sh -c {}`` --
runs the value as code, as it would with GNU parallel.

Where this differs from GNU parallel: GNU parallel splices each value, shell-quoted,
into the command text wherever it stands, so ``echo "{}"`` on ``a b`` prints ``'a b'``
(quotes included) and a value in backquotes is re-parsed; here it prints ``a b``.

``--dry-run`` and the job log show each command as equivalent shell text, the values
quoted for their context (:meth:`Template.display`).

With ``-q/--quote`` every COMMAND word is itself literal: COMMAND runs as a plain argument
vector with no shell syntax at all (like GNU parallel's -q). With no COMMAND at all, each
input line is itself the shell command (unquoted).

Unterminated quotes in COMMAND are reported before anything runs.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.cli.errors import CliError

__all__ = [
    "SHELL",
    "TagString",
    "Template",
    "TemplateError",
    "UnsafeValue",
    "compile_template",
    "name_columns",
    "transform",
]

SHELL = "/bin/sh"


class TemplateError(CliError):
    """A malformed COMMAND template (unknown replacement string, bad position, ...)."""


class UnsafeValue(CliError):
    """A job's value that cannot be substituted where its replacement string stands."""


# A real replacement string: {#} {%} or {[n][op]}.
_FIELD = re.compile(r"\{(?:([#%])|(-?[1-9][0-9]*)?(\.|//|/\.|/)?)\}")
# Something that looks like a replacement string: braces around one token.
_CANDIDATE = re.compile(r"\{[^\s{}'\"\\$`;|&<>()]*\}")
_WORD_BREAK = frozenset(" \t\n;&|()<>")
# What a value may be inside $((...)): a number expression without names.
_ARITH_VALUE = re.compile(r"[0-9 \t\n+\-*/%<>=!&|^~?:(),]*\Z")  # ASCII blanks only: \s is Unicode
_HEREDOC = re.compile(r"<<(-?)[ \t]*(\\?)(?:'([^']*)'|\"([^\"]*)\"|([^\s;&|<>()]+))")

# Shell contexts a replacement string can stand in.
PLAIN = "plain"  # unquoted: top level, $(...), `...`
DQUOTE = '"'
SQUOTE = "'"
DOLLAR_SQUOTE = "$'"
BRACE = "${"
ARITH = "$(("
HEREDOC = "<<"
HEREDOC_TABS = "<<-"  # a here-document whose lines' leading tabs are removed
WORD = "word"  # a -q word: literal text, no shell


@dataclass(frozen=True)
class _Field:
    """One replacement string: ``op`` in '', '.', '/', '//', '/.', '#', '%'."""

    position: int | None  # 1-based, negative from the end, None = all arguments
    op: str
    context: str  # one of the contexts above
    backquotes: int  # how many `...` levels it is inside (for display only)
    text: str  # as written, for messages
    delimiter: str = ""  # in a here-document: its end delimiter (for display only)


def _strip_ext(value: str) -> str:
    # GNU parallel: s:\.[^/.]*$::
    return re.sub(r"\.[^/.]*\Z", "", value)


def _basename(value: str) -> str:
    # GNU parallel: s:.*/::
    return value[value.rfind("/") + 1 :]


def _perl_dirname(value: str) -> str:
    """File::Basename::dirname on Unix, which GNU parallel uses for ``{//}``."""

    def fileparse(path: str) -> tuple[str, str]:
        i = path.rfind("/")
        return (path[: i + 1], path[i + 1 :]) if i >= 0 else ("./", path)

    def strip_sep(path: str) -> str:
        return re.sub(r"(.)/*\Z", r"\1", path, count=1, flags=re.S)

    dirname, base = fileparse(value)
    dirname = strip_sep(dirname)
    if not base:
        dirname, base = fileparse(dirname)
        dirname = strip_sep(dirname)
    return dirname


def transform(op: str, value: str) -> str:
    """Apply a replacement-string operator (``''``, ``.``, ``/``, ``//``, ``/.``).

    >>> transform("/.", "dir.x/file.tar.gz")
    'file.tar'
    """
    if op == "":
        return value
    if op == ".":
        return _strip_ext(value)
    if op == "/":
        return _basename(value)
    if op == "//":
        return _perl_dirname(value)
    if op == "/.":
        return _strip_ext(_basename(value))
    raise TemplateError(f"unknown operator {op!r}")


# ----------------------------------------------------------------------------------------
# Scanning COMMAND: where is each replacement string, in which shell context?


@dataclass
class _Frame:
    kind: str  # "top", "$(", "`", "\\`" (nested, escaped backquote), '"', "'", "$'",
    #            "${", "$((", "<<"
    depth: int = 0  # open parentheses (in "$(" and "$((") or braces (in "${")


_CONTEXT_OF = {
    "top": PLAIN,
    "$(": PLAIN,
    "`": PLAIN,
    "\\`": PLAIN,
    '"': DQUOTE,
    "'": SQUOTE,
    "$'": DOLLAR_SQUOTE,
    "${": BRACE,
    "$((": ARITH,
    "<<": HEREDOC,
}


@dataclass
class _Heredoc:
    delimiter: str
    quoted: bool
    strip_tabs: bool


@dataclass
class _Scanner:
    """Splits shell code into literal text and replacement strings, tracking the shell's
    quoting and substitution contexts (a stack of frames) well enough to choose how each
    replacement string refers to its value. A misjudged context can only make a value
    appear with extra quotes or split; it can never make the shell run it (the value is
    not in the script)."""

    text: str
    parts: list[str | _Field] = field(default_factory=list)
    literal: list[str] = field(default_factory=list)
    stack: list[_Frame] = field(default_factory=lambda: [_Frame("top")])
    heredocs: list[_Heredoc] = field(default_factory=list)  # announced, body not yet read
    unknown: list[str] = field(default_factory=list)  # {word}s that are no replacement string

    def scan(self) -> list[str | _Field]:
        text, n = self.text, len(self.text)
        i = 0
        while i < n:
            i = self._step(i)
        frame = self.stack[-1]
        if frame.kind in ('"', "'", "$'"):
            raise TemplateError(f"unterminated {frame.kind} quote in command: {text!r}")
        self._flush()
        return self.parts

    def _flush(self) -> None:
        if self.literal:
            self.parts.append("".join(self.literal))
            self.literal = []

    def _take(self, i: int, count: int) -> int:
        self.literal.append(self.text[i : i + count])
        return i + count

    def _push(self, kind: str, i: int, count: int) -> int:
        self.stack.append(_Frame(kind))
        return self._take(i, count)

    def _pop(self, i: int, count: int) -> int:
        if len(self.stack) > 1:
            self.stack.pop()
        return self._take(i, count)

    def _backquotes(self) -> int:
        return sum(1 for f in self.stack if f.kind in ("`", "\\`"))

    def _field(self, i: int) -> int | None:
        """A replacement string at ``i``: record it and return the index after it."""
        text = self.text
        m = _FIELD.match(text, i)
        if m:
            frame = self.stack[-1]
            context = _CONTEXT_OF[frame.kind]
            delimiter = self.heredocs[0].delimiter if context == HEREDOC else ""
            if context == HEREDOC and self.heredocs[0].strip_tabs:
                context = HEREDOC_TABS
            if frame.kind == "<<" and self.heredocs and self.heredocs[0].quoted:
                raise TemplateError(
                    f"replacement string {m.group(0)!r} is inside a quoted here-document "
                    f"(<<'{self.heredocs[0].delimiter}'), where the shell expands nothing, "
                    "so no value can be substituted there; use an unquoted delimiter"
                )
            self._flush()
            special, pos, op = m.group(1), m.group(2), m.group(3)
            self.parts.append(
                _Field(
                    position=int(pos) if pos else None,
                    op=special or op or "",
                    context=context,
                    backquotes=self._backquotes(),
                    text=m.group(0),
                    delimiter=delimiter,
                )
            )
            return m.end()
        bad = _CANDIDATE.match(text, i)
        if bad:  # left as text, as GNU parallel does; --dry-run notes it
            self.unknown.append(bad.group(0))
        return None

    def _dollar(self, i: int) -> int | None:
        """``$((``, ``$(``, ``${`` or ``$'`` at ``i``: open its frame."""
        text = self.text
        if text.startswith("$((", i):
            return self._push("$((", i, 3)
        if text.startswith("$(", i):
            return self._push("$(", i, 2)
        if text.startswith("${", i):
            return self._push("${", i, 2)
        return None

    def _step(self, i: int) -> int:
        text = self.text
        c = text[i]
        frame = self.stack[-1]
        kind = frame.kind
        if kind == "'":
            return self._pop(i, 1) if c == "'" else self._maybe_field(i, c)
        if kind == "$'":
            if c == "\\":
                return self._take(i, 2)
            return self._pop(i, 1) if c == "'" else self._maybe_field(i, c)
        if kind == "<<":
            return self._heredoc_step(i, c)
        if c == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt == "`" and kind in ("`", "\\`"):
                if kind == "\\`":
                    return self._pop(i, 2)
                return self._push("\\`", i, 2)
            return self._take(i, 2)
        if c == "$":
            opened = self._dollar(i)
            if opened is not None:
                return opened
            if kind != '"' and text.startswith("$'", i):
                return self._push("$'", i, 2)
            return self._take(i, 1)
        if c == "`":
            if kind == "`":
                return self._pop(i, 1)
            return self._push("`", i, 1)
        if kind == '"':
            return self._pop(i, 1) if c == '"' else self._maybe_field(i, c)
        if c == '"':
            return self._push('"', i, 1)
        if c == "'" and kind != "$((":
            return self._push("'", i, 1)
        if kind == "${":
            if c == "}":
                if frame.depth == 0:
                    return self._pop(i, 1)
                frame.depth -= 1
            elif c == "{" and _FIELD.match(text, i) is None:
                frame.depth += 1
            return self._maybe_field(i, c)
        if kind == "$((":
            if c == "(":
                frame.depth += 1
            elif c == ")":
                if frame.depth == 0:
                    return self._pop(i, 2 if text.startswith("))", i) else 1)
                frame.depth -= 1
            return self._maybe_field(i, c)
        # Code: top level, $(...), `...`.
        if c == "#" and (i == 0 or text[i - 1] in _WORD_BREAK):
            end = text.find("\n", i)
            return self._take(i, (len(text) if end < 0 else end) - i)
        if kind == "$(":
            if c == "(":
                frame.depth += 1
            elif c == ")":
                if frame.depth == 0:
                    return self._pop(i, 1)
                frame.depth -= 1
        if c == "<" and text.startswith("<<", i) and not text.startswith("<<<", i):
            m = _HEREDOC.match(text, i)
            if m:
                strip, backslash, single, double, bare = m.groups()
                word = single if single is not None else double if double is not None else bare
                quoted = bool(backslash) or single is not None or double is not None
                if bare is not None and re.search(r"[\\'\"]", bare):
                    quoted, word = True, re.sub(r"[\\'\"]", "", bare)
                self.heredocs.append(_Heredoc(word, quoted, bool(strip)))
                return self._take(i, m.end() - i)
        if c == "<" and text.startswith("<<<", i):
            return self._take(i, 3)
        if c == "\n" and self.heredocs and not any(f.kind == "<<" for f in self.stack):
            i = self._take(i, 1)
            self.stack.append(_Frame("<<"))
            return self._heredoc_line_start(i)
        return self._maybe_field(i, c)

    def _maybe_field(self, i: int, c: str) -> int:
        if c == "{":
            after = self._field(i)
            if after is not None:
                return after
        return self._take(i, 1)

    def _heredoc_line_start(self, i: int) -> int:
        """At the start of a line of a here-document's body: its end delimiter?"""
        while self.heredocs:
            doc = self.heredocs[0]
            end = self.text.find("\n", i)
            end = len(self.text) if end < 0 else end
            line = self.text[i:end]
            if (line.lstrip("\t") if doc.strip_tabs else line) != doc.delimiter:
                return i
            i = self._take(i, end + 1 - i)
            self.heredocs.pop(0)
        self.stack.pop()  # every body read: back to the code around
        return i

    def _heredoc_step(self, i: int, c: str) -> int:
        doc = self.heredocs[0]
        if c == "\n":
            return self._heredoc_line_start(self._take(i, 1))
        if doc.quoted:
            return self._maybe_field(i, c)
        if c == "\\":
            return self._take(i, 2)
        if c == "$":
            opened = self._dollar(i)
            if opened is not None:
                return opened
        if c == "`":
            return self._push("`", i, 1)
        return self._maybe_field(i, c)


# ----------------------------------------------------------------------------------------
# Rendering: the script run (values by reference) and the display text (values quoted).


def _var(index: int) -> str:
    return f"${{_cv{index}}}"


def _reference(context: str, indices: Sequence[int]) -> str:
    """Shell code that expands to the values of variables ``indices`` in ``context``."""
    names = [_var(i) for i in indices]
    if context in (PLAIN, WORD):  # -q: separate words too, as GNU parallel's -q
        return " ".join(f'"{n}"' for n in names)
    joined = " ".join(names)
    if context in (DQUOTE, HEREDOC, HEREDOC_TABS, ARITH):
        return joined
    if context == SQUOTE:
        return f"'\"{joined}\"'"
    if context == DOLLAR_SQUOTE:
        return f"'\"{joined}\"$'"
    return f'"{joined}"'  # BRACE


def _dq_escape(text: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", text)


def _literal_in_bash(text: str, empty: str) -> str:
    """Quoted ``text`` with each ``<(`` and ``>(`` cut by an ``empty`` pair of its quotes.

    bash (5.2), looking for the end of a ``${...}`` or of a backquoted command, takes them for
    a process substitution even inside quotes, and fails (``"${y#"<("}"``,
    ``"`printf %s "{}<("`"``, ``x=`printf %s '{}<('```); cut, they stay literal, in bash and
    dash alike.
    """
    return re.sub(r"([<>])\(", rf"\1{empty}(", text)


def _displayed(field: _Field, values: Sequence[str]) -> str:
    """``values`` as shell text that yields them literally where ``field`` stands."""
    context = field.context
    joined = " ".join(values)
    if context == PLAIN:
        text = " ".join(shlex.quote(v) for v in values)
    elif context == DQUOTE:
        text = _dq_escape(joined)
    elif context in (HEREDOC, HEREDOC_TABS):
        text = re.sub(r"([\\$`])", r"\\\1", joined)
        if context == HEREDOC_TABS:  # tabs written out, so that none is stripped
            text = text.replace("\t", "$(printf '\\t')")
        # No line of the value may end the here-document: a line that could be (part
        # of) its delimiter starts with an empty command substitution.
        text = "\n".join(
            "$(:)" + line if line.lstrip("\t") in field.delimiter else line
            for line in text.split("\n")
        )
    elif context == ARITH:
        text = joined
    elif context in (SQUOTE, DOLLAR_SQUOTE):
        quoted = shlex.quote(joined)
        reopen = "'" if context == SQUOTE else "$'"
        text = quoted if quoted == joined else f"'{quoted}{reopen}"
    else:  # BRACE
        text = f'"{_dq_escape(joined)}"'
    if context == BRACE or (field.backquotes and context in (PLAIN, DQUOTE, SQUOTE, DOLLAR_SQUOTE)):
        # Every <( and >( in the text is inside quotes here: double for these two, single
        # (shlex's) for the others.
        text = _literal_in_bash(text, '""' if context in (DQUOTE, BRACE) else "''")
    for _ in range(field.backquotes):  # each `...` level removes one level of backslashes
        text = re.sub(r"([\\$`])", r"\\\1", text)
    return text


# ----------------------------------------------------------------------------------------
# Skipping the shell: a COMMAND of plain words is exec'ed directly.

_SIMPLE_TEXT = re.compile(r"[A-Za-z0-9_\-./:,+@%= \t]*\Z")
# Shell builtins and keywords (POSIX sh, dash, bash, ksh, zsh): these run in the shell,
# even where a program of the same name exists -- echo, printf, test, kill, pwd differ
# in details, and for true and false the shell is faster: a builtin needs no exec,
# while coreutils' true loads libc and the locale (measured: ~0.74 ms against ~0.91 ms
# a job, spawned one after another).
_BUILTINS = frozenset(
    re.split(
        r"\s+",
        ". : [ [[ ]] ! { } alias autoload bg bind bindkey break builtin caller case cd "
        "command compgen complete compopt continue declare dirs disable disown do done "
        "echo elif else emulate enable esac eval exec exit export fc fg fi for function "
        "false getopts hash help history if in jobs kill let local logout mapfile popd print "
        "printf pushd pwd read readarray readonly return select set setopt shift shopt "
        "source suspend test then time times trap true type typeset ulimit umask unalias "
        "unset until wait whence where which while zmodload",
    )
)


def _simple_words(parts: list[str | _Field]) -> list[list[str | _Field]] | None:
    """COMMAND's parts as shell words, if it is nothing but plain words (no quotes,
    no expansions, no operators) with replacement strings unquoted; else None."""
    words: list[list[str | _Field]] = [[]]
    for p in parts:
        if isinstance(p, _Field):
            if p.context != PLAIN or p.backquotes:
                return None
            words[-1].append(p)
            continue
        if not _SIMPLE_TEXT.match(p):
            return None
        for i, piece in enumerate(re.split(r"[ \t]+", p)):
            if i:
                words.append([])
            if piece:
                words[-1].append(piece)
    return [w for w in words if w]


def _program(name: str) -> str | None:
    """The file the shell would exec for command ``name``, if it is an external
    program (not a builtin, not an exported bash function) that exists; else None."""
    if name in _BUILTINS or not name:
        return None
    if f"BASH_FUNC_{name}%%" in os.environ or f"BASH_FUNC_{name}()" in os.environ:
        return None
    if "/" in name:
        ok = os.path.isfile(name) and os.access(name, os.X_OK)
        return name if ok else None
    import shutil

    return shutil.which(name)


class Template:
    """A compiled COMMAND: :meth:`argv` gives what a job executes, :meth:`display` the
    equivalent command line as text.

    >>> t = compile_template(["echo", "{}"], groups=1)
    >>> t.display(("a b",), seq=1, slot=1)
    "echo 'a b'"
    >>> t.argv(("a b",), seq=1, slot=1)[-1]
    'a b'
    """

    def __init__(
        self,
        words: list[list[str | _Field]],
        *,
        quote_words: bool,
        append: bool,
        raw_input: bool,
        shell: str = SHELL,
        unknown: Sequence[str] = (),
    ) -> None:
        self._words = words
        self._quote_words = quote_words
        self._append = append
        self._raw_input = raw_input
        self.shell = shell
        #: ``{word}``s in COMMAND that are no replacement string, left as text.
        self.unknown = list(unknown)
        #: The program a job execs directly, without the shell, or None (always the shell).
        self.executable: str | None = None
        self._direct_words: list[list[str | _Field]] | None = None
        self._plan_direct()
        self._arith_keys = {(f.position, f.op) for f in self.fields if f.context == ARITH}
        # The script for jobs of n arguments (n varies with --colsep and -n).
        self._layouts: dict[int, tuple[dict[tuple[int | None, str], list[int]], str]] = {}

    def _layout(self, n: int) -> tuple[dict[tuple[int | None, str], list[int]], str]:
        """For jobs of ``n`` arguments: the variables of each (position, op) -- one per
        argument for ``{}``, numbered from 1 -- and the script."""
        layout = self._layouts.get(n)
        if layout is None:
            variables: dict[tuple[int | None, str], list[int]] = {}
            count = 0
            for f in self.fields:
                key = (f.position, f.op)
                if key not in variables:
                    width = n if f.position is None and f.op not in ("#", "%") else 1
                    variables[key] = list(range(count + 1, count + 1 + width))
                    count += width
            if self._append:
                count = n
            layout = self._layouts[n] = (variables, self._build_script(variables, count))
        return layout

    @property
    def fields(self) -> list[_Field]:
        """The replacement strings, in order."""
        return [p for word in self._words for p in word if isinstance(p, _Field)]

    def _build_script(self, variables: dict[tuple[int | None, str], list[int]], count: int) -> str:
        body: list[str] = []
        for word in self._words:
            pieces: list[str] = []
            for p in word:
                if isinstance(p, _Field):
                    pieces.append(_reference(p.context, variables[(p.position, p.op)]))
                else:
                    pieces.append(shlex.quote(p) if self._quote_words else p)
            body.append("".join(pieces))
        if self._append:
            body.extend(f'"{_var(i)}"' for i in range(1, count + 1))
        # $1 and $2 are the job's number and slot, exported as GNU parallel's
        # $PARALLEL_SEQ and $PARALLEL_JOBSLOT (cheaper than a new environment per job).
        prologue = " ".join(
            ["PARALLEL_SEQ=${1} PARALLEL_JOBSLOT=${2}"]
            + [f"_cv{i}=${{{i + 2}}}" for i in range(1, count + 1)]
        )
        prologue += "; export PARALLEL_SEQ PARALLEL_JOBSLOT"
        # A newline, not ';', before the body: a body that starts with a comment or a
        # here-document still parses as written.
        return f"{prologue}; set --\n" + " ".join(body)

    def _values(
        self, key: tuple[int | None, str], args: Sequence[str], seq: int, slot: int
    ) -> list[str]:
        position, op = key
        if op == "#":
            return [str(seq)]
        if op == "%":
            return [str(slot)]
        if position is None:
            return [transform(op, a) for a in args]
        if not -len(args) <= position <= len(args):  # --colsep, -n: fewer than asked for
            return [""]
        index = position - 1 if position > 0 else position
        return [transform(op, args[index])]

    def values(self, args: Sequence[str], seq: int, slot: int) -> list[str]:
        """The values passed to the script for one job, in variable order.

        Raises :class:`UnsafeValue` for a value that cannot stand where its
        replacement string is (inside ``$((...))``: only number expressions).
        """
        if self._raw_input:
            return []
        if self._append:
            return list(args)
        out: list[str] = []
        for key in self._layout(len(args))[0]:
            values = self._values(key, args, seq, slot)
            if key in self._arith_keys:
                for v in values:
                    if not _ARITH_VALUE.match(v):
                        raise UnsafeValue(
                            f"input {v!r} cannot be used inside $((...)): there only numbers "
                            "and operators may be substituted (the shell would evaluate "
                            "names in it, which can run code)"
                        )
            out.extend(values)
        return out

    def argv(self, args: Sequence[str], seq: int, slot: int) -> list[str]:
        """What one job executes: ``[SHELL, -c, SCRIPT, sh, value, ...]``."""
        if self._raw_input:
            return [self.shell, "-c", " ".join(args)]
        script = self._layout(len(args))[1]
        return [self.shell, "-c", script, "sh", str(seq), str(slot), *self.values(args, seq, slot)]

    @property
    def exports_seq(self) -> bool:
        """Whether :meth:`argv`'s script sets $PARALLEL_SEQ and $PARALLEL_JOBSLOT itself
        (else the job's environment must carry them)."""
        return not self._raw_input

    def _plan_direct(self) -> None:
        """Decide once whether jobs can skip the shell (see :meth:`direct_argv`)."""
        if self._raw_input:
            return
        words: list[list[str | _Field]] | None = self._words  # -q: literal words
        if not self._quote_words:
            words = _simple_words(self._words[0])
        if words is None:
            return
        if not words or not all(isinstance(p, str) for p in words[0]):
            return
        program = "".join(p for p in words[0] if isinstance(p, str))
        if not self._quote_words and "=" in program:
            return  # an assignment
        self.executable = _program(program)
        if self.executable is not None:
            self._direct_words = words

    def direct_argv(self, args: Sequence[str], seq: int, slot: int) -> list[str] | None:
        """The argument vector the shell would build and exec for this job, when
        COMMAND has no shell syntax -- only plain words of letters, digits and
        ``_-./:,+@%=``, replacement strings not inside quotes -- and its program is
        no shell builtin or keyword, no exported bash function, and found in PATH.
        Else None: the job runs under
        the shell. Word splitting is the shell's: ``x{}y`` on two values gives two
        words, ``xa`` and ``by``.

        >>> t = compile_template(["ls -l x{}y"], groups=None)
        >>> t.direct_argv(("a", "b c"), seq=1, slot=1)
        ['ls', '-l', 'xa', 'b cy']
        >>> compile_template(["ls {} | wc"], groups=1).direct_argv(("a",), 1, 1) is None
        True
        """
        words = self._direct_words
        if words is None:
            return None
        argv: list[str] = []
        for word in words:
            current = [""]
            for p in word:
                if isinstance(p, str):
                    current[-1] += p
                    continue
                values = self._values((p.position, p.op), args, seq, slot)
                if not values:
                    return None  # the word (or its part) vanishes: leave it to the shell
                current[-1] += values[0]
                current.extend(values[1:])
            argv.extend(current)
        if self._append:
            argv.extend(args)
        return argv

    def display(self, args: Sequence[str], seq: int, slot: int) -> str:
        """The job's command as shell text with the values quoted for their context --
        what ``--dry-run`` prints and the job log records. It is equivalent to what
        runs, with two exceptions: under bash, a value with a line equal to a
        here-document's delimiter, inside ``$(...)`` in that here-document's body; under
        dash (0.5.12), a line of a value in a here-document's body that starts with part of
        the delimiter and then a non-ASCII character, whose first byte dash drops (a bug in
        its matching of the delimiter: ``E`` then U+0080 against ``EOF``). The job itself is
        right in both cases: its values are arguments of the shell, not text of its script."""
        if self._raw_input:
            return " ".join(args)
        rendered: list[str] = []
        for word in self._words:
            pieces: list[str] = []
            for p in word:
                if isinstance(p, str):
                    pieces.append(shlex.quote(p) if self._quote_words else p)
                    continue
                values = self._values((p.position, p.op), args, seq, slot)
                if self._quote_words:
                    pieces.append(" ".join(shlex.quote(v) for v in values))
                else:
                    pieces.append(_displayed(p, values))
            rendered.append("".join(pieces))
        if self._append:
            rendered.extend(shlex.quote(a) for a in args)
        return " ".join(rendered)


def _parse_word(text: str, *, shell: bool, unknown: list[str] | None = None) -> list[str | _Field]:
    """Split one COMMAND string into literal text and fields.

    With ``shell=False`` (``-q``) the text is a literal word: no context tracking.
    Unknown ``{word}`` stay text (as in GNU parallel); they are added to ``unknown``.
    """
    if shell:
        scanner = _Scanner(text)
        parts_ = scanner.scan()
        if unknown is not None:
            unknown.extend(scanner.unknown)
        return parts_
    parts: list[str | _Field] = []
    last = 0
    for m in re.finditer(r"\{[^{}]*\}", text):
        fm = _FIELD.fullmatch(m.group(0))
        if fm is None:
            if unknown is not None and _CANDIDATE.fullmatch(m.group(0)):
                unknown.append(m.group(0))
            continue
        if m.start() > last:
            parts.append(text[last : m.start()])
        special, pos, op = fm.groups()
        parts.append(_Field(int(pos) if pos else None, special or op or "", WORD, 0, m.group(0)))
        last = m.end()
    if last < len(text):
        parts.append(text[last:])
    return parts


class TagString:
    """``--tagstring STR``: STR with its replacement strings replaced by the values as
    they are (no quoting: it is output, not shell code).

    >>> TagString("{#}:{.}").render(("a.txt",), seq=3, slot=1)
    '3:a'
    """

    def __init__(self, text: str) -> None:
        self._parts = _parse_word(text, shell=False)
        self._template = Template([self._parts], quote_words=True, append=False, raw_input=False)

    def render(self, args: Sequence[str], seq: int, slot: int) -> str:
        """The tag for one job."""
        return "".join(
            p
            if isinstance(p, str)
            else " ".join(self._template._values((p.position, p.op), args, seq, slot))
            for p in self._parts
        )


def name_columns(words: Sequence[str], names: Sequence[str]) -> list[str]:
    """``--header``: write ``{name}`` (and ``{name.}`` ``{name/}`` ...) in COMMAND as
    the position of the column so named (the first of equal names).

    >>> name_columns(["echo {b}-{a.}"], ["a", "b"])
    ['echo {2}-{1.}']
    """
    positions: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        positions.setdefault(name, i)
    if not positions:
        return list(words)
    alternatives = "|".join(re.escape(n) for n in sorted(positions, key=len, reverse=True))
    field = re.compile(r"\{(" + alternatives + r")(\.|//|/\.|/)?\}")
    return [field.sub(lambda m: f"{{{positions[m.group(1)]}{m.group(2) or ''}}}", w) for w in words]


def compile_template(
    words: Sequence[str], *, groups: int | None, quote: bool = False, shell: str = SHELL
) -> Template:
    """Compile COMMAND ``words`` for jobs that take one argument from each of ``groups``
    (None: a number known only per job, as with --colsep; a missing argument is empty).

    Raises :class:`TemplateError` for unknown replacement strings, positions beyond the
    number of input groups, and unterminated quotes.

    >>> compile_template(["echo", '"x{}y"'], groups=1).display(("a b",), 1, 1)
    'echo "xa by"'
    """
    if not words:
        return Template([], quote_words=False, append=False, raw_input=True, shell=shell)
    unknown: list[str] = []
    if quote:
        parsed = [_parse_word(w, shell=False, unknown=unknown) for w in words]
    else:
        parsed = [_parse_word(" ".join(words), shell=True, unknown=unknown)]
    fields = [p for word in parsed for p in word if isinstance(p, _Field)]
    for f in fields:
        if groups is not None and f.position is not None and not 1 <= abs(f.position) <= groups:
            have = "1 input group" if groups == 1 else f"{groups} input groups"
            raise TemplateError(
                f"replacement string {f.text!r} refers to input group {abs(f.position)}, "
                f"but there {'is' if groups == 1 else 'are'} only {have}"
            )
    return Template(
        parsed,
        quote_words=quote,
        append=not fields,
        raw_input=False,
        shell=shell,
        unknown=unknown,
    )
