"""Every payload decoder the agent knows: the shipped ones plus a site folder
(``decoders_dir``), each file parsed once. Same loader and errors as the register profiles."""

from __future__ import annotations

from drivers.datafiles import Document
from drivers.datalibrary import DataLibrary
from drivers.errors import DecoderError
from drivers.payloads._spec import Decoder, parse_decoder


class DecoderLibrary(DataLibrary[Decoder]):
    """Decoders by name, and the errors of the files that could not be loaded.

    Args:
        items: name -> decoder.
        errors: problems found while loading (each with file:line:column).
    """

    kind = "decoder"
    package = "drivers.payloads"
    error = DecoderError

    @staticmethod
    def parse_item(doc: Document, name: str) -> Decoder:
        """Parse one decoder file whose stem is ``name``."""
        return parse_decoder(doc, expected_name=name)


def shipped() -> DecoderLibrary:
    """The decoders shipped in this package (read once per process)."""
    return DecoderLibrary.shipped()


def load_decoder(name: str) -> Decoder:
    """A shipped decoder by name (e.g. ``ncd-processed``).

    Raises:
        DecoderError: unknown name.
    """
    return shipped().get(name)
