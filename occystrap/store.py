"""The extracted-directory layout: names and catalog, for writers and readers.

A directory holds either one image (`manifest.json`, exactly the contents of
a `docker save` tarball) or is shared by many images that store common
layers once (fetch-to-extracted --use-unique-names):
`manifest-<repository with / as _>-<tag>.json` per image, and `catalog.json`
mapping each repository to its tags and each tag to its manifest file.
"""

import json
import os
import re
import stat
from pathlib import Path

from occystrap import dockersave, safefile
from occystrap.digest import Digest
from occystrap.errors import StoreError
from occystrap.fsutil import file_digest, locked, write_atomic
from occystrap.manifest import MAX_MANIFEST_SIZE

CATALOG = "catalog.json"
# Hidden, so the seed's `cd DIR; tar -cf ../x.tar *` leaves it out.
LOCK = ".occystrap.lock"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.@:-]+\Z")

Catalog = dict[str, dict[str, str]]


def shared_manifest_name(repository: str, tag: str, attempt: int = 0) -> str:
    suffix = f"-{attempt}" if attempt else ""
    tag = tag.replace(":", "_")  # digests; ':' is unwelcome on FAT media
    return f"manifest-{repository.replace('/', '_')}-{tag}{suffix}.json"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Layers whose content is known good, with the identity their file
        # had then: an image sharing a layer with one before it in the same
        # run then costs a stat, not a re-read of the whole layer.
        self._verified: dict[Digest, tuple[int, ...]] = {}

    def layer_tar(self, diff_id: Digest) -> Path:
        return self.root / dockersave.layer_path(diff_id)

    def config_file(self, digest: Digest) -> Path:
        return self.root / dockersave.config_name(digest)

    def has_layer(self, diff_id: Digest) -> bool:
        """A layer counts as present only if its content hashes right.

        Hashed once per Store; again only if the file has been replaced or
        changed since (another inode, size, mtime or ctime).
        """
        path = self.layer_tar(diff_id)
        before = _identity(path)
        # A FIFO, a device or a link out of the directory is no layer:
        # hashing it would hang, never end, or trust what lies elsewhere.
        if before is None or not stat.S_ISREG(before[-1]) \
                or not safefile.inside(path, self.root):
            return False
        if self._verified.get(diff_id) == before:
            return True
        if file_digest(path, diff_id.algorithm) != diff_id:
            return False
        # Remembered only if nothing changed the file while it was read.
        if _identity(path) == before:
            self._verified[diff_id] = before
        return True

    def layer_verified(self, diff_id: Digest) -> None:
        """Note that the layer file now holds verified content.

        For a writer that has just moved checked bytes into place.
        """
        identity = _identity(self.layer_tar(diff_id))
        if identity is not None:
            self._verified[diff_id] = identity

    @property
    def has_catalog(self) -> bool:
        """A shared directory that holds at least one image."""
        return (self.root / CATALOG).exists()

    @property
    def is_shared(self) -> bool:
        """A shared directory, maybe still receiving its first image."""
        return self.has_catalog or (self.root / LOCK).exists()

    @property
    def is_single(self) -> bool:
        return (self.root / dockersave.MANIFEST).exists()

    def read_catalog(self) -> Catalog:
        path = self.root / CATALOG
        try:
            doc = safefile.load_json(path, MAX_MANIFEST_SIZE, self.root)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise StoreError(f"{path} is unreadable or damaged: {e}") \
                from None
        valid = isinstance(doc, dict) and all(
            isinstance(tags, dict) and all(
                isinstance(t, str) and isinstance(m, str)
                and _SAFE_NAME.match(m) for t, m in tags.items())
            for tags in doc.values())
        if not valid:
            raise StoreError(f"{path} is not an occystrap catalog")
        return doc

    def locked(self):
        """The directory's lock: cataloguing, and removing layers, take it."""
        return locked(self.root / LOCK)

    def used_layers(self) -> set[str]:
        """The layer directories that catalogued images list.

        Call under the lock. StoreError if a manifest cannot be read:
        then nothing can safely be removed.
        """
        used: set[str] = set()
        for tags in self.read_catalog().values():
            for name in tags.values():
                layers = single_manifest(self.root / name, self.root) \
                    .get("Layers")
                if isinstance(layers, list):
                    used.update(str(p).split("/")[0] for p in layers)
        return used

    def add_image(self, repository: str, tag: str, manifest: bytes,
                  layers: tuple[Digest, ...] = ()) -> str:
        """Write an image's manifest under its own name; catalog it.

        Under a lock, so concurrent fetches into one directory all land.
        Each of `layers` must still be there: a failed run removes the
        layers it wrote unless a catalogued image uses them, and this run
        may have found one of those present before it went.
        """
        with self.locked():
            for diff_id in layers:
                if not self.layer_tar(diff_id).is_file():
                    raise StoreError(
                        f"layer {diff_id.short()} left {self.root} while "
                        "this image was fetched (another fetch into it "
                        "failed and removed it); run the fetch again")
            catalog = self.read_catalog()
            taken = {name: (repo, t) for repo, tags in catalog.items()
                     for t, name in tags.items()}
            attempt = 0
            name = shared_manifest_name(repository, tag)
            # Repositories 'a/b' and 'a_b' would share a name: keep both.
            while taken.get(name, (repository, tag)) != (repository, tag):
                attempt += 1
                name = shared_manifest_name(repository, tag, attempt)
            write_atomic(self.root / name, manifest)
            catalog.setdefault(repository, {})[tag] = name
            write_atomic(self.root / CATALOG,
                         json.dumps(catalog, indent=2, sort_keys=True)
                         .encode() + b"\n")
        return name

    def manifest_for(self, repository: str, tag: str) -> Path:
        """The manifest file of repository:tag, from the catalog or alone."""
        if not self.root.is_dir():
            raise StoreError(f"{self.root} is not a directory")
        if self.has_catalog:
            catalog = self.read_catalog()
            for name in candidates(repository):
                if tag in catalog.get(name, {}):
                    path = self.root / catalog[name][tag]
                    self._check_names(path, repository, tag)
                    return path
            held = "; ".join(
                f"{repo}: {', '.join(sorted(tags))}"
                for repo, tags in sorted(catalog.items())) or "nothing"
            raise StoreError(
                f"{repository}:{tag} is not in {self.root / CATALOG}; it "
                f"holds {held}")
        if self.is_single:
            path = self.root / dockersave.MANIFEST
            tags = single_repo_tags(path, self.root)
            if names_fit(tags, repository, tag):
                return path
            raise StoreError(
                f"{self.root} holds {', '.join(tags) or 'an untagged image'}"
                f", not {repository}:{tag}")
        raise StoreError(
            f"{self.root} is not an occystrap directory (no {CATALOG} or "
            f"{dockersave.MANIFEST}); give the directory fetch-to-extracted "
            "wrote")

    def _check_names(self, path: Path, repository: str, tag: str) -> None:
        """The manifest file names the image the catalog files it as.

        Its RepoTags become the name the tarball gives the image: a
        tampered manifest must not rename it.
        """
        tags = single_repo_tags(path, self.root)
        if tags and not names_fit(tags, repository, tag):
            raise StoreError(
                f"{path} names {', '.join(tags)}, but {self.root / CATALOG} "
                f"files it as {repository}:{tag}: the directory has been "
                "tampered with; fetch the image again")


def names_fit(tags: list[str], repository: str, tag: str) -> bool:
    """Does one of the names docker gives an image mean repository:tag?"""
    wanted = {f"{n}:{tag}" for n in candidates(repository)}
    return any(t in wanted or any(t.endswith("/" + w) for w in wanted)
               for t in tags)


def single_manifest(path: Path, root: Path | None = None) -> dict:
    """The one entry of a docker-save manifest.json."""
    try:
        doc = safefile.load_json(path, MAX_MANIFEST_SIZE, root)
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} is unreadable or damaged: {e}") from None
    if not (isinstance(doc, list) and len(doc) == 1
            and isinstance(doc[0], dict)):
        raise StoreError(f"{path} does not describe exactly one image")
    return doc[0]


def single_repo_tags(path: Path, root: Path | None = None) -> list[str]:
    tags = single_manifest(path, root).get("RepoTags") or []
    if not isinstance(tags, list):
        raise StoreError(f"{path} has a RepoTags that is not a list")
    return [t for t in tags if isinstance(t, str)]


def _identity(path: Path) -> tuple[int, ...] | None:
    """What changes whenever a file is replaced or written to."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_mode)


def candidates(repository: str) -> list[str]:
    """Docker Hub's official images are stored as library/NAME."""
    names = [repository]
    if "/" not in repository:
        names.append(f"library/{repository}")
    elif repository.startswith("library/"):
        names.append(repository[len("library/"):])
    return names
