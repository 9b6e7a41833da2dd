"""`edge-agent reload -c FILE`: ask the running agent to re-read FILE (agent.reload).

The request goes through the control socket (agent.control), like `maintenance`, and the
answer must come from the agent of this file: it names the configuration file it runs
with, and once reloaded it must be this configuration's agent (gateway id and store
identity, agent.identity). The agent checks the file itself: an invalid file is refused
there, with the same file:line:column lines `edge-agent check` prints, and logged. When
the file cannot be loaded here, the socket and the gateway come from its YAML as far as
it can be read, so the agent still gets to log the refusal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent.config import Config, ConfigIssue, Control, check_file
from agent.control import ControlError, call
from agent.identity import mismatch

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
OP = "reload"
TIMEOUT_S = 60.0  # stopping sensors and uplinks is bounded well inside this


def _lenient_socket(path: Path) -> tuple[Path, bool]:
    """control.socket from a file that does not validate, and whether it is only the
    default (the file unreadable, or naming none)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        sock = data["control"]["socket"]
        if isinstance(sock, str) and sock:
            return Path(sock), False
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
        pass
    return Control().socket, True


def _not_ours(config: Config | None, path: str, agent: Any, ok: bool) -> str | None:
    """Why the answer is not from this file's agent, or None when it is."""
    if not isinstance(agent, dict):
        return "the answer carries no agent identity: it is not an edge-agent"
    if agent.get("config") != path:
        return f"it runs with the configuration {agent.get('config')!r}, not {path!r}"
    if config is None:
        return None
    same = agent.get("gateway") == config.gateway.id and agent.get("store") == os.path.abspath(
        config.store.path
    )
    # A refused change of gateway id or store path leaves the agent as it was: then only
    # its file is compared; after any reload it is this configuration's agent, fully.
    return mismatch(config, agent) if ok or same else None


def _invalid(path: Path, issues: Sequence[ConfigIssue], sock: Path, why: str) -> str:
    """A file that does not load, and its agent not reached (the socket was a guess)."""
    lines = "\n".join(str(i) for i in issues)
    return (
        f"reload not done: {path} is not valid (as `edge-agent check` says):\n{lines}\n"
        f"({why}, at {sock}; a running agent keeps its configuration)"
    )


def request_reload(path: Path, out: TextIO, err: TextIO, *, as_json: bool = False) -> int:
    """Ask the agent to reload; print what changed (one line per change, or JSON).

    Returns:
        0 reloaded, 1 not reached or refused, 2 refused because the file is invalid.
    """
    checked = check_file(path)
    config = checked.config
    sock, guessed = (config.control.socket, False) if config is not None else _lenient_socket(path)
    real = os.path.realpath(path)
    try:
        answer = call(sock, OP, {"config": real}, timeout_s=TIMEOUT_S)
    except ControlError as exc:
        if guessed:  # no socket in a file that does not load: the file is what to fix
            why = f"no running agent was reached either: {exc}"
            print(_invalid(path, checked.issues, sock, why), file=err)
            return EXIT_INVALID
        print(
            f"reload not done: cannot reach the running agent: {exc} (is it running? a new "
            "control.socket is used from the next restart)",
            file=err,
        )
        return EXIT_FAILED
    wrong = _not_ours(config, real, answer.get("agent"), bool(answer["ok"]))
    if wrong is not None and guessed:  # another agent at the default socket: the file
        why = f"the agent that answered is not this file's agent: {wrong}"  # is what to fix
        print(_invalid(path, checked.issues, sock, why), file=err)
        return EXIT_INVALID
    if wrong is not None:
        print(f"reload not done: the process on {sock} is not this file's agent: {wrong}", file=err)
        return EXIT_FAILED
    if not answer["ok"]:
        print(f"reload refused, nothing changed: {answer.get('error')}", file=err)
        return EXIT_INVALID if config is None else EXIT_FAILED
    result = answer["result"]
    if as_json:
        print(json.dumps(result, indent=2), file=out)
        return EXIT_OK
    changes, later = result.get("changes", []), result.get("needs_restart", [])
    what = f"{len(changes)} change(s)" if changes else "nothing changed"
    print(f"reloaded {result.get('config')}: {what}", file=out)
    for line in changes:
        print(f"  {line}", file=out)
    for line in later:
        print(f"  needs restart: {line}", file=out)
    return EXIT_OK
