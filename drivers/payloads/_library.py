"""Every payload decoder the agent knows: the shipped ones plus a site folder
(``decoders_dir``), each file parsed once. Same loader and errors as the register profiles."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from drivers.datafiles import Document, load_folder, parse_document
from drivers.errors import DataFileError, DecoderError
from drivers.payloads._spec import Decoder, parse_decoder

_PACKAGE = "drivers.payloads"


class DecoderLibrary:
    """Decoders by name, and the errors of the files that could not be loaded.

    Args:
        decoders: name -> decoder.
        errors: problems found while loading (each with file:line:column).
    """

    def __init__(
        self, decoders: Mapping[str, Decoder], errors: Sequence[DataFileError] = ()
    ) -> None:
        self._decoders = dict(decoders)
        self.errors: tuple[DataFileError, ...] = tuple(errors)

    @classmethod
    def load(cls, folder: Path | None = None) -> DecoderLibrary:
        """The shipped decoders plus those of ``folder`` (``*.yaml``; the file stem is the
        decoder name). A folder file may not reuse a shipped name."""
        base = shipped()
        if folder is None:
            return base
        extra, errors = load_folder(folder, _parse)
        decoders = dict(base._decoders)
        problems: list[DataFileError] = [*base.errors, *errors]
        for name, decoder in extra.items():
            if name in decoders:
                problems.append(
                    DecoderError(
                        f"decoder {name!r} is shipped with the agent; give yours another name",
                        source=decoder.source,
                    )
                )
                continue
            decoders[name] = decoder
        return cls(decoders, problems)

    def names(self) -> list[str]:
        """Known decoder names, sorted."""
        return sorted(self._decoders)

    def __contains__(self, name: object) -> bool:
        return name in self._decoders

    def get(self, name: str) -> Decoder:
        """The decoder called ``name``.

        Raises:
            DecoderError: unknown name.
        """
        try:
            return self._decoders[name]
        except KeyError:
            raise DecoderError(
                f"unknown decoder {name!r}; available: {', '.join(self.names())}", source=_PACKAGE
            ) from None


def _parse(doc: Document, stem: str) -> Decoder:
    return parse_decoder(doc, expected_name=stem)


@functools.cache
def shipped() -> DecoderLibrary:
    """The decoders shipped in this package (read once per process)."""
    root = resources.files(_PACKAGE)
    decoders: dict[str, Decoder] = {}
    errors: list[DataFileError] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml") or not entry.is_file():
            continue
        stem = entry.name.removesuffix(".yaml")
        try:
            doc = parse_document(
                entry.read_text(encoding="utf-8"), f"drivers/payloads/{entry.name}"
            )
            decoders[stem] = parse_decoder(doc, expected_name=stem)
        except DataFileError as exc:
            errors.append(exc)
    return DecoderLibrary(decoders, errors)


def load_decoder(name: str) -> Decoder:
    """A shipped decoder by name (e.g. ``ncd-processed``).

    Raises:
        DecoderError: unknown name.
    """
    return shipped().get(name)
