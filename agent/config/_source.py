"""Where each value came from in the YAML file, so an error can name its line and column."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config._errors import ConfigIssue, KeyPath, format_path


@dataclass(frozen=True, slots=True)
class Node:
    """Position and source text of one value (and of its key, inside a mapping).

    Attributes:
        line: 1-based line where the value starts.
        column: 1-based column where the value starts.
        key_line: 1-based line of the key naming this value (0 for list items, top level).
        key_column: 1-based column of that key.
        raw: the scalar exactly as written (None for mappings and lists).
        template: the text before ``${VAR}`` expansion, when expansion changed it.
    """

    line: int
    column: int
    key_line: int = 0
    key_column: int = 0
    raw: str | None = None
    template: str | None = None

    @property
    def is_empty(self) -> bool:
        """True for a key written with no value (``host:``)."""
        return self.raw == ""


@dataclass(slots=True)
class SourceMap:
    """Positions by key path for one file; builds issues pointing into it.

    Attributes:
        file: the file name as the user gave it.
        nodes: key path -> Node, for every value in the file.
        broken: paths that already have an issue (a bad tag, a missing variable); later
            validation errors at or under them would only repeat it.
    """

    file: str
    nodes: dict[KeyPath, Node] = field(default_factory=dict)
    broken: set[KeyPath] = field(default_factory=set)

    def nearest(self, path: KeyPath) -> tuple[KeyPath, Node | None]:
        """The deepest recorded path that is ``path`` or one of its parents."""
        for n in range(len(path), -1, -1):
            node = self.nodes.get(path[:n])
            if node is not None:
                return path[:n], node
        return (), None

    def is_broken(self, path: KeyPath) -> bool:
        """True when ``path`` or a parent of it already has an issue."""
        return any(path[:n] in self.broken for n in range(len(path) + 1))

    def issue(self, path: KeyPath, message: str, *, at: str = "value") -> ConfigIssue:
        """An issue for ``path``, positioned on its value, its key, or its parent mapping.

        Args:
            path: key path of the offending entry.
            message: what is wrong and what to write instead.
            at: "value" (wrong value), "key" (unknown or duplicate key) or "parent" (a
                missing key: the mapping that should contain it).
        """
        target = path[:-1] if at == "parent" and path else path
        _, node = self.nearest(target)
        if node is None:
            line, col = 1, 1
        elif (at == "key" or node.is_empty) and node.key_line:
            # An empty value has no text of its own; its key is what the user can see.
            line, col = node.key_line, node.key_column
        else:
            line, col = node.line, node.column
        return ConfigIssue(self.file, line, col, format_path(path), message)
