"""Register profiles: sensor models described as data (one YAML file per model)."""

from drivers.profiles._library import (
    ProfileLibrary,
    load_profile,
    load_profile_file,
    profile_names,
    shipped,
)
from drivers.profiles._parse import parse_profile
from drivers.profiles._profile import (
    ALL_CHANNELS,
    ALL_ZERO,
    NOT_FINITE,
    OUT_OF_RANGE,
    QUALITY_REASONS,
    SATURATED,
    SENTINEL,
    Profile,
    Register,
)

__all__ = [
    "ALL_CHANNELS",
    "ALL_ZERO",
    "NOT_FINITE",
    "OUT_OF_RANGE",
    "QUALITY_REASONS",
    "SATURATED",
    "SENTINEL",
    "Profile",
    "ProfileLibrary",
    "Register",
    "load_profile",
    "load_profile_file",
    "parse_profile",
    "profile_names",
    "shipped",
]
