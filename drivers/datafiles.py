"""Data files (register profiles today, MQTT payload decoders next): YAML with positions.

One loader for every kind of data file an integrator drops into a folder: it reads each
``*.yaml`` once, parses it with line/column positions, hands it to the kind's parser, and
collects every error as FILE:LINE:COL instead of stopping at the first one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from drivers.errors import DataFileError

T = TypeVar("T")
E = TypeVar("E", bound=DataFileError)
MAX_FILE_BYTES = 1 * 2**20
MAX_FILES = 1000
SUFFIXES = (".yaml", ".yml")

KeyPath = tuple[str | int, ...]


def unknown_key(key: Any, allowed: Iterable[str]) -> str:
    """The message for a key a data file's mapping does not take, naming the closest allowed
    one (a decoder's limits.full_scale for full_scale_g) so the fix is in the line."""
    options = sorted(allowed)
    close = difflib.get_close_matches(str(key), options, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}; allowed: {options}{hint}"


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed YAML document and where each of its values starts (1-based)."""

    source: str
    data: Any
    positions: dict[KeyPath, tuple[int, int]]

    def at(self, path: KeyPath) -> tuple[int | None, int | None]:
        """(line, column) of the value at ``path``, or of its nearest listed parent."""
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (None, None))

    def error(
        self,
        path: KeyPath,
        message: str,
        cls: type[E] = DataFileError,  # type: ignore[assignment]
    ) -> E:
        """An error of class ``cls`` at ``path``'s position, naming the key path."""
        line, column = self.at(path)
        return cls(message, source=self.source, line=line, column=column, path=path)


NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def item_name(doc: Document, expected_name: str | None, cls: type[E]) -> str:
    """The document's top-level ``name``: a lower-case identifier, equal to
    ``expected_name`` (the file stem) when that is given.

    Raises:
        DataFileError: of class ``cls``, at the ``name`` key.
    """
    name = doc.data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise doc.error(("name",), f"name must be a lower-case identifier, got {name!r}", cls)
    if expected_name is not None and name != expected_name:
        raise doc.error(
            ("name",), f"name {name!r} does not match the file name {expected_name!r}", cls
        )
    return name


def _walk(node: yaml.Node, path: KeyPath) -> Iterator[tuple[KeyPath, yaml.Node]]:
    yield path, node
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                yield from _walk(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _walk(item, (*path, i))


def parse_document(text: str, source: str) -> Document:
    """Parse YAML text (safe loader) with the position of every value.

    Raises:
        DataFileError: invalid YAML, at the problem's position.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise DataFileError(
            f"invalid YAML: {problem}", source=source, line=line, column=column
        ) from exc
    positions: dict[KeyPath, tuple[int, int]] = {}
    if node is not None:
        for path, n in _walk(node, ()):
            positions.setdefault(path, (n.start_mark.line + 1, n.start_mark.column + 1))
            if isinstance(n, yaml.MappingNode):
                _no_duplicate_keys(n, source)
    return Document(source, data, positions)


def _no_duplicate_keys(node: yaml.MappingNode, source: str) -> None:
    """YAML keeps the last of two equal keys without a word (a copied block would
    silently replace the first): refuse it, at the second one."""
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise DataFileError(
                f"duplicate key '{key.value}' (also on line {seen[key.value]}); YAML would "
                "silently keep only the last one: remove or rename one of them",
                source=source,
                line=line,
                column=key.start_mark.column + 1,
            )
        seen[key.value] = line


def load_folder(
    folder: Path, parse: Callable[[Document, str], T]
) -> tuple[dict[str, T], list[DataFileError]]:
    """Load every data file of a folder with ``parse(document, file_stem)``.

    Files are read in name order; a file that fails is skipped and its error kept.

    Returns:
        stem -> parsed object, and every error found.
    """
    items: dict[str, T] = {}
    errors: list[DataFileError] = []
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())
    except OSError as exc:
        reason = "no such folder" if isinstance(exc, FileNotFoundError) else exc.strerror
        return items, [DataFileError(f"cannot list the folder: {reason}", source=str(folder))]
    if len(files) > MAX_FILES:
        errors.append(
            DataFileError(
                f"more than {MAX_FILES} files; only the first are read", source=str(folder)
            )
        )
        files = files[:MAX_FILES]
    for file in files:
        try:
            items[file.stem] = parse(read_document(file), file.stem)
        except DataFileError as exc:
            errors.append(exc)
    return items, errors


def read_document(file: Path) -> Document:
    """Read and parse one data file.

    Raises:
        DataFileError: unreadable, too large, not UTF-8 or invalid YAML.
    """
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DataFileError(f"cannot read: {exc.strerror}", source=str(file)) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise DataFileError("larger than 1 MiB; is it the right file?", source=str(file))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFileError("not UTF-8 text; save it as UTF-8", source=str(file)) from exc
    return parse_document(text, str(file))
