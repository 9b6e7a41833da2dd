"""Load a configuration file: read, parse with positions, expand, validate, cross-check."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from agent.config._crossref import cross_check, read_tokens, secret_path
from agent.config._errors import ConfigError, ConfigIssue
from agent.config._messages import translate_all
from agent.config._models import Config
from agent.config._yaml import parse

_MAX_FILE_BYTES = 1 * 2**20  # a configuration is a few KiB; anything this big is a mistake


def _read(path: Path) -> tuple[str | None, ConfigIssue | None]:
    file = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        msg = "cannot read the configuration: no such file; check the path given with -c"
    except IsADirectoryError:
        msg = "cannot read the configuration: this is a directory; give the YAML file in it"
    except OSError as exc:
        msg = f"cannot read the configuration ({exc.strerror}); check the file's permissions"
    else:
        if len(raw) > _MAX_FILE_BYTES:
            return None, ConfigIssue(
                file, 0, 0, "", "the file is larger than 1 MiB; is it the right file?"
            )
        try:
            return raw.decode("utf-8-sig"), None
        except UnicodeDecodeError as exc:
            before = raw[: exc.start]
            line = before.count(b"\n") + 1
            col = len(before) - (before.rfind(b"\n") + 1) + 1
            msg = f"byte 0x{raw[exc.start]:02x} is not UTF-8 text; save the file as UTF-8"
            return None, ConfigIssue(file, line, col, "", msg)
    return None, ConfigIssue(file, 0, 0, "", msg)


def _profile_names() -> frozenset[str]:
    # Imported here: the profiles are data files read on demand, only when a file is checked.
    from drivers.profiles import profile_names

    return frozenset(profile_names())


def _profile_axes(name: str) -> tuple[str, ...] | None:
    from drivers.errors import ProfileError
    from drivers.profiles import load_profile

    try:
        return load_profile(name).channels
    except ProfileError:
        return None  # a broken shipped profile is the package's fault, reported by its tests


def collect(
    path: Path, environ: Mapping[str, str] | None = None
) -> tuple[Config | None, list[ConfigIssue]]:
    """Load and check a file, returning the config or every issue found.

    Args:
        path: the YAML file. Issues name it as given; a relative ``token_file`` is read
            relative to the file's directory.
        environ: environment for ``${VAR}`` expansion; defaults to ``os.environ``.

    Returns:
        (config, []) when the file is valid, else (None, issues sorted by position).
    """
    env = os.environ if environ is None else environ
    path = Path(path)  # a str from a caller works too
    text, problem = _read(path)
    if text is None:
        return None, [problem] if problem else []
    data, smap, issues = parse(str(path), text, env)
    if data is None:
        return None, issues
    # Top-level "x-..." keys are ignored, as in Docker Compose: a place for &anchors that
    # sensors share with <<: *anchor.
    data = {k: v for k, v in data.items() if not k.startswith("x-")}
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues += translate_all(exc.errors(), data, smap)
    taken = {i.path for i in issues}
    issues += [
        i for i in cross_check(data, smap, _profile_names, _profile_axes) if i.path not in taken
    ]
    tokens, token_issues = read_tokens(data, smap, path.parent)
    issues += token_issues
    if config is None and not issues:  # every error was a repeat of a dropped one: say so
        issues.append(ConfigIssue(str(path), 0, 0, "", "the configuration is not valid"))
    if issues or config is None:
        return None, sorted(set(issues))
    return _resolved(config, tokens, path.parent), []


def _absolute(p: Path | None, base: Path) -> Path | None:
    return None if p is None else secret_path(base, str(p)).absolute()


def _resolved(config: Config, secrets: dict[int, str], base: Path) -> Config:
    """Uplinks with every file path absolute (relative ones are relative to the
    configuration's folder, at load and whenever the agent re-reads them) and each secret
    file's content in ``token`` / ``password``.

    ``model_copy`` skips validation on purpose: the "token or token_file" rule is about what
    the integrator writes; at runtime ``token`` is the effective secret and ``token_file``
    stays to say where it came from (and is re-read after a 401).
    """
    uplinks = []
    for i, u in enumerate(config.uplinks):
        if u.http is not None:
            h = u.http
            upd: dict[str, object] = {"token_file": _absolute(h.token_file, base)}
            if i in secrets:
                upd["token"] = secrets[i]
            u = u.model_copy(update={"http": h.model_copy(update=upd)})
        elif u.mqtt is not None:
            m = u.mqtt
            upd = {"password_file": _absolute(m.password_file, base)}
            if i in secrets:
                upd["password"] = secrets[i]
            if m.tls is not None:
                upd["tls"] = m.tls.model_copy(
                    update={k: _absolute(getattr(m.tls, k), base) for k in TLS_FILES}
                )
            u = u.model_copy(update={"mqtt": m.model_copy(update=upd)})
        uplinks.append(u)
    return config.model_copy(update={"uplinks": tuple(uplinks)})


TLS_FILES = ("ca_file", "cert_file", "key_file")


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load a configuration file into validated, frozen models.

    Args:
        path: the YAML file.
        environ: environment for ``${VAR}`` expansion; defaults to ``os.environ``.

    Raises:
        ConfigError: with every problem found (``.issues``), each at file:line:column.
    """
    config, issues = collect(path, environ)
    if config is None:
        raise ConfigError(issues)
    return config
