"""MQTT payload decoders: vendor message formats described as data (one YAML file each)."""

from drivers.payloads._common import (
    ALL_CHANNELS,
    BAD_TIMESTAMP,
    BAD_WAVEFORM,
    DROP_REASONS,
    FUTURE_TIMESTAMP,
    MALFORMED,
    MISSING_FIELD,
    OLD_TIMESTAMP,
    TOO_LARGE,
    WRONG_TYPE,
    Decoded,
    Payload,
    parse_timestamp,
    split_path,
    to_readings,
)
from drivers.payloads._features import FeaturesDecoder, Field
from drivers.payloads._library import DecoderLibrary, load_decoder, shipped
from drivers.payloads._spec import FORMATS, Decoder, parse_decoder
from drivers.payloads._waveforms import (
    HeaderField,
    RawInt16Decoder,
    WaveformJsonDecoder,
    WaveLimits,
)

__all__ = [
    "ALL_CHANNELS",
    "BAD_TIMESTAMP",
    "BAD_WAVEFORM",
    "DROP_REASONS",
    "FORMATS",
    "FUTURE_TIMESTAMP",
    "MALFORMED",
    "MISSING_FIELD",
    "OLD_TIMESTAMP",
    "TOO_LARGE",
    "WRONG_TYPE",
    "Decoded",
    "Decoder",
    "DecoderLibrary",
    "FeaturesDecoder",
    "Field",
    "HeaderField",
    "Payload",
    "RawInt16Decoder",
    "WaveLimits",
    "WaveformJsonDecoder",
    "load_decoder",
    "parse_decoder",
    "parse_timestamp",
    "shipped",
    "split_path",
    "to_readings",
]
