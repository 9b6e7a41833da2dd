"""Register profiles: sensor models described as data (one YAML file per model)."""

from drivers.profiles._profile import (
    ALL_CHANNELS,
    Profile,
    Register,
    load_profile,
    load_profile_file,
    parse_profile,
    profile_names,
)

__all__ = [
    "ALL_CHANNELS",
    "Profile",
    "Register",
    "load_profile",
    "load_profile_file",
    "parse_profile",
    "profile_names",
]
