"""The `docker save` layout (image spec v1.2), shared by writers and readers.

Layers live at `<diff_id hex>/layer.tar`, so identical layers of different
images share one path: that is what lets a shared directory store them once.
"""

import json
from typing import Iterator

from occystrap.digest import Digest
from occystrap.image import Image

MANIFEST = "manifest.json"
REPOSITORIES = "repositories"
LAYER_TAR = "layer.tar"
# Legacy per-layer files, still read by old docker versions.
LAYER_VERSION = b"1.0"


def layer_dir(diff_id: Digest) -> str:
    return diff_id.hex


def layer_path(diff_id: Digest) -> str:
    return f"{diff_id.hex}/{LAYER_TAR}"


def config_name(config_digest: Digest) -> str:
    return f"{config_digest.hex}.json"


def manifest_entry(image: Image) -> dict:
    return {
        "Config": config_name(image.config_digest),
        "RepoTags": [image.repo_tag] if image.repo_tag else [],
        "Layers": [layer_path(layer.diff_id) for layer in image.layers],
    }


def manifest_json(*images: Image) -> bytes:
    return dumps([manifest_entry(image) for image in images])


def legacy_layer_json(image: Image, index: int) -> bytes:
    layer = image.layers[index]
    doc = {"id": layer.diff_id.hex, "created": "1970-01-01T00:00:00Z"}
    if index:
        doc["parent"] = image.layers[index - 1].diff_id.hex
    return dumps(doc)


def legacy_layer_files(image: Image) -> Iterator[tuple[str, bytes]]:
    """Each distinct layer's legacy `json`, as (path, content).

    An image may list one layer twice; its directory is written once.
    """
    described = set()
    for index, layer in enumerate(image.layers):
        if layer.diff_id not in described:
            described.add(layer.diff_id)
            yield (f"{layer_dir(layer.diff_id)}/json",
                   legacy_layer_json(image, index))


def repositories_json(*images: Image) -> bytes | None:
    doc: dict[str, dict[str, str]] = {}
    for image in images:
        # A name without a tag (from a foreign manifest) has no entry.
        if image.repo_tag and image.layers \
                and ":" in image.repo_tag.rpartition("/")[2]:
            name, tag = image.repo_tag.rsplit(":", 1)
            doc.setdefault(name, {})[tag] = image.layers[-1].diff_id.hex
    return dumps(doc) if doc else None


def dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()
