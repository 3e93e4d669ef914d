"""The JSON Schema of the provisioning file, for editors (``agent schema``).

It is pydantic's schema of :class:`~agent.settings.schema.AgentConfig` (JSON Schema
2020-12), so it cannot drift from the loader: every key, type, bound, default and
description. Fields that hold a secret carry ``"secret": true`` and
``"writeOnly": true``; their value must be a reference. ``--site`` gives the schema of a
site file: the same keys with nothing required (a site file gives only defaults).

What an editor cannot know from it: ``!secret`` is a custom YAML tag (tell the editor:
``yaml.customTags: ["!secret scalar"]``), and a ``${NAME}`` reference in a number field
looks like text to it; ``agent validate`` is the judge.
"""

from __future__ import annotations

from typing import Any

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _drop_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_required(v) for k, v in node.items()
                if k != "required" or not isinstance(v, list)}
    if isinstance(node, list):
        return [_drop_required(v) for v in node]
    return node


def provisioning_schema(site: bool = False) -> dict[str, Any]:
    """The provisioning file's JSON Schema; with ``site``, nothing is required."""
    from agent.settings.schema import AgentConfig

    schema = AgentConfig.model_json_schema(mode="validation")
    if site:
        schema = _drop_required(schema)
        schema["title"] = "polelink site file"
    else:
        schema["title"] = "polelink provisioning file"
    return {"$schema": SCHEMA_DIALECT, **schema}
