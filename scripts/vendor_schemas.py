"""Vendor upstream schemas into schemas/<project>/ as structure only.

The tests validate rendered objects against the schemas of the projects fedtwin builds on (the Argo
Workflows JSON schema, Karmada's policy CRDs, KubeOVN's CRDs). This script copies the upstream files
given as arguments into the repository and keeps only what validation needs: types, properties,
required fields, enums, patterns, formats, items, additionalProperties, defaults, references and the
`x-kubernetes-*` markers. Upstream prose (`description`, `title`, `example(s)`, `$comment`,
`externalDocs`) is dropped wherever it is a schema keyword; a property that happens to be *named*
`description` (Argo's `Parameter.description`) is structure and stays.

    python scripts/vendor_schemas.py argo-workflows ~/src/argo-workflows/api/jsonschema/schema.json
    python scripts/vendor_schemas.py karmada ~/src/karmada/charts/karmada/_crds/bases/policy/policy.*.yaml
    python scripts/vendor_schemas.py kube-ovn ~/src/kube-ovn/charts/kube-ovn-v2/crds/kube-ovn-crd.yaml

Each file is written to schemas/<project>/<its file name> (`--out` for another root); a `.json` file
must be a JSON schema, a `.yaml`/`.yml` file a stream of CustomResourceDefinitions. Record the new
upstream version in schemas/README.md. Exit 2 on bad input, with one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PROSE = frozenset({"description", "title", "example", "examples", "$comment", "externalDocs"})
# Keywords whose value maps names to subschemas (the names are data, never keywords).
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions", "$defs", "dependentSchemas"})
# Keywords whose value is one subschema (or a boolean).
SCHEMA_ONE = frozenset(
    {"items", "additionalProperties", "additionalItems", "not", "contains", "propertyNames", "if", "then",
     "else", "unevaluatedProperties", "unevaluatedItems"}
)
# Keywords whose value is a list of subschemas.
SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
PROJECT = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class VendorError(ValueError):
    """An input file that is not what its extension says."""


def structure(node: Any) -> Any:
    """A JSON/OpenAPI schema node without its prose keywords (recursively)."""
    if isinstance(node, list):  # `items` as a list of schemas (draft 4 tuples)
        return [structure(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in PROSE:
            continue
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: structure(sub) for name, sub in value.items()}
        elif key in SCHEMA_ONE:
            out[key] = structure(value)
        elif key in SCHEMA_LIST and isinstance(value, list):
            out[key] = [structure(sub) for sub in value]
        else:  # type, required, enum, pattern, format, default, $ref, x-kubernetes-*, limits: data
            out[key] = value
    return out


def without_descriptions(node: Any) -> Any:
    """Outside a schema (CRD printer columns, ...): drop every `description` key."""
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k not in PROSE}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def crd_structure(crd: dict[str, Any]) -> dict[str, Any]:
    """A CustomResourceDefinition with structure-only schemas and no prose elsewhere."""
    versions = crd.get("spec", {}).get("versions", [])
    schemas = [v.get("schema", {}).get("openAPIV3Schema") for v in versions]
    out = without_descriptions({**crd, "spec": {**crd["spec"], "versions": []}})
    for version, schema in zip(versions, schemas, strict=True):
        version = without_descriptions({k: v for k, v in version.items() if k != "schema"})
        if schema is not None:
            version["schema"] = {"openAPIV3Schema": structure(schema)}
        out["spec"]["versions"].append(version)
    return out


def vendor_json(text: str, source: Path) -> str:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno}"
        raise VendorError(f"{source}: not valid JSON ({where}); give the upstream schema.json") from exc
    if not isinstance(schema, dict):
        raise VendorError(f"{source}: a JSON schema is an object, got {type(schema).__name__}")
    return json.dumps(structure(schema), indent=1, ensure_ascii=False) + "\n"


def vendor_yaml(text: str, source: Path, upstream: str) -> str:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        where = str(exc).splitlines()[0]
        raise VendorError(f"{source}: not valid YAML ({where}); give the upstream CRD file") from exc
    if not docs:
        raise VendorError(f"{source}: holds no objects; give the upstream CRD file")
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise VendorError(f"{source}: expected only CustomResourceDefinitions, found {kind}")
    header = (
        f"# Structure only (descriptions stripped) of {upstream}, written by\n"
        "# scripts/vendor_schemas.py; see schemas/README.md for source, version and licence.\n"
    )
    crds = [crd_structure(d) for d in docs]
    body = yaml.safe_dump_all(crds, sort_keys=False, explicit_start=True, width=1000)
    return header + body


def vendor(project: str, sources: list[Path], out_root: Path) -> list[Path]:
    """Write the structure-only copy of each source to out_root/project/; return the paths written."""
    if not PROJECT.match(project):
        raise VendorError(f"project {project!r} is not a lower-case directory name (e.g. argo-workflows)")
    written = []
    for source in sources:
        if not source.is_file():
            raise VendorError(f"{source}: no such file")
        text = source.read_text(encoding="utf-8")
        if source.suffix == ".json":
            content = vendor_json(text, source)
        elif source.suffix in {".yaml", ".yml"}:
            content = vendor_yaml(text, source, source.name)
        else:
            raise VendorError(f"{source}: expected a .json schema or a .yaml CRD file")
        target = out_root / project / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vendor upstream schemas as structure only (no prose)")
    parser.add_argument("project", help="directory under schemas/ (argo-workflows, karmada, kube-ovn)")
    parser.add_argument("files", nargs="+", type=Path, help="upstream schema.json or CRD .yaml files")
    parser.add_argument("--out", type=Path, default=REPO / "schemas", help="root (default schemas/)")
    args = parser.parse_args(argv)
    try:
        written = vendor(args.project, args.files, args.out)
    except VendorError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
