"""Command templates for ``conveyor run``: replacement strings and shell quoting.

A template is compiled once from the COMMAND words and rendered once per job into the
string that ``/bin/sh -c`` runs.

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

With no replacement string in COMMAND, the job's arguments are appended, each quoted.
Any other ``{word}`` (no spaces or quotes inside, not preceded by ``$``) is an error, so a
typo never silently becomes literal text: write ``\\{word\\}`` or ``{ word }`` for literal
braces.

Quoting rules (exactly):

1. The COMMAND words are joined with single spaces and the result is shell code run by
   ``/bin/sh -c``: pipes, redirections, ``$VARS`` and globs in COMMAND work as written.
2. Every value substituted for a replacement string (and every appended argument) reaches
   the command literally, byte for byte, as part of exactly the word it appears in: it is
   quoted with :func:`shlex.quote`. Spaces, quotes, ``;``, ``$``, backquotes, ``*`` and
   newlines in an input are never interpreted, so a file named ``a b; rm -rf x`` is passed
   as that one argument and no ``rm`` ever runs.
3. The quoting follows the shell's quote context at the replacement string: unquoted it
   is ``shlex.quote(value)``; inside ``'...'`` or ``"..."`` the quote is closed, the
   quoted value inserted and the quote reopened, so ``"dir/{}.txt"`` and ``'{}'`` are as
   safe as a bare ``{}``. Quote context is tracked for ``'...'``, ``"..."``, backslash
   escapes and ``#`` comments; it is not tracked inside ``$(...)`` or backquotes, where a
   replacement string should be used unquoted. A value that needs no quoting (only
   letters, digits and ``@%+=:,./-_``) is inserted as is.
4. In a quoted context a multi-argument ``{}`` is one word: the arguments joined by
   spaces. Unquoted, each argument is its own word.
5. With ``-q/--quote`` every COMMAND word is itself quoted after substitution, so COMMAND
   runs as a plain argument vector with no shell syntax at all (like GNU parallel's -q):
   ``conveyor run -q perl -e 'print "@ARGV\\n"' {}``.
6. With no COMMAND at all, each input line is itself the shell command (unquoted).

Unterminated quotes in COMMAND are reported before anything runs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.cli.errors import CliError

__all__ = ["Template", "TemplateError", "compile_template", "transform"]


class TemplateError(CliError):
    """A malformed COMMAND template (unknown replacement string, bad position, ...)."""


# A real replacement string: {#} {%} or {[n][op]}.
_FIELD = re.compile(r"\{(?:([#%])|(-?[1-9][0-9]*)?(\.|//|/\.|/)?)\}")
# Something that looks like a replacement string: braces around one token.
_CANDIDATE = re.compile(r"\{[^\s{}'\"\\$`;|&<>()]*\}")
_WORD_BREAK = frozenset(" \t\n;&|()<>")


@dataclass(frozen=True)
class _Field:
    """One replacement string: ``op`` in '', '.', '/', '//', '/.', '#', '%'."""

    position: int | None  # 1-based, negative from the end, None = all arguments
    op: str
    context: str  # '' unquoted, "'" or '"': the shell quote context it sits in
    text: str  # as written, for messages


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
    """Apply a replacement-string operator (``''``, ``.``, ``/``, ``//``, ``/.``)."""
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


def _quote_in(context: str, text: str) -> str:
    """``text`` as shell code that yields it literally inside quote ``context``."""
    quoted = shlex.quote(text)
    if quoted == text or not context:
        return quoted
    # Close the quote, insert the single-quoted value, reopen: 'a{}b' -> 'a''v''b'.
    return f"{context}{quoted}{context}"


class Template:
    """A compiled COMMAND; :meth:`render` gives the shell command line for one job."""

    def __init__(
        self, words: list[list[str | _Field]], *, quote_words: bool, append: bool, raw_input: bool
    ) -> None:
        self._words = words
        self._quote_words = quote_words
        self._append = append
        self._raw_input = raw_input

    @property
    def has_fields(self) -> bool:
        """Whether COMMAND contains a replacement string (otherwise inputs are appended)."""
        return not self._append

    def render(self, args: Sequence[str], seq: int, slot: int) -> str:
        """The shell command for a job with arguments ``args``, number ``seq``, ``slot``."""
        if self._raw_input:
            return " ".join(args)
        rendered: list[str] = []
        for word in self._words:
            pieces = [p if isinstance(p, str) else self._value(p, args, seq, slot) for p in word]
            text = "".join(pieces)
            rendered.append(shlex.quote(text) if self._quote_words else text)
        if self._append:
            rendered.extend(shlex.quote(a) for a in args)
        return " ".join(rendered)

    def _value(self, field: _Field, args: Sequence[str], seq: int, slot: int) -> str:
        if field.op == "#":
            return str(seq)
        if field.op == "%":
            return str(slot)
        if field.position is None:
            values = [transform(field.op, a) for a in args]
        else:
            index = field.position - 1 if field.position > 0 else field.position
            values = [transform(field.op, args[index])]
        if self._quote_words:  # the whole word gets quoted afterwards
            return " ".join(values)
        if field.context or len(values) == 1:
            return _quote_in(field.context, " ".join(values))
        return " ".join(shlex.quote(v) for v in values)


def _parse_word(text: str, *, shell: bool) -> list[str | _Field]:
    """Split one COMMAND string into literal text and fields, tracking quote context.

    With ``shell=False`` (``-q``) the text is a literal word: no quote tracking.
    """
    parts: list[str | _Field] = []
    literal: list[str] = []
    context = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if shell and context != "'" and c == "\\":
            literal.append(text[i : i + 2])
            i += 2
            continue
        if shell and c in "'\"" and context in ("", c):
            context = "" if context else c
        elif shell and not context and c == "#" and (i == 0 or text[i - 1] in _WORD_BREAK):
            end = text.find("\n", i)
            end = n if end < 0 else end
            literal.append(text[i:end])
            i = end
            continue
        elif c == "{" and not (context != "'" and i > 0 and text[i - 1] == "$" and shell):
            m = _FIELD.match(text, i)
            if m:
                if literal:
                    parts.append("".join(literal))
                    literal = []
                special, pos, op = m.group(1), m.group(2), m.group(3)
                parts.append(
                    _Field(
                        position=int(pos) if pos else None,
                        op=special or op or "",
                        context=context,
                        text=m.group(0),
                    )
                )
                i = m.end()
                continue
            bad = _CANDIDATE.match(text, i)
            if bad:
                raise TemplateError(
                    f"unknown replacement string {bad.group(0)!r} in command; known: "
                    "{} {.} {/} {//} {/.} {#} {%} and {n} {n.} {n/} {n//} {n/.} "
                    "(for literal braces write \\{...\\} or put a space inside)"
                )
        literal.append(c)
        i += 1
    if shell and context:
        raise TemplateError(f"unterminated {context} quote in command: {text!r}")
    if literal:
        parts.append("".join(literal))
    return parts


def compile_template(words: Sequence[str], *, groups: int, quote: bool = False) -> Template:
    """Compile COMMAND ``words`` for jobs that take one argument from each of ``groups``.

    Raises :class:`TemplateError` for unknown replacement strings, positions beyond the
    number of input groups, and unterminated quotes.
    """
    if not words:
        return Template([], quote_words=False, append=False, raw_input=True)
    if quote:
        parsed = [_parse_word(w, shell=False) for w in words]
    else:
        parsed = [_parse_word(" ".join(words), shell=True)]
    fields = [p for word in parsed for p in word if isinstance(p, _Field)]
    for f in fields:
        if f.position is not None and not 1 <= abs(f.position) <= groups:
            have = "1 input group" if groups == 1 else f"{groups} input groups"
            raise TemplateError(
                f"replacement string {f.text!r} refers to input group {abs(f.position)}, "
                f"but there {'is' if groups == 1 else 'are'} only {have}"
            )
    return Template(parsed, quote_words=quote, append=not fields, raw_input=False)
