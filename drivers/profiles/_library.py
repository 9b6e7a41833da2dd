"""Every register profile the agent knows: the shipped ones plus a site folder, each
file parsed once (2000 sensors share a handful of profiles)."""

from __future__ import annotations

from pathlib import Path

from drivers.datafiles import read_document
from drivers.datalibrary import DataKind, DataLibrary
from drivers.errors import ProfileError
from drivers.profiles._parse import parse_profile
from drivers.profiles._profile import Profile


class ProfileLibrary(DataLibrary[Profile]):
    """Profiles by name, and the errors of the files that could not be loaded."""

    kind = DataKind("profile", "drivers.profiles", ProfileError, parse_profile)


shipped = ProfileLibrary.shipped  # the shipped profiles (read once per process)


def profile_names() -> list[str]:
    """Names of the profiles shipped with the package, sorted."""
    return shipped().names()


def load_profile(name: str) -> Profile:
    """A shipped profile by name (e.g. ``banner-qm30vt2``).

    Raises:
        ProfileError: unknown name.
    """
    return shipped().get(name)


def load_profile_file(path: str | Path) -> Profile:
    """Load a profile from a file outside the package (the stem is its name).

    Raises:
        DataFileError: unreadable file or invalid YAML; ProfileError: an invalid profile.
    """
    path = Path(path)
    return parse_profile(read_document(path), expected_name=path.stem)
