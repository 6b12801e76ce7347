"""The audit-spec reference page, rendered from the JSON schema that ``traits schema`` prints.

Run as a script to print the Markdown (``python docs/gen_spec_reference.py``); as an MkDocs hook
(``hooks:`` in mkdocs.yml) it adds the page ``specs/reference.md`` to the site at build time, so the
reference can never drift from :func:`traits.spec.spec_json_schema`. Nothing is written into ``docs/``.
"""

from __future__ import annotations

import json

#: Where the generated page lives in the site (the nav names it).
PAGE = "specs/reference.md"

INTRO = """# Spec reference

Every field of an audit spec, generated from the JSON schema at build time (`traits schema` prints the same
schema; point your editor's YAML/JSON support at it for completion). Unknown keys are errors; a field without a
default is required. Relative paths resolve against the spec's own directory, and `${TRAITS_DATA}` in a path
expands to that environment variable. Worked examples: [Writing a spec](index.md).
"""


def _anchor(name: str) -> str:
    return name.lower()


def _type(node: dict) -> str:
    """A short, human type for one schema node (references become links to their table)."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in node:
        parts = [_type(n) for n in node["anyOf"]]
        return " or ".join(p for p in parts if p != "null") + (" or null" if "null" in parts else "")
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    kind = node.get("type")
    if kind == "array":
        items = node.get("items")
        return f"list of {_type(items)}" if items else "list"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"mapping to {_type(node['additionalProperties'])}"
    if kind == "string" and node.get("format"):
        return node["format"]
    if isinstance(kind, list):
        return " or ".join(kind)
    return kind or "any"


def _bounds(node: dict) -> str:
    words = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in node:
            words.append(f"{sign} {node[key]}")
    for sub in node.get("anyOf", []):
        words.extend(w for w in [_bounds(sub)] if w)
    return ", ".join(words)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _meaning(node: dict, defs: dict) -> str:
    """The field's description, else that of the definition it refers to."""
    if node.get("description"):
        return node["description"]
    for ref in _refs(node)[:1]:
        return defs.get(ref, {}).get("description", "")
    return ""


def _table(model: dict, defs: dict) -> list[str]:
    props = model.get("properties", {})
    required = set(model.get("required", []))
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, node in props.items():
        if name in required:
            default = "**required**"
        elif "default" in node:
            default = f"`{_cell(json.dumps(node['default'], ensure_ascii=False))}`"
        else:
            default = "—"
        bounds = _bounds(node)
        kind = _type(node) + (f" ({bounds})" if bounds else "")
        lines.append(f"| `{name}` | {_cell(kind)} | {default} | {_cell(_meaning(node, defs))} |")
    return lines


def _order(schema: dict) -> list[str]:
    """Definitions in the order a reader meets them: breadth first from the top-level spec."""
    defs = schema.get("$defs", {})
    seen: list[str] = []
    queue = [{k: v for k, v in schema.items() if k != "$defs"}]
    while queue:
        node = queue.pop(0)
        for ref in _refs(node):
            if ref in defs and ref not in seen:
                seen.append(ref)
                queue.append(defs[ref])
    return seen + sorted(set(defs) - set(seen))


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        for value in node.values():
            out.extend(_refs(value))
        return out
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def render(schema: dict) -> str:
    """The reference page for one spec schema: the top level, each definition, then each adapter's options."""
    defs = schema.get("$defs", {})
    out = [INTRO, f"## {schema.get('title', 'Audit spec')} (top level)", "", schema.get("description", ""), ""]
    out += _table(schema, schema.get("$defs", {}))
    for name in _order(schema):
        model = defs[name]
        out += ["", f"## {name}", "", _cell(model.get("description", "")), ""]
        out += _table(model, defs) if model.get("properties") else [f"Type: {_cell(_type(model))}."]
    options = schema.get("x-traits-model-options", {})
    if options:
        out += ["", "## Model options per adapter", "",
                "`model.options` (and `model.hyper` for the CGCNNs) is checked by the adapter that "
                "`model.architecture` names; its schema is under `x-traits-model-options` in `traits schema`.", ""]
        for adapter, model in options.items():
            out += [f"### `{adapter}`", "", _cell(model.get("description", "")), ""]
            out += _table(model, defs) if model.get("properties") else ["No options."]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def markdown() -> str:
    from traits.spec import spec_json_schema

    return render(spec_json_schema())


def on_files(files, config):
    """MkDocs hook: add the generated reference page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=markdown()))
    return files


if __name__ == "__main__":
    print(markdown(), end="")
