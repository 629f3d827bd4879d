"""Images in an OCI image layout: bundles, Docker 25+ saves, skopeo's oci:.

index.json names manifests (or indexes of them) stored as blobs by
digest, exactly as a registry served them; a docker manifest.json beside
it, when there is one (bundles and Docker 25+ saves), must describe the
same images, since it is what `docker load` reads instead.
"""

import dataclasses

from occystrap import layout, safefile
from occystrap.digest import Digest
from occystrap.errors import ManifestError
from occystrap.inputs.offline import (
    INCONSISTENT, MISSING, Reader, SourceImage, StoredLayer, safe_name)
from occystrap.inputs.saved import blob_digest, config_digest
from occystrap.manifest import (
    MAX_MANIFEST_SIZE, OCI_INDEX, Descriptor, ImageIndex, ImageManifest,
    check_layers, parse_manifest)


def scan_layout(reader: Reader) -> list[SourceImage]:
    reader.used.update((layout.DOCKER_MANIFEST, layout.REPOSITORIES,
                        layout.LOCK))
    _check_layout_file(reader)
    data = reader.load(layout.INDEX, MAX_MANIFEST_SIZE)
    if data is None:
        return []
    try:
        index = parse_manifest(data, OCI_INDEX)
    except ManifestError as e:
        reader.note(layout.INDEX, INCONSISTENT, str(e))
        return []
    if not isinstance(index, ImageIndex):
        reader.note(layout.INDEX, INCONSISTENT, "is a manifest, not an index")
        return []
    images: list[SourceImage] = []
    tops: list[tuple[str, list[SourceImage]]] = []
    for descriptor in index.manifests:
        names = _names(descriptor)
        label = names[0] if names else f"image {descriptor.digest}"
        found = _images(reader, descriptor, names, label)
        tops.append((label, found))
        images += found
    if layout.DOCKER_MANIFEST in reader.files.names():
        images = _docker_side(reader, images, tops)
    return images


def _check_layout_file(reader: Reader) -> None:
    data = reader.load(layout.OCI_LAYOUT, 4096)
    if data is None:
        return
    try:
        version = safefile.loads(data).get("imageLayoutVersion")
    except (ValueError, UnicodeDecodeError, AttributeError):
        version = None
    if not isinstance(version, str):
        reader.note(layout.OCI_LAYOUT, INCONSISTENT,
                    "has no imageLayoutVersion")


def _names(descriptor: Descriptor) -> tuple[str, ...]:
    """containerd's full name, else the OCI tag (all skopeo writes)."""
    annotations = descriptor.annotations
    for key in (layout.IMAGE_NAME, layout.REF_NAME):
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return (value,)
    return ()


def _blob(reader: Reader, descriptor: Descriptor, label: str,
          limit: int) -> bytes | None:
    """A metadata blob, checked against its descriptor's digest and size."""
    path = layout.blob_path(descriptor.digest)
    data = reader.load(path, limit, label, descriptor.digest)
    if data is not None and len(data) != descriptor.size:
        reader.note(path, INCONSISTENT,
                    f"is {len(data)} bytes but its descriptor says "
                    f"{descriptor.size}", label)
    return data


def _images(reader: Reader, descriptor: Descriptor, names: tuple[str, ...],
            label: str, index: Digest | None = None) -> list[SourceImage]:
    data = _blob(reader, descriptor, label, MAX_MANIFEST_SIZE)
    if data is None:
        return []
    path = layout.blob_path(descriptor.digest)
    try:
        parsed = parse_manifest(data, descriptor.media_type or None)
    except ManifestError as e:
        reader.note(path, INCONSISTENT, str(e), label)
        return []
    if isinstance(parsed, ImageManifest):
        image = _image(reader, descriptor, parsed, data, names, label, index)
        return [image] if image else []
    if index is not None:
        reader.note(path, INCONSISTENT, "an index inside an index", label)
        return []
    return _platforms(reader, descriptor, parsed, names, label)


def _platforms(reader: Reader, descriptor: Descriptor, index: ImageIndex,
               names: tuple[str, ...], label: str) -> list[SourceImage]:
    """An index kept whole: each platform image it holds.

    A save from docker keeps only the platforms it had, so a missing
    platform is a problem only when none at all is there.
    """
    present = reader.files.names()
    runnable = index.images()
    images, absent = [], []
    for child in runnable:
        if layout.blob_path(child.digest) not in present:
            absent.append(child)
            continue
        images += _images(reader, child, names,
                          f"{label} ({child.platform})", descriptor.digest)
    for other in index.manifests:
        if other not in runnable:
            _mark_attached(reader, other)
    if absent and len(absent) == len(runnable):
        reader.note(layout.blob_path(absent[0].digest), MISSING,
                    "no platform image of this index is in the source",
                    label)
    return images


def _mark_attached(reader: Reader, descriptor: Descriptor) -> None:
    """Attestations and the like ride along: theirs are not unknown files."""
    path = layout.blob_path(descriptor.digest)
    if path not in reader.files.names():
        return
    reader.used.add(path)
    try:
        doc = safefile.loads(reader.files.read(path, MAX_MANIFEST_SIZE))
        parts = [doc.get("config")] + list(doc.get("layers") or [])
        reader.used.update(layout.blob_path(Descriptor.parse(p, "").digest)
                           for p in parts if p)
    except (ValueError, UnicodeDecodeError, AttributeError, ManifestError,
            OSError, TypeError):
        pass


def _image(reader: Reader, descriptor: Descriptor, manifest: ImageManifest,
           data: bytes, names: tuple[str, ...], label: str,
           index: Digest | None) -> SourceImage | None:
    path = layout.blob_path(manifest.config.digest)
    config, parsed, created = reader.config(path, manifest.config.digest,
                                            label)
    if config is not None and len(config) != manifest.config.size:
        reader.note(path, INCONSISTENT,
                    f"is {len(config)} bytes but the manifest says "
                    f"{manifest.config.size}", label)
    diff_ids = parsed.diff_ids if parsed else None
    if parsed is not None:
        try:
            check_layers(manifest, parsed, label)
        except ManifestError as e:
            reader.note(layout.blob_path(descriptor.digest), INCONSISTENT,
                        str(e), label)
            diff_ids = None
    layers = tuple(
        StoredLayer(layout.blob_path(d.digest), d.digest,
                    diff_ids[i] if diff_ids else None, d.size, d.media_type,
                    size_promised=True)
        for i, d in enumerate(manifest.layers))
    return SourceImage(
        names=names,
        platform=parsed.platform if parsed else descriptor.platform,
        config_digest=manifest.config.digest, config_path=path,
        config=config, created=created, layers=layers,
        manifest_digest=descriptor.digest,
        manifest_path=layout.blob_path(descriptor.digest),
        manifest_media_type=manifest.media_type, manifest=data,
        index_digest=index)


def _docker_side(reader: Reader, images: list[SourceImage],
                 tops: list[tuple[str, list[SourceImage]]]
                 ) -> list[SourceImage]:
    """Check manifest.json against index.json; take its RepoTags as names."""
    name = layout.DOCKER_MANIFEST
    data = reader.load(name, MAX_MANIFEST_SIZE)
    if data is None:
        return images
    try:
        entries = safefile.loads(data)
        assert isinstance(entries, list)
        assert all(isinstance(e, dict) for e in entries)
    except (ValueError, UnicodeDecodeError, AssertionError):
        reader.note(name, INCONSISTENT, "not a docker-save manifest")
        return images
    tags: dict[Digest, list[str]] = {}
    listed: set[Digest] = set()
    for number, entry in enumerate(entries):
        digest = config_digest(safe_name(entry.get("Config")))
        repo_tags = [t for t in entry.get("RepoTags") or []
                     if isinstance(t, str)]
        label = repo_tags[0] if repo_tags else f"{name} entry {number + 1}"
        matches = [i for i in images if i.config_digest == digest]
        if digest is None or not matches:
            reader.note(name, INCONSISTENT,
                        f"lists config {entry.get('Config')}, which no "
                        f"image in {layout.INDEX} has", label)
            continue
        listed.add(digest)
        layers = [blob_digest(safe_name(p)) for p in entry.get("Layers") or []]
        if not any(layers == [layer.digest for layer in m.layers]
                   for m in matches):
            reader.note(name, INCONSISTENT,
                        f"lists other layers than the manifest of config "
                        f"{digest} does", label)
        tags.setdefault(digest, []).extend(repo_tags)
    for label, found in tops:
        if found and not any(i.config_digest in listed for i in found):
            reader.note(name, INCONSISTENT,
                        f"does not list {label}, which {layout.INDEX} "
                        "names; docker load would not see it", label)
    return [_with_tags(image, tags.get(image.config_digest, []))
            for image in images]


def _with_tags(image: SourceImage, repo_tags: list[str]) -> SourceImage:
    extra = tuple(t for t in dict.fromkeys(repo_tags) if t not in image.names)
    if not extra:
        return image
    return dataclasses.replace(image, names=image.names + extra)
