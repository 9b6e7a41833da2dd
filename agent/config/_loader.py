"""Load a configuration file: read, parse with positions, expand, validate, cross-check."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from agent.config._crossref import cross_check
from agent.config._delivery import MqttUplink
from agent.config._errors import ConfigError, ConfigIssue
from agent.config._messages import translate_all
from agent.config._models import Config
from agent.config._mqtt import Broker
from agent.config._mqtt_check import mqtt_checks, read_broker_files
from agent.config._secrets import read_tokens, secret_path
from agent.config._tls_check import tls_file_issues
from agent.config._yaml import parse

if TYPE_CHECKING:
    from drivers.datalibrary import DataLibrary

M = TypeVar("M", Broker, MqttUplink)
TLS_FILES = ("ca_file", "cert_file", "key_file")
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


class _Library:
    """A data-file library a file uses, loaded once per check (shipped + a site folder)."""

    def __init__(self, library: DataLibrary[Any]) -> None:
        self.library = library

    def names(self) -> list[str]:
        return self.library.names()

    def broken(self, name: str) -> str | None:
        """The file of an item called ``name`` that failed to load, if there is one."""
        for e in self.library.errors:
            if Path(e.source).stem == name:
                return e.source
        return None

    def issues(self) -> list[ConfigIssue]:
        """Each data file problem as an issue at its own file:line:column."""
        from drivers.errors import format_key_path

        return [
            ConfigIssue(e.source, e.line or 0, e.column or 0, format_key_path(e.path), e.message)
            for e in self.library.errors
        ]


class _Profiles(_Library):
    """The register profiles a file uses (shipped + profiles_dir)."""

    def __init__(self, folder: Path | None) -> None:
        # Imported here: profiles are data files read only when a file is checked.
        from drivers.profiles import ProfileLibrary

        super().__init__(ProfileLibrary.load(folder))

    def axes(self, name: str) -> tuple[str, ...] | None:
        return self.library.get(name).channels if name in self.library else None


class _Decoders(_Library):
    """The payload decoders a file uses (shipped + decoders_dir)."""

    def __init__(self, folder: Path | None) -> None:
        from drivers.payloads import DecoderLibrary

        super().__init__(DecoderLibrary.load(folder))

    def channels(self, name: str) -> tuple[str, ...] | None:
        return self.library.get(name).channels if name in self.library else None

    def json_payload(self, name: str) -> bool:
        return bool(self.library.get(name).json_payload)


def _profiles_dir(data: dict[str, object], base: Path, key: str = "profiles_dir") -> Path | None:
    folder = data.get(key)
    if not isinstance(folder, str) or not folder:
        return None
    return base / Path(folder).expanduser()


def collect(
    path: Path, environ: Mapping[str, str] | None = None, *, secrets: bool = True
) -> tuple[Config | None, list[ConfigIssue]]:
    """Load and check a file, returning the config or every issue found.

    Args:
        path: the YAML file. Issues name it as given; a relative ``token_file`` is read
            relative to the file's directory.
        environ: environment for ``${VAR}`` expansion; defaults to ``os.environ``.
        secrets: read and check the files only the agent itself uses (token and password
            files, TLS files). False for the operator commands: they run as users who
            may not read the service's credentials, and never use them.

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
    folder = _profiles_dir(data, path.parent)
    profiles = _Profiles(folder)
    issues += [i for i in cross_check(data, smap, profiles) if i.path not in taken]
    issues += profiles.issues()
    tokens: dict[int, str] = {}
    if secrets:
        tokens, token_issues = read_tokens(data, smap, path.parent)
        issues += token_issues
        issues += tls_file_issues(data, smap, path.parent)
    decoders_dir = _profiles_dir(data, path.parent, "decoders_dir")
    if data.get("mqtt") or decoders_dir is not None:
        decoders = _Decoders(decoders_dir)
        issues += [i for i in mqtt_checks(data, smap, decoders) if i.path not in taken]
        issues += decoders.issues()
    passwords: dict[int, str] = {}
    if secrets:
        passwords, broker_issues = read_broker_files(data, smap, path.parent)
        issues += broker_issues
    if config is None and not issues:  # every error was a repeat of a dropped one: say so
        issues.append(ConfigIssue(str(path), 0, 0, "", "the configuration is not valid"))
    if issues or config is None:
        return None, sorted(set(issues))
    if folder is not None:  # absolute from here on: the runtime does not know the file
        config = config.model_copy(update={"profiles_dir": folder.resolve()})
    if decoders_dir is not None:
        config = config.model_copy(update={"decoders_dir": decoders_dir.resolve()})
    config = _resolved_brokers(config, passwords, path.parent)
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
        if u.http is not None or u.cmms is not None:
            h = u.http or u.cmms
            assert h is not None
            upd: dict[str, object] = {
                k: _absolute(getattr(h, k), base) for k in ("token_file", *TLS_FILES)
            }
            if i in secrets:
                upd["token"] = secrets[i]
            u = u.model_copy(update={u.kind: h.model_copy(update=upd)})
        elif u.mqtt is not None:
            u = u.model_copy(update={"mqtt": _mqtt_files(u.mqtt, secrets.get(i), base)})
        uplinks.append(u)
    return config.model_copy(update={"uplinks": tuple(uplinks)})


def _resolved_brokers(config: Config, secrets: dict[int, str], base: Path) -> Config:
    """Brokers with absolute file paths and each password file's content in ``password``
    (as _resolved does for the uplinks)."""
    brokers = tuple(_mqtt_files(b, secrets.get(i), base) for i, b in enumerate(config.mqtt))
    return config.model_copy(update={"mqtt": brokers})


def _mqtt_files(m: M, secret: str | None, base: Path) -> M:
    """An MQTT connection (uplink or broker) with absolute password and TLS file paths,
    and the password file's content in ``password`` when it was read."""
    upd: dict[str, object] = {"password_file": _absolute(m.password_file, base)}
    if secret is not None:
        upd["password"] = secret
    if m.tls is not None:
        upd["tls"] = m.tls.model_copy(
            update={k: _absolute(getattr(m.tls, k), base) for k in TLS_FILES}
        )
    return m.model_copy(update=upd)


def load_config(
    path: Path, *, environ: Mapping[str, str] | None = None, secrets: bool = True
) -> Config:
    """Load a configuration file into validated, frozen models.

    Args:
        path: the YAML file.
        environ: environment for ``${VAR}`` expansion; defaults to ``os.environ``.
        secrets: False: leave token, password and TLS files unread (see ``collect``).

    Raises:
        ConfigError: with every problem found (``.issues``), each at file:line:column.
    """
    config, issues = collect(path, environ, secrets=secrets)
    if config is None:
        raise ConfigError(issues)
    return config
