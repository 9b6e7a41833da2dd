"""YAML text -> plain Python values plus a SourceMap, with PyYAML's safe semantics.

PyYAML's ``safe_load`` loses positions and silently keeps the last of two equal keys. Here
the file is composed with ``yaml.SafeLoader`` into nodes, and the values are built by hand:
scalars go through the safe constructor (so ``1``, ``0.5``, ``true`` mean what they mean in
``safe_load``), mappings and lists are walked to record every position, catch duplicate keys
and expand ``${VAR}`` in strings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from agent.config._env import expand
from agent.config._errors import ConfigIssue, KeyPath
from agent.config._source import Node, SourceMap

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000  # aliases can multiply a small file into a huge tree ("billion laughs")
_MAX_DEPTH = 32  # the configuration nests 5 levels; far deeper is a mistake or an attack
_TOO_DEEP = "values are nested too deeply; a configuration needs only a few levels"

_SYNTAX_HINTS = {
    "found character '\\t'": "indent with spaces, not tabs",
    "mapping values are not allowed here": (
        "check the indentation, and quote values that contain ': '"
    ),
    "could not find expected ':'": "each line inside a mapping needs 'key: value'",
    "expected <block end>": "check that this line is indented like its siblings",
    "found undefined alias": "define the anchor (&name) before using *name",
    "expected a single document": "keep one document per file (remove the second '---')",
    "expected ',' or '}'": "close every '{' with '}' and separate its entries with ','",
    "expected ',' or ']'": "close every '[' with ']' and separate its items with ','",
    "found unexpected end of stream": "a quote or bracket is not closed",
}


class _TooBig(Exception):
    pass


class _Builder:
    def __init__(self, smap: SourceMap, loader: Any, environ: Mapping[str, str]):
        self.smap = smap
        self.loader = loader
        self.environ = environ
        self.issues: list[ConfigIssue] = []
        self.count = 0
        self.stack: set[int] = set()

    def value(self, node: yaml.Node, path: KeyPath, key: yaml.Node | None) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooBig
        k_line, k_col = (key.start_mark.line + 1, key.start_mark.column + 1) if key else (0, 0)
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, ScalarNode):
            return self.scalar(node, path, line, col, k_line, k_col)
        self.smap.nodes[path] = Node(line, col, k_line, k_col)
        if len(path) > _MAX_DEPTH:
            return self.fail(path, _TOO_DEEP)
        if id(node) in self.stack:
            return self.fail(
                path, "an alias refers to its own parent; YAML cannot nest a value in itself"
            )
        expected = _MAP if isinstance(node, MappingNode) else _SEQ
        if node.tag != expected:
            return self.fail(path, f"unsupported YAML tag {node.tag!r}; remove the tag")
        self.stack.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.value(item, (*path, i), None) for i, item in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.stack.discard(id(node))

    def scalar(
        self, node: ScalarNode, path: KeyPath, line: int, col: int, k_line: int, k_col: int
    ) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.smap.nodes[path] = Node(line, col, k_line, k_col, node.value)
            problem = getattr(exc, "problem", None) or str(exc)
            return self.fail(path, f"cannot read this value ({problem}); remove the tag or fix it")
        template = None
        if isinstance(value, str):
            expanded, problems = expand(value, self.environ)
            if problems:
                self.smap.nodes[path] = Node(line, col, k_line, k_col, node.value)
                for p in problems:
                    self.issues.append(self.smap.issue(path, p))
                self.smap.broken.add(path)
                return None
            if expanded != value:
                template, value = value, expanded
        self.smap.nodes[path] = Node(line, col, k_line, k_col, node.value, template)
        return value

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node, explicit in self.pairs(node):
            if not isinstance(key_node, ScalarNode):
                self.issues.append(
                    self.smap.issue(path, "a key must be a plain word such as 'host'")
                )
                continue
            # The key's source text, not its YAML value: `on:` or `no:` stay words, not booleans.
            name = key_node.value
            if explicit and name in seen:
                first = seen[name].start_mark.line + 1
                where = f"line {first}" if first != key_node.start_mark.line + 1 else "this line"
                self.smap.nodes[(*path, name)] = Node(
                    value_node.start_mark.line + 1,
                    value_node.start_mark.column + 1,
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
                self.issues.append(
                    self.smap.issue(
                        (*path, name),
                        f"duplicate key '{name}' (also on {where}); YAML would silently keep "
                        "only the last one: remove or rename one of them",
                        at="key",
                    )
                )
            if explicit:
                seen[name] = key_node
            out[name] = self.value(value_node, (*path, name), key_node)
        return out

    def pairs(self, node: MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node, bool]]:
        """Entries of a mapping, ``<<: *anchor`` merges first so explicit keys override."""
        explicit = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for src in sources:
                if isinstance(src, MappingNode) and id(src) not in self.stack:
                    for k, v, _ in self.pairs(src):
                        yield k, v, False
                else:
                    mark = src.start_mark
                    self.issues.append(
                        ConfigIssue(
                            self.smap.file,
                            mark.line + 1,
                            mark.column + 1,
                            "",
                            "'<<' must merge a mapping (<<: *anchor); fix or remove this merge",
                        )
                    )
        for key_node, value_node in explicit:
            yield key_node, value_node, True

    def fail(self, path: KeyPath, message: str) -> None:
        self.issues.append(self.smap.issue(path, message))
        self.smap.broken.add(path)
        return None


def _syntax_issue(file: str, exc: yaml.YAMLError, text: str) -> ConfigIssue:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return ConfigIssue(
            file, line, col, "", f"character {exc.character!r} is not allowed; delete it"
        )
    if mark is None or problem is None:
        return ConfigIssue(file, 0, 0, "", f"YAML error: {exc}")
    msg = f"YAML syntax error: {problem}"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        msg += f" ({context} at line {context_mark.line + 1})"
    hint = next((h for k, h in _SYNTAX_HINTS.items() if k in problem), None)
    msg += f"; {hint}" if hint else "; check the indentation and quoting on this line"
    return ConfigIssue(file, mark.line + 1, mark.column + 1, "", msg)


def parse(file: str, text: str, environ: Mapping[str, str]) -> tuple[Any, SourceMap, list]:
    """Parse YAML text into plain values with positions, collecting every problem.

    Args:
        file: the file name to print in issues.
        text: the file's content.
        environ: environment for ``${VAR}`` expansion.

    Returns:
        (data, source map, issues). data is None when the file cannot be read as YAML at
        all (a syntax error stops the parser; everything else is collected).
    """
    smap = SourceMap(file)
    # The C parser (libyaml) when PyYAML has it: 2000 sensors parse in a quarter of the
    # time. A file it refuses is parsed again by the Python parser, whose messages the
    # issues are written for.
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
    except (yaml.YAMLError, RecursionError):
        loader.dispose()
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            loader.dispose()
            return None, smap, [_syntax_issue(file, exc, text)]
        except RecursionError:  # PyYAML composes nested brackets recursively
            loader.dispose()
            return None, smap, [ConfigIssue(file, 0, 0, "", _TOO_DEEP)]
    if root is None:
        msg = "the file is empty; expected a mapping with gateway, assets, sensors and store"
        return None, smap, [ConfigIssue(file, 0, 0, "", msg)]
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        mark = root.start_mark
        msg = (
            f"the top level is {kind}; expected a mapping with keys gateway, assets, sensors, "
            "uplinks, store, health (each 'key:' at the start of a line)"
        )
        return None, smap, [ConfigIssue(file, mark.line + 1, mark.column + 1, "", msg)]
    builder = _Builder(smap, loader, environ)
    try:
        data = builder.value(root, (), None)
    except _TooBig:
        msg = f"the file expands to more than {_MAX_NODES} values (aliases?); simplify it"
        return None, smap, [ConfigIssue(file, 0, 0, "", msg)]
    finally:
        loader.dispose()
    return data, smap, builder.issues
