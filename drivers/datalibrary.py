"""A library of data files of one kind (register profiles, payload decoders): the files
shipped in a package plus a site folder, each parsed once, looked up by name.

Each kind subclasses ``DataLibrary`` with a ``DataKind``: its word for messages, its
package, its error class and its parser. The loading, the shipped-name rule and the error
messages are the same for every kind.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from drivers.datafiles import Document, load_folder, parse_document
from drivers.errors import DataFileError


class _Sourced(Protocol):
    @property
    def source(self) -> str: ...


T = TypeVar("T", bound=_Sourced)


@dataclass(frozen=True, slots=True)
class DataKind(Generic[T]):
    """One kind of data file.

    Attributes:
        word: what one item is called in messages ("profile").
        package: where the shipped files live ("drivers.profiles").
        error: the class raised and collected for this kind.
        parse: ``parse(document, expected_name)``; the name is the file stem.
    """

    word: str
    package: str
    error: type[DataFileError]
    parse: Callable[[Document, str], T]


class DataLibrary(Generic[T]):
    """Items by name, and the errors of the files that could not be loaded.

    Subclasses set ``kind``.

    Args:
        items: name -> parsed item.
        errors: problems found while loading (each with file:line:column).
    """

    kind: ClassVar[DataKind[Any]]

    def __init__(self, items: Mapping[str, T], errors: Sequence[DataFileError] = ()) -> None:
        self._items = dict(items)
        self.errors: tuple[DataFileError, ...] = tuple(errors)

    @classmethod
    def shipped(cls) -> Self:
        """The items shipped in the kind's package (read once per process)."""
        return _shipped(cls)

    @classmethod
    def load(cls, folder: Path | None = None) -> Self:
        """The shipped items plus those of ``folder`` (``*.yaml``; the file stem is the
        name). A folder file may not reuse a shipped name: name it differently."""
        base = cls.shipped()
        if folder is None:
            return base
        extra, errors = load_folder(folder, cls.kind.parse)
        items = dict(base._items)
        problems: list[DataFileError] = [*base.errors, *errors]
        for name, item in extra.items():
            if name in items:
                problems.append(
                    cls.kind.error(
                        f"{cls.kind.word} {name!r} is shipped with the agent; "
                        "give yours another name",
                        source=item.source,
                    )
                )
                continue
            items[name] = item
        return cls(items, problems)

    def names(self) -> list[str]:
        """Known names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        """The item called ``name``.

        Raises:
            DataFileError: of the kind's ``error`` class, for an unknown name.
        """
        try:
            return self._items[name]
        except KeyError:
            raise self.kind.error(
                f"unknown {self.kind.word} {name!r}; available: {', '.join(self.names())}",
                source=self.kind.package,
            ) from None


L = TypeVar("L", bound=DataLibrary[Any])


@functools.cache
def _shipped(cls: type[L]) -> L:
    root = resources.files(cls.kind.package)
    folder = cls.kind.package.replace(".", "/")
    items: dict[str, Any] = {}
    errors: list[DataFileError] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml") or not entry.is_file():
            continue
        stem = entry.name.removesuffix(".yaml")
        try:
            doc = parse_document(entry.read_text(encoding="utf-8"), f"{folder}/{entry.name}")
            items[stem] = cls.kind.parse(doc, stem)
        except DataFileError as exc:
            errors.append(exc)
    return cls(items, errors)
