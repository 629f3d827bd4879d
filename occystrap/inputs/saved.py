"""Images in the docker-save layout: tarballs, extracted and shared directories.

One reader for a `docker save` manifest.json (occystrap's, docker's before
25, skopeo's docker-archive) and for the shared directory's catalog.json,
whose manifest files have the same shape. Layers here are uncompressed
tars, so the stored bytes must hash to the config's diff_id.
"""

import dataclasses
import re

from occystrap import dockersave, layout, safefile, store
from occystrap.digest import Digest
from occystrap.errors import OccystrapError
from occystrap.inputs.offline import (
    INCONSISTENT, MISSING, Reader, SourceImage, StoredLayer, safe_name)
from occystrap.manifest import MAX_MANIFEST_SIZE, PLAIN_LAYER_TYPES

_CONFIG_NAME = re.compile(r"^([a-f0-9]{64})\.json\Z")
# Legacy v1 layer metadata; skopeo writes it in directories of its own.
_LEGACY = re.compile(r"^[a-f0-9]{64}/(VERSION|json)\Z")
_LAYER_TYPE = PLAIN_LAYER_TYPES[0]


def scan_docker_save(reader: Reader) -> list[SourceImage]:
    """A tarball or single-image directory: one manifest.json."""
    reader.used.add(dockersave.REPOSITORIES)
    reader.used.update(n for n in reader.files.names() if _LEGACY.match(n))
    return scan_manifest_file(reader, dockersave.MANIFEST)


def scan_shared(reader: Reader) -> list[SourceImage]:
    """A shared directory: catalog.json naming one manifest file a tag."""
    data = reader.load(store.CATALOG, MAX_MANIFEST_SIZE)
    if data is None:
        return []
    try:
        catalog = safefile.loads(data)
        entries = [(repo, tag, name) for repo, tags in catalog.items()
                   for tag, name in tags.items()]
    except (ValueError, UnicodeDecodeError, AttributeError):
        reader.note(store.CATALOG, INCONSISTENT,
                    "not an occystrap catalog (repository -> tag -> "
                    "manifest file)")
        return []
    images: list[SourceImage] = []
    for repository, tag, name in sorted(entries, key=str):
        label = f"{repository}@{tag}" if ":" in str(tag) \
            else f"{repository}:{tag}"
        file = safe_name(name)
        if file is None or "/" in file:
            reader.note(store.CATALOG, INCONSISTENT,
                        f"{label} names {name!r}, which is not a manifest "
                        "file name", label)
            continue
        if file not in reader.files.names():
            reader.note(store.CATALOG, MISSING,
                        f"{label} names {file}, which is not in the "
                        "directory", label)
            continue
        found = scan_manifest_file(reader, file, label)
        for image in found:
            if not _files_as(image, repository, tag):
                reader.note(file, INCONSISTENT,
                            f"catalog.json files it as {label}, but it "
                            f"names {', '.join(image.names) or 'no tag'}",
                            label)
        images += [image if image.names else _named(image, label)
                   for image in found]
    return images


def scan_manifest_file(reader: Reader, name: str,
                       label: str | None = None) -> list[SourceImage]:
    data = reader.load(name, MAX_MANIFEST_SIZE, label)
    if data is None:
        return []
    try:
        entries = safefile.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        reader.note(name, INCONSISTENT, f"not valid JSON ({e})", label)
        return []
    if not isinstance(entries, list) \
            or not all(isinstance(e, dict) for e in entries):
        reader.note(name, INCONSISTENT, "not a docker-save manifest (a "
                    "list of Config, RepoTags and Layers)", label)
        return []
    images = []
    for number, entry in enumerate(entries):
        image = _entry(reader, name, entry, label or f"{name} entry "
                       f"{number + 1}")
        if image is not None:
            images.append(image)
    return images


def _entry(reader: Reader, manifest: str, entry: dict,
           fallback: str) -> SourceImage | None:
    tags = entry.get("RepoTags") or []
    names = tuple(t for t in tags if isinstance(t, str)) \
        if isinstance(tags, list) else ()
    label = names[0] if names else fallback
    config_path = safe_name(entry.get("Config"))
    digest = config_digest(config_path)
    if config_path is None or digest is None:
        reader.note(manifest, INCONSISTENT,
                    f"names no usable config file ({entry.get('Config')!r})",
                    label)
        return None
    config, parsed, created = reader.config(config_path, digest, label)
    paths = entry.get("Layers")
    if not isinstance(paths, list):
        reader.note(manifest, INCONSISTENT, "has no Layers list", label)
        return None
    diff_ids = parsed.diff_ids if parsed else None
    if diff_ids is not None and len(diff_ids) != len(paths):
        reader.note(manifest, INCONSISTENT,
                    f"lists {len(paths)} layers but config {config_path} "
                    f"lists {len(diff_ids)} diff_ids", label)
        diff_ids = None
    layers = []
    sizes = reader.files.names()
    for index, raw in enumerate(paths):
        path = safe_name(raw)
        if path is None:
            reader.note(manifest, INCONSISTENT,
                        f"layer {index + 1} has no usable path ({raw!r})",
                        label)
            return None
        diff_id = diff_ids[index] if diff_ids else None
        _note_legacy(reader, path)
        # The stored bytes are the uncompressed tar: they hash to the
        # diff_id, unless the path names a blob (Docker 25+) by digest.
        layers.append(StoredLayer(
            path, blob_digest(path) or diff_id, diff_id, sizes.get(path),
            _LAYER_TYPE))
    return SourceImage(
        names=names, platform=parsed.platform if parsed else None,
        config_digest=digest, config_path=config_path, config=config,
        created=created, layers=tuple(layers))


def config_digest(path: str | None) -> Digest | None:
    """The digest a config's file name promises: `<hex>.json` in a docker
    save, `blobs/sha256/<hex>` in Docker 25+ and bundles."""
    if path is None:
        return None
    match = _CONFIG_NAME.match(path)
    if match:
        return Digest("sha256", match.group(1))
    return blob_digest(path)


def blob_digest(path: str | None) -> Digest | None:
    """The digest a `blobs/<algorithm>/<hex>` path names, if it is one."""
    try:
        return layout.blob_digest(path)
    except OccystrapError:
        return None


def _note_legacy(reader: Reader, layer_path: str) -> None:
    """The legacy per-layer files beside a layer.tar belong to it."""
    folder = layer_path.rpartition("/")[0]
    if folder:
        reader.used.update(f"{folder}/{name}" for name in ("VERSION", "json"))


def _named(image: SourceImage, label: str) -> SourceImage:
    return dataclasses.replace(image, names=(label,))


def _files_as(image: SourceImage, repository: str, tag: str) -> bool:
    """Does the image's name fit the catalog's repository and tag?"""
    wanted = {f"{name}:{tag}" for name in store.candidates(repository)}
    return any(n in wanted or n.endswith(tuple(f"/{w}" for w in wanted))
               for n in image.names)
