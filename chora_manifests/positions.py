"""Where a field is in the YAML text: line and column for an error about it.

Only asked after a manifest failed (errors are rare, composing is cheap next to a human
reading the message), so loading a valid manifest never pays for it.
"""

from __future__ import annotations

import yaml

from chora_manifests.documents import SAFE_LOADER
from chora_manifests.errors import Loc


def locate(text: str, loc: Loc) -> tuple[int, int] | None:
    """(line, column), 1-based, of the node at ``loc``; of the deepest part of it that
    exists when the rest is missing (a required field: its mapping). Parts that name no
    key are skipped: pydantic puts the union member's name in a path (``Relation``)."""
    try:
        node = yaml.compose(text, Loader=SAFE_LOADER)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    best = node
    for part in loc:
        child = _child(best, part)
        if child is not None:
            best = child
    mark = best.start_mark
    return mark.line + 1, mark.column + 1


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and \
            0 <= part < len(node.value):
        return node.value[part]
    return None
