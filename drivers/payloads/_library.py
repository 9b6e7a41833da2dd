"""Every payload decoder the agent knows: the shipped ones plus a site folder
(``decoders_dir``), each file parsed once. Same loader and errors as the register profiles."""

from __future__ import annotations

from drivers.datalibrary import DataKind, DataLibrary
from drivers.errors import DecoderError
from drivers.payloads._spec import Decoder, parse_decoder


class DecoderLibrary(DataLibrary[Decoder]):
    """Decoders by name, and the errors of the files that could not be loaded."""

    kind = DataKind("decoder", "drivers.payloads", DecoderError, parse_decoder)


shipped = DecoderLibrary.shipped  # the shipped decoders (read once per process)


def load_decoder(name: str) -> Decoder:
    """A shipped decoder by name (e.g. ``ncd-processed``).

    Raises:
        DecoderError: unknown name.
    """
    return shipped().get(name)
