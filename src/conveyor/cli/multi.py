"""``-X`` and ``-m``: as many inputs per job as the command line can take.

Each job gets a batch of inputs (all of the input groups' values of its combinations,
in order). With ``-m``, ``{}`` stands for all of them, as separate words (``x{}y`` on
``a b`` -> ``xa by``); with ``-X`` (context replace) every word holding ``{}`` is
repeated once per input (``x{}y`` -> ``xay xby``). With no ``{}`` the inputs are
appended. This is GNU parallel's meaning of both; ``{n}`` cannot be used (a job has
no fixed number of arguments).

How many fit: the command line the job would execute must stay within ``ARG_MAX``
(arguments + environment) and, for the shell's script, one argument's limit
(``MAX_ARG_STRLEN``, 128 KiB on Linux); a batch is filled while a conservative
estimate of its size fits. As GNU parallel does, the inputs are spread evenly over the
job slots: with ``-j N``, no batch has more than ``ceil(inputs / N)`` (``conveyor run``
reads all inputs, also stdin, before the first job, to know their number).

>>> t = MultiTemplate(["echo x{}y"], mode="X")
>>> t.display(("a", "b c"), seq=1, slot=1)
"echo xay x'b c'y"
>>> MultiTemplate(["echo x{}y"], mode="m").display(("a", "b"), seq=1, slot=1)
'echo xa by'
>>> [len(b) for b in batches(iter("abcdefghij"), t, per_job=3)]
[3, 3, 3, 1]
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence

from conveyor.cli.limits import _environment_size, arg_max, max_arg_strlen
from conveyor.cli.templates import SHELL, Template, compile_template

__all__ = ["MultiTemplate", "batches", "per_job_limit"]

_ALL = re.compile(r"\{(\.|//|/\.|/)?\}")  # {} and its operators, no position
_TOKEN = re.compile(r"""(?:[^\s'"\\]|\\.|'[^']*'|"(?:[^"\\]|\\.)*")+""", re.S)
_SLACK = 4096  # bytes kept free of the estimate's budget


class MultiTemplate:
    """A COMMAND for -X/-m: the :class:`Template` for each batch size, compiled on
    first use, with Template's interface (``argv``, ``direct_argv``, ``display``)."""

    def __init__(
        self, words: Sequence[str], *, mode: str, quote: bool = False, shell: str = SHELL
    ) -> None:
        self._words = list(words)
        self._mode = mode
        self._quote = quote
        self._shell = shell
        self._sizes: dict[int, Template] = {}
        base = compile_template(self._words, groups=None, quote=quote, shell=shell)
        self.unknown = base.unknown
        self.executable = base.executable
        self.shell = shell
        self.exports_seq = True
        self._base = base

    def for_size(self, n: int) -> Template:
        """The template of a job of ``n`` inputs."""
        if self._mode == "m" or n == 0:
            return self._base
        template = self._sizes.get(n)
        if template is None:
            if self._quote:
                words = [piece for w in self._words for piece in _repeat(w, n)]
            else:
                words = [_repeat_tokens(" ".join(self._words), n)]
            template = compile_template(words, groups=None, quote=self._quote, shell=self._shell)
            self._sizes[n] = template
        return template

    def argv(self, args: Sequence[str], seq: int, slot: int) -> list[str]:
        """What the job executes under the shell."""
        return self.for_size(len(args)).argv(args, seq, slot)

    def direct_argv(self, args: Sequence[str], seq: int, slot: int) -> list[str] | None:
        """The program's own argv, when the shell is not needed (else None)."""
        return self.for_size(len(args)).direct_argv(args, seq, slot)

    def display(self, args: Sequence[str], seq: int, slot: int) -> str:
        """The job's command as shell text."""
        return self.for_size(len(args)).display(args, seq, slot)


def _repeat(word: str, n: int) -> list[str]:
    """A -q word holding {}: one copy per input, {} numbered; else the word."""
    if not _ALL.search(word):
        return [word]
    return [_numbered(word, i) for i in range(1, n + 1)]


def _numbered(word: str, i: int) -> str:
    """``word`` with each {} (and {.} ...) made to refer to input ``i``."""
    return _ALL.sub(lambda m: f"{{{i}{m.group(1) or ''}}}", word)


def _repeat_tokens(text: str, n: int) -> str:
    """Shell text with each word that holds {} repeated once per input, {} numbered."""
    return _TOKEN.sub(lambda m: " ".join(_repeat(m.group(0), n)), text)


def per_job_limit(total_inputs: int | None, jobs: int) -> int | None:
    """GNU parallel's even spread: at most ceil(inputs / -j) inputs a job (None: the
    number of inputs is not known in advance).

    >>> per_job_limit(10, 4), per_job_limit(None, 4)
    (3, None)
    """
    if total_inputs is None:
        return None
    return max(1, math.ceil(total_inputs / max(1, jobs)))


def _size(argv: Sequence[str]) -> int:
    return sum(len(os.fsencode(a)) + 9 for a in argv)


def batches(
    inputs: Iterator[str], template: MultiTemplate, per_job: int | None = None
) -> Iterator[tuple[str, ...]]:
    """Group ``inputs`` into batches whose command lines fit the system's limits (and
    hold at most ``per_job`` inputs)."""
    # Cost of one more input, measured on empty inputs (the command's own words and the
    # script's growth), plus the input itself once per place it is used.
    one = template.argv(("",), 1, 1)
    two = template.argv(("", ""), 1, 1)
    uses = max(1, len(two) - len(one))  # values passed per input (one per {} variant)
    growth = max(0, _size(two) - _size(one))
    script_growth = max(0, len(two[2]) - len(one[2])) if len(one) > 2 else 0
    # The script names input i by its number, in several places: longer for larger i.
    places = len(re.findall(r"(?<![0-9])2(?![0-9])", two[2])) if len(two) > 2 else 0
    budget = arg_max() - _environment_size() - _size(one) - _SLACK
    per_arg = max_arg_strlen()
    script_budget = (per_arg - len(one[2]) - _SLACK) if per_arg and len(one) > 2 else None
    if template.executable is not None:  # direct exec: no script, the words are the argv
        script_budget = None
    batch: list[str] = []
    used = script_used = 0
    for value in inputs:
        digits = places * (len(str(len(batch) + 1)) - 1)
        cost = growth + digits + uses * len(os.fsencode(value))
        if batch and (
            used + cost > budget
            or (script_budget is not None and script_used + script_growth + digits > script_budget)
            or (per_job is not None and len(batch) >= per_job)
        ):
            yield tuple(batch)
            batch, used, script_used = [], 0, 0
        batch.append(value)
        used += cost
        script_used += script_growth + digits
    if batch:
        yield tuple(batch)


def flatten(jobs: Iterable[Sequence[str]]) -> Iterator[str]:
    """The values of every job (combination), in order."""
    for args in jobs:
        yield from args
