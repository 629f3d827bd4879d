"""The bill of materials: what `inspect --json` prints, what `verify
--expect` compares a source with.

The shape (schema 1) is stable; fields may be added, never renamed or
removed without a new schema number:

    {"schema": 1,
     "source": {"path": ..., "format": "oci-layout" | "docker-save" |
                "shared-directory", "container": "directory" | "tar"},
     "images": [{"names": [...], "platform": "linux/amd64",
                 "manifest_digest": ... | null, "index_digest": ... | null,
                 "config_digest": ..., "created": ... | null,
                 "size": ... | null,
                 "layers": [{"digest": ..., "diff_id": ..., "size": ...,
                             "media_type": ...}]}]}
"""

from pathlib import Path
from typing import Any

from occystrap import safefile
from occystrap.errors import StoreError
from occystrap.inputs.offline import MISSING, Finding, SourceImage
from occystrap.sources import Source

SCHEMA = 1
ADDED = "added"
SWAPPED = "swapped"


def describe(source: Source, images: tuple[SourceImage, ...]
             ) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "source": {"path": str(source.path), "format": source.format,
                   "container": source.container},
        "images": [image_json(image) for image in images],
    }


def image_json(image: SourceImage) -> dict[str, Any]:
    return {
        "names": list(image.names),
        "platform": _text(image.platform),
        "manifest_digest": _text(image.manifest_digest),
        "index_digest": _text(image.index_digest),
        "config_digest": str(image.config_digest),
        "created": image.created,
        "size": image.size,
        "layers": [{"digest": _text(layer.digest),
                    "diff_id": _text(layer.diff_id),
                    "size": layer.size,
                    "media_type": layer.media_type}
                   for layer in image.layers],
    }


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def load(path: Path) -> list[dict[str, Any]]:
    """The images of a BOM file, checked to be one this version reads."""
    try:
        doc = safefile.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"cannot read the BOM {path}: {e}; write it with "
                         "occystrap inspect --json SOURCE > BOM.json") \
            from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA \
            or not isinstance(doc.get("images"), list) \
            or not all(isinstance(i, dict) and isinstance(i.get("names"),
                                                          list)
                       and isinstance(i.get("config_digest"), str)
                       for i in doc["images"]):
        raise StoreError(f"{path} is not a schema {SCHEMA} BOM; write it "
                         "with occystrap inspect --json SOURCE > BOM.json")
    return doc["images"]


def compare(expected: list[dict[str, Any]], images: tuple[SourceImage, ...],
            bom: str, where: str) -> list[Finding]:
    """Every image of the BOM is in the source with the same digests, and
    the source holds nothing else."""
    held = [image_json(image) for image in images]
    found = {key: image for image in held for key in _keys(image)}
    wanted = {key: image for image in expected for key in _keys(image)}
    findings = []
    for image in expected:
        matches = [found[key] for key in _keys(image) if key in found]
        label = _label(image)
        if not matches:
            findings.append(Finding(bom, MISSING, "the BOM lists it, the "
                                    "source does not hold it", label))
            continue
        other = next((m for m in matches if not _same(image, m)), None)
        if other is not None:
            findings.append(Finding(
                where, SWAPPED, f"the BOM says {_digests(image)}, the source "
                f"holds {_digests(other)}", label))
    for image in held:
        if not any(key in wanted for key in _keys(image)):
            findings.append(Finding(where, ADDED, "the source holds it, the "
                                    f"BOM {bom} does not list it",
                                    _label(image)))
    return findings


def _keys(image: dict[str, Any]) -> list[tuple[str, str]]:
    """A name and platform identify an image; unnamed, its digest does."""
    platform = str(image.get("platform"))
    names = [n for n in image.get("names") or [] if isinstance(n, str)]
    if not names:
        names = ["@" + str(image.get("manifest_digest")
                           or image.get("config_digest"))]
    return [(name, platform) for name in names]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("config_digest") != b.get("config_digest"):
        return False
    manifests = a.get("manifest_digest"), b.get("manifest_digest")
    return None in manifests or manifests[0] == manifests[1]


def _digests(image: dict[str, Any]) -> str:
    manifest = image.get("manifest_digest")
    return (f"manifest {manifest}, " if manifest else "") + \
        f"config {image.get('config_digest')}"


def _label(image: dict[str, Any]) -> str:
    names = image.get("names") or []
    name = names[0] if names else f"untagged image {_keys(image)[0][0][1:]}"
    return f"{name} ({image.get('platform')})"
