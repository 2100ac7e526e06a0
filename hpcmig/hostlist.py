"""Slurm hostlist expressions: `node[1-3,7],gpu[01-02]` <-> a list of names.

Pure functions, same results as `scontrol show hostnames` / `scontrol show hostlist` for the
forms Slurm prints (one bracket group per name, ranges with zero padding).
"""

from __future__ import annotations

import re

from hpcmig.errors import UsageError

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _split_top(expr: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UsageError(f"bad hostlist '{expr}': unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise UsageError(f"bad hostlist '{expr}': unbalanced '['")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand(expr: str) -> list[str]:
    """`node[1-3]` -> ['node1', 'node2', 'node3']; '' or '(null)' -> []."""
    expr = expr.strip()
    if not expr or expr in ("(null)", "None"):
        return []
    names: list[str] = []
    for part in _split_top(expr):
        m = re.fullmatch(r"([^\[\]]*)\[([^\]]+)\]([^\[\]]*)", part)
        if not m:
            if "[" in part or "]" in part:
                raise UsageError(f"bad hostlist '{expr}'")
            names.append(part)
            continue
        prefix, body, suffix = m.groups()
        for item in body.split(","):
            if "-" in item:
                lo, hi = item.split("-", 1)
                if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                    raise UsageError(f"bad range '{item}' in hostlist '{expr}'")
                width = len(lo) if lo.startswith("0") else 0
                names += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            elif item.isdigit():
                names.append(f"{prefix}{item}{suffix}")
            else:
                raise UsageError(f"bad item '{item}' in hostlist '{expr}'")
    return names


def compress(names: list[str]) -> str:
    """['node1', 'node2', 'node3', 'login'] -> 'node[1-3],login' (order of first appearance)."""
    groups: dict[tuple[str, int], list[int]] = {}
    order: list[tuple[str, int] | str] = []
    for name in names:
        m = _NUMBERED.match(name)
        if not m:
            order.append(name)
            continue
        prefix, digits = m.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        key = (prefix, width)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(digits))
    out: list[str] = []
    for entry in order:
        if isinstance(entry, str):
            out.append(entry)
            continue
        prefix, width = entry
        nums = sorted(set(groups[entry]))
        if len(nums) == 1:
            out.append(f"{prefix}{nums[0]:0{width}d}")
            continue
        ranges, start, prev = [], nums[0], nums[0]
        for n in [*nums[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            ranges.append(f"{start:0{width}d}" if start == prev
                          else f"{start:0{width}d}-{prev:0{width}d}")
            if n is not None:
                start = prev = n
        out.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(out)
