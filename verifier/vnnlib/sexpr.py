"""Streaming S-expression reader for VNN-LIB files, without recursion.

Why streaming and iterative: property files come from third parties. A file of 10^6 asserts must
cost time linear in its size and memory for one command at a time, and 100,000 nested parentheses
must be an ordinary input, not a RecursionError or a C stack overflow.

An expression is `(text, line)` for an atom or `(items, line)` for a list (items a Python list).
2.0 tensor elements such as `X[0,3]` or `X [0, 3]` are read as one atom with the brackets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from verifier.errors import InputError
from verifier.vnnlib.deadline import Deadline

TOKEN = re.compile(r'"[^"]*"|;|\(|\)|[^\s()";\[\]]+(?:\s*\[[^\]()]*\])?|\[[^\]()]*\]')
CHECK_EVERY_LINES = 2048


def error(source: str, line: int, message: str) -> InputError:
    return InputError(f"{source}:{line}: {message}")


def expressions(lines: Iterable[str], source: str, deadline: Deadline,
                top_level_line: Callable[[str, int], bool] | None = None) -> Iterator[tuple]:
    """Yield each top-level expression as soon as it is complete.

    `top_level_line(text, number)` is offered every line that starts outside any expression; when
    it returns True the line is taken as handled (the fast path for one-line bound asserts)."""
    stack: list[tuple[list, int]] = []
    number = 0
    for number, text in enumerate(lines, 1):
        if number % CHECK_EVERY_LINES == 0:
            deadline.check()
        if not stack and top_level_line is not None and top_level_line(text, number):
            continue
        position = 0
        for match in TOKEN.finditer(text):
            _no_stray(text, position, match.start(), source, number)
            position = match.end()
            token = match.group()
            if token == ";":
                break  # comment to the end of the line
            if token == "(":
                stack.append(([], number))
            elif token == ")":
                if not stack:
                    raise error(source, number, "unexpected ')'")
                items, line = stack.pop()
                if stack:
                    stack[-1][0].append((items, line))
                else:
                    yield items, line
            elif stack:
                stack[-1][0].append((token, number))
            else:
                raise error(source, number, f"{token!r} outside any command")
        else:
            _no_stray(text, position, len(text), source, number)
    if stack:
        raise error(source, stack[-1][1], "unbalanced parentheses: '(' never closed")


def _no_stray(text: str, start: int, end: int, source: str, line: int) -> None:
    """Characters no token takes (a lone quote or bracket) are an error, not skipped: skipping
    them would give a malformed file a meaning its author never wrote."""
    if start < end and not text[start:end].isspace():
        raise error(source, line, f"unexpected {text[start:end].strip()[:20]!r} (an unclosed quote or bracket?)")


def fold(root: tuple, children: Callable[[tuple], list], combine: Callable[[tuple, list], object],
         deadline: Deadline | None = None) -> object:
    """Post-order fold of a tree without recursion: combine(node, folded children) for every node."""
    results: list = []
    stack: list = [(root, None)]
    steps = 0
    while stack:
        node, count = stack.pop()
        if count is None:
            kids = children(node)
            stack.append((node, len(kids)))
            stack.extend((kid, None) for kid in reversed(kids))
        else:
            args = results[len(results) - count:] if count else []
            if count:
                del results[len(results) - count:]
            results.append(combine(node, args))
        steps += 1
        if deadline is not None and steps % 65536 == 0:
            deadline.check()
    return results[0]
