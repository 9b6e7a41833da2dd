"""JSON parsed in short C calls, so that a worker thread parsing a large message lets the
event loop's thread run between them.

``json.loads`` is one C call that holds the GIL throughout: run in a thread, a 60 MiB
waveform still stopped the event loop for a second (measured). Here objects and arrays
are walked in Python and their members parsed by the C scanner; a run of numbers in an
array (a waveform's samples) is parsed by ``json.loads`` in slices of at most
NUMBER_RUN_CHARS. The GIL is offered between calls. Same result and the same errors
(ValueError / RecursionError) as ``json.loads`` with the given object_pairs_hook.
"""

from __future__ import annotations

import codecs
import json
import re
import threading
from collections.abc import Callable
from json.decoder import WHITESPACE, JSONObject
from json.scanner import c_make_scanner, py_make_scanner  # type: ignore[attr-defined]
from typing import Any

# About 1 ms of C parsing per slice; a text slice is decoded in the same size.
NUMBER_RUN_CHARS = 64 * 1024
TEXT_SLICE_BYTES = 1024 * 1024
_NUMBER_RUN = re.compile(rf"[-+0-9.eE \t\n\r,]{{2,{NUMBER_RUN_CHARS}}}")

PairsHook = Callable[[list[tuple[str, Any]]], Any]


class ParseAbandoned(Exception):
    """The parse was abandoned (its ``abandon`` event set) before it ended."""


def loads_sliced(raw: bytes, pairs_hook: PairsHook, abandon: threading.Event | None = None) -> Any:
    """``json.loads(raw, object_pairs_hook=pairs_hook)``, in slices (see the module).
    ``abandon``: when set, the parse ends at its next member (a link stopping: the worker
    thread, which the interpreter's exit waits for, must not parse on for seconds).

    Raises:
        ValueError: not UTF-8 / not JSON (json.JSONDecodeError is one).
        RecursionError: nested too deep.
        ParseAbandoned: ``abandon`` was set.
    """
    abandoned = abandon.is_set if abandon is not None else lambda: False
    text = _text(raw)
    decoder = json.JSONDecoder(object_pairs_hook=pairs_hook)
    scan_c = (c_make_scanner or py_make_scanner)(decoder)
    memo: dict[str, str] = {}
    ws = WHITESPACE.match

    def scan_once(s: str, idx: int) -> tuple[Any, int]:
        if abandoned():
            raise ParseAbandoned
        ch = s[idx : idx + 1]
        if ch == "{":
            return JSONObject((s, idx + 1), True, scan_once, None, pairs_hook, memo)  # type: ignore[no-any-return]
        if ch == "[":
            return _array(s, idx + 1, scan_once)
        return scan_c(s, idx)  # type: ignore[no-any-return]

    def _array(s: str, idx: int, scan: Callable[[str, int], tuple[Any, int]]) -> tuple[Any, int]:
        """The array from after its ``[``: each run of numbers in slices, every other
        member as json's own parser does it, and number runs again after it (a ``null``
        among a waveform's samples must not leave the rest to one call a sample)."""
        out: list[Any] = []
        idx = ws(s, idx).end()
        if s[idx : idx + 1] == "]":
            return out, idx + 1
        while True:
            if abandoned():
                raise ParseAbandoned
            run = _NUMBER_RUN.match(s, idx)
            cut = run.group().rfind(",") if run is not None else -1
            if cut > 0:
                try:
                    values = json.loads("[" + s[idx : idx + cut] + "]")
                except ValueError:
                    pass  # not numbers alone: member by member below, with its error
                else:
                    out += values
                    idx = ws(s, idx + cut + 1).end()  # past the comma: the next member
                    continue
            try:
                value, idx = scan(s, idx)
            except StopIteration as err:
                raise json.JSONDecodeError("Expecting value", s, err.value) from None
            out.append(value)
            idx = ws(s, idx).end()
            ch = s[idx : idx + 1]
            if ch == "]":
                return out, idx + 1
            if ch != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", s, idx)
            idx = ws(s, idx + 1).end()

    idx = ws(text, 0).end()
    try:
        value, end = scan_once(text, idx)
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None
    except RecursionError:
        # The walk takes two or three Python frames a level, json's C parser none: nesting
        # json takes (up to the recursion limit) is refused here from about a third of
        # it. Such a body, rare, is parsed whole, as json.loads would.
        return decoder.decode(text)
    end = ws(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _text(raw: bytes) -> str:
    """The body as text, as json.loads decodes bytes, a slice at a time."""
    encoding = json.detect_encoding(raw)
    if encoding != "utf-8":
        return raw.decode(encoding, "surrogatepass")

    dec = codecs.getincrementaldecoder("utf-8")("surrogatepass")
    view = memoryview(raw)
    parts = [
        dec.decode(view[i : i + TEXT_SLICE_BYTES]) for i in range(0, len(raw), TEXT_SLICE_BYTES)
    ]
    parts.append(dec.decode(b"", final=True))
    return "".join(parts)
