"""Slurm hostlist expressions (``gpu[01-04,07],login1``) -> the host names, in written order.

``expand`` is a pure parser of scontrol's grammar: comma-separated items at top level; an
item is text with any number of ``[ranges]`` (several brackets: their cartesian product);
ranges are ``N`` or ``N-M``, zero-padded to the low bound's width when it has leading zeros.
``expand_hostnames`` asks ``scontrol show hostnames`` where the binary exists (Slurm's own
answer, whatever its version accepts) and falls back to ``expand``.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess

MAX_HOSTS = 65536  # a 512-node run needs far fewer; the bound stops `n[0-999999999]`
SCONTROL_TIMEOUT_S = 10.0
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")


class HostlistError(ValueError):
    """A hostlist expression that is not one (the one-line reason)."""


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets; HostlistError on unbalanced brackets."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"nested '[' in hostlist {text!r}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unmatched ']' in hostlist {text!r}")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise HostlistError(f"unmatched '[' in hostlist {text!r}")
    items.append("".join(current))
    return items


def _numbers(ranges: str, expression: str) -> list[str]:
    """``01-03,7`` -> ``['01', '02', '03', '7']``."""
    out: list[str] = []
    for part in ranges.split(","):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise HostlistError(f"bad range {part!r} in hostlist {expression!r}")
        low_text, high_text = match.group(1), match.group(2) or match.group(1)
        low, high = int(low_text), int(high_text)
        if high < low:
            raise HostlistError(f"range {part!r} runs backwards in hostlist {expression!r}")
        if len(out) + high - low + 1 > MAX_HOSTS:
            raise HostlistError(f"hostlist {expression!r} names more than {MAX_HOSTS} hosts")
        width = len(low_text) if low_text.startswith("0") and len(low_text) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(low, high + 1))
    return out


def _item(item: str, expression: str) -> list[str]:
    """One top-level item: literal pieces and bracket ranges, multiplied out."""
    pieces = re.split(r"\[([^\]]*)\]", item)  # even indexes literal, odd indexes ranges
    choices = [[piece] if i % 2 == 0 else _numbers(piece, expression)
               for i, piece in enumerate(pieces)]  # fmt: skip
    return ["".join(combo) for combo in itertools.product(*choices)]


def expand(expression: str) -> tuple[str, ...]:
    """The host names of a hostlist expression, in the order written (not sorted, not unique)."""
    text = expression.strip()
    if not text:
        raise HostlistError("empty hostlist")
    hosts: list[str] = []
    for item in _split_top(text):
        if not item.strip():
            raise HostlistError(f"empty item in hostlist {expression!r}")
        if re.search(r"\s", item):
            raise HostlistError(f"space inside hostlist {expression!r}")
        hosts.extend(_item(item, expression))
        if len(hosts) > MAX_HOSTS:
            raise HostlistError(f"hostlist {expression!r} names more than {MAX_HOSTS} hosts")
    return tuple(hosts)


def expand_hostnames(expression: str) -> tuple[str, ...]:
    """``scontrol show hostnames EXPR`` where scontrol exists (and succeeds), else ``expand``."""
    scontrol = shutil.which("scontrol")
    if scontrol is not None:
        try:
            done = subprocess.run([scontrol, "show", "hostnames", expression],
                                  capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.split():
            return tuple(done.stdout.split())
    return expand(expression)
