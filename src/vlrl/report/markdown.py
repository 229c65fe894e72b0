"""Markdown that cannot be broken by what a model writes.

Every cell that comes from data (pids, gold answers, completions, metadata values) is shown as a code
span: Markdown and HTML inside it render literally, so ``<REASONING>`` stays readable (not
entity-escaped, not swallowed as an HTML tag) and ``![](http://...)`` in a completion is text, not a
remote image. Inside a table a ``|`` would still end the cell, even in a code span (GitHub Flavored
Markdown, "Tables"), so it is escaped; newlines cannot live in a table row, so whitespace runs are
collapsed.

Pure module: the standard library only.
"""

from __future__ import annotations

import re

_BACKTICKS = re.compile(r"`+")


def code_span(text: str) -> str:
    """``text`` as one inline code span, whatever backticks it holds (CommonMark "Code spans").

    >>> code_span("<SOLUTION>7</SOLUTION>")
    '`<SOLUTION>7</SOLUTION>`'
    >>> code_span("a `b` c")
    '``a `b` c``'
    >>> code_span("`x")
    '`` `x ``'
    """
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") or not text.strip() else text
    return f"{fence}{padded}{fence}"


def one_line(text: object, limit: int | None = None) -> str:
    """Whitespace runs (newlines included) collapsed to one space; cut to ``limit`` characters with ``…``.

    >>> one_line("a\\n\\n  b", 80), one_line("abcdef", 4)
    ('a b', 'abc…')
    """
    flat = " ".join(str(text).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat


def cell(text: object, limit: int | None = None) -> str:
    """A table cell showing data verbatim: one line, a code span, ``|`` escaped.

    >>> cell("<SOLUTION>1|2</SOLUTION>\\n![x](http://e.x/i.png)")
    '`<SOLUTION>1\\\\|2</SOLUTION> ![x](http://e.x/i.png)`'
    """
    return code_span(one_line(text, limit)).replace("|", "\\|")


def fenced(text: str, info: str = "text") -> str:
    """A fenced code block holding ``text`` verbatim (the fence is longer than any backtick run in it).

    >>> print(fenced("x ``` y"))
    ````text
    x ``` y
    ````
    """
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"
