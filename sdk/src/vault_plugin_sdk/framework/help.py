"""Help text for ``path-help`` (``bao path-help``), generated from the path declarations."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

from .path import Path


def display_pattern(pattern: str) -> str:
    """A readable form of a path pattern: named groups become ``<name>``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        match = re.match(r"\(\?P<(\w+)>", pattern[i:])
        if match is None:
            out.append(pattern[i])
            i += 1
            continue
        depth, j = 1, i + match.end()
        while j < len(pattern) and depth:  # skip to the group's closing parenthesis
            if pattern[j] == "\\":
                j += 1
            elif pattern[j] == "(":
                depth += 1
            elif pattern[j] == ")":
                depth -= 1
            j += 1
        out.append(f"<{match.group(1)}>")
        i = j
    return "".join(out).replace("/?", "/").replace("\\", "")


def path_help(path: Path) -> str:
    """The help shown for one path: synopsis, description, parameters and operations."""
    lines = [f"Request:        {display_pattern(path.pattern)}"]
    lines.append(f"Matching Route: ^{path.pattern}$")
    lines.append("")
    if path.help_synopsis:
        lines += [path.help_synopsis.strip(), ""]
    if path.fields:
        lines.append("## PARAMETERS")
        lines.append("")
        for name in sorted(path.fields):
            spec = path.fields[name]
            heading = f"{name} ({spec.type.value})"
            if spec.default not in (None, "", [], {}):
                heading += f", default: {spec.default!r}"
            if spec.required:
                heading += ", required"
            lines.append(heading)
            lines.append("")
            lines += ["    " + row for row in textwrap.wrap(spec.description.strip(), 88) or [""]]
            lines.append("")
    lines.append("## OPERATIONS")
    lines.append("")
    for op, handler in path.operations.items():
        lines.append(f"{op.value}: {handler.summary}")
        if handler.description:
            lines += ["    " + row for row in textwrap.wrap(handler.description.strip(), 88)]
    lines.append("")
    if path.help_description:
        lines += ["## DESCRIPTION", "", textwrap.dedent(path.help_description).strip(), ""]
    return "\n".join(lines)


def backend_help(help_text: str, paths: Sequence[Path]) -> str:
    """The help shown for the mount root: the backend's overview and its paths."""
    lines = [textwrap.dedent(help_text).strip(), "", "## PATHS", ""]
    lines.append("The following paths are supported by this backend. To view help for")
    lines.append("any of the paths below, use the help command with any route matching")
    lines.append("the path pattern.")
    lines.append("")
    for path in paths:
        lines.append(f"    ^{path.pattern}$")
        if path.help_synopsis:
            lines.append(f"        {path.help_synopsis.strip()}")
        lines.append("")
    return "\n".join(lines)
