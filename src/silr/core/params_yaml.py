"""The reader of params files: small, UTF-8, valid YAML, without aliases or duplicate keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from silr.core.errors import ConfigError, quoted

__all__ = ["MAX_PARAMS_BYTES", "read_yaml"]

# A params file larger than this is not a params file.
MAX_PARAMS_BYTES = 1024 * 1024


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and without duplicate keys.

    An alias (`*name`) lets 344 bytes expand to gigabytes (a "billion laughs"), and params.yaml
    (written by hand or by `dvc exp run -S`) never needs one; a duplicate key would let the last
    one win silently."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(problem="YAML aliases (*name) are not allowed in params",
                                       problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {quoted(key)}",
                                           problem_mark=key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The YAML of `path` (aliases and duplicate keys refused); ConfigError naming the file, line
    and problem for anything that is not small, UTF-8, valid YAML."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: {len(data):,} bytes, more than a params file holds "
                          f"({MAX_PARAMS_BYTES:,})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}, line {line})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be params") from None
