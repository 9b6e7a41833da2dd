"""``${VAR}`` and ``${VAR:-default}`` expansion inside string values.

Expansion happens on the parsed YAML string, before validation, so a secret or a port can
come from the environment (systemd ``EnvironmentFile=``, a container) instead of the file.
``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace environment placeholders in one string value.

    ``${VAR:-default}`` uses the default when VAR is unset or empty (as in POSIX shells).

    Args:
        text: the string value as written in the file.
        environ: the environment to read from.

    Returns:
        The expanded text and a list of problems (each a complete message); when the list is
        not empty the text must not be used.
    """
    if "$" not in text:
        return text, []
    out: list[str] = []
    problems: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            out.append("${")
            i += 3
            continue
        if not text.startswith("${", i):
            out.append(text[i])
            i += 1
            continue
        end = text.find("}", i + 2)
        if end < 0:
            problems.append(
                f"unclosed '${{' in {text!r}; write ${{NAME}} or ${{NAME:-default}}, "
                "or $${ for a literal '${'"
            )
            return text, problems
        body = text[i + 2 : end]
        name, sep, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            problems.append(
                f"'${{{body}}}' is not a valid placeholder; write ${{NAME}} or "
                "${NAME:-default} with NAME made of letters, digits and '_'"
            )
        elif environ.get(name):
            out.append(environ[name])
        elif sep:
            out.append(default)
        elif name in environ:
            problems.append(
                f"environment variable {name} is empty; set it, or give a default "
                f"with ${{{name}:-default}}"
            )
        else:
            problems.append(
                f"environment variable {name} is not set; set it in the agent's environment "
                f"(e.g. systemd EnvironmentFile=), or give a default with ${{{name}:-default}}"
            )
        i = end + 1
    return "".join(out), problems
