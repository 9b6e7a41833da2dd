"""Every register profile the agent knows: the shipped ones plus a site folder, each
file parsed once (2000 sensors share a handful of profiles)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from drivers.datafiles import Document, load_folder, parse_document, read_document
from drivers.errors import DataFileError, ProfileError
from drivers.profiles._profile import Profile, parse_profile

_PACKAGE = "drivers.profiles"


class ProfileLibrary:
    """Profiles by name, and the errors of the files that could not be loaded.

    Args:
        profiles: name -> profile.
        errors: problems found while loading (each with file:line:column).
    """

    def __init__(
        self, profiles: Mapping[str, Profile], errors: Sequence[DataFileError] = ()
    ) -> None:
        self._profiles = dict(profiles)
        self.errors: tuple[DataFileError, ...] = tuple(errors)

    @classmethod
    def load(cls, folder: Path | None = None) -> ProfileLibrary:
        """The shipped profiles plus those of ``folder`` (``*.yaml``; the file stem is the
        profile name). A folder file may not reuse a shipped name: name it differently."""
        base = shipped()
        if folder is None:
            return base
        extra, errors = load_folder(folder, _parse)
        profiles = dict(base._profiles)
        problems: list[DataFileError] = [*base.errors, *errors]
        for name, profile in extra.items():
            if name in profiles:
                problems.append(
                    ProfileError(
                        f"profile {name!r} is shipped with the agent; give yours another name",
                        source=profile.source,
                    )
                )
                continue
            profiles[name] = profile
        return cls(profiles, problems)

    def names(self) -> list[str]:
        """Known profile names, sorted."""
        return sorted(self._profiles)

    def __contains__(self, name: object) -> bool:
        return name in self._profiles

    def get(self, name: str) -> Profile:
        """The profile called ``name``.

        Raises:
            ProfileError: unknown name.
        """
        try:
            return self._profiles[name]
        except KeyError:
            raise ProfileError(
                f"unknown profile {name!r}; available: {', '.join(self.names())}", source=_PACKAGE
            ) from None


def _parse(doc: Document, stem: str) -> Profile:
    return parse_profile(doc, expected_name=stem)


@functools.cache
def shipped() -> ProfileLibrary:
    """The profiles shipped in this package (read once per process)."""
    root = resources.files(_PACKAGE)
    profiles: dict[str, Profile] = {}
    errors: list[DataFileError] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml") or not entry.is_file():
            continue
        stem = entry.name.removesuffix(".yaml")
        try:
            doc = parse_document(
                entry.read_text(encoding="utf-8"), f"drivers/profiles/{entry.name}"
            )
            profiles[stem] = parse_profile(doc, expected_name=stem)
        except DataFileError as exc:
            errors.append(exc)
    return ProfileLibrary(profiles, errors)


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
