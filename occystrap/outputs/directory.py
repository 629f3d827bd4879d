"""Writes an image's docker-save elements into a directory.

Alone, a directory holds one image and is exactly an unpacked tarball.
Shared (--use-unique-names), it holds many images, each manifest under its
own name, and stores a layer they have in common once, by content.
"""

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterator

from occystrap import dockersave, safefile
from occystrap.errors import OutputError, StoreError
from occystrap.fsutil import (
    claim_temp, claim_temp_dir, create_lock, current_umask, output_errors,
    sweep_stale, write_atomic)
from occystrap.image import Flow, Image, Layer
from occystrap.outputs.expand import Expander
from occystrap.store import (
    LOCK, Store, single_manifest, single_repo_tags)

_LAYER_DIR = re.compile(r"[a-f0-9]{64}\Z")
_CONFIG_TEMP = re.compile(r"\.[a-f0-9]{64}\.json\.")


class DirectoryWriter:
    flow = Flow.LAYER
    wants_size_hints = False

    def __init__(self, path: Path, shared: bool,
                 expand: bool = False) -> None:
        self.path = path
        self._shared = shared
        self._expand = expand
        self._expander: Expander | None = None
        self._staging: Path | None = None
        # Locked while this run lives, so no other run takes it for stale.
        self._staging_fd = -1
        # Staged inside an existing empty directory, rather than beside it.
        self._staged_inside = False
        self._created = False
        # An existing empty directory, filled in place: on failure, emptied.
        self._was_empty = False
        self._written: list[Path] = []
        self._layer_dirs: list[Path] = []
        # Layers still being written, by threads abort may not outwait.
        self._temps: set[Path] = set()
        self._store = Store(path)

    def open(self) -> None:
        with output_errors(self.path):
            self._prepare()
        self._store = Store(self.root)

    def _prepare(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path} exists and is not a directory")
        if not path.parent.is_dir():
            raise OutputError(f"cannot write {path}: directory "
                              f"{path.parent} does not exist")
        if self._shared:
            self._prepare_shared()
            return
        if not path.exists():
            # A single image appears whole or not at all.
            sweep_stale(path.parent, f".{path.name}.")
            self._stage(path)
            return
        # What a killed run left: a staging directory no one holds.
        sweep_stale(path, f".{path.name}.")
        _sweep_store_temps(path)
        store = Store(path)
        if store.is_shared:
            raise OutputError(
                f"{path} is a shared directory; add --use-unique-names to "
                "add images to it")
        if any(path.iterdir()) and not store.is_single:
            raise OutputError(
                f"{path} is not empty and is not an occystrap directory; "
                "choose a new or empty directory")
        if not any(path.iterdir()):
            # Filled inside a hidden directory, moved up at the end: a run
            # killed midway leaves the directory as empty as it found it.
            self._stage(path / path.name)
            self._staged_inside = True

    def _stage(self, beside: Path) -> None:
        self._staging_fd, self._staging = claim_temp_dir(beside)

    def _prepare_shared(self) -> None:
        path = self.path
        try:
            path.mkdir()
            self._created = True
        except FileExistsError:
            store = Store(path)
            _sweep_store_temps(path)
            self._was_empty = not any(path.iterdir())
            if any(path.iterdir()) and not store.is_shared:
                what = ("holds a single image (written without "
                        "--use-unique-names)" if store.is_single
                        else "is not empty and is not an occystrap "
                        "directory")
                raise OutputError(
                    f"{path} {what}; choose a new or empty directory")
        # Marks the directory as shared at once, so a concurrent fetch
        # into it recognises it before the first catalog exists.
        os.close(create_lock(path / LOCK))

    @property
    def root(self) -> Path:
        return self._staging or self.path

    def begin(self, image: Image) -> None:
        self._check_same_image(image)
        if self._expand:
            with output_errors(self.path):
                self._expander = Expander(self.root, image)

    def _check_same_image(self, image: Image) -> None:
        if self._shared or self._staging:
            return
        manifest = self.path / dockersave.MANIFEST
        if not manifest.exists():
            return
        held = dockersave.manifest_entry(image)["Config"]
        same = single_manifest(manifest).get("Config") == held
        if not same:
            tags = ", ".join(single_repo_tags(manifest)) or "another image"
            raise OutputError(
                f"{self.path} already holds {tags}; use a new directory, or "
                "--use-unique-names to keep several images in one")

    def plan(self, layers: list[tuple[Layer, int | None]]) -> None:
        if self._expander:
            self._expander.present_except({layer.diff_id for layer, _ in layers})

    def has_layer(self, layer: Layer) -> bool:
        return self._store.has_layer(layer.diff_id)

    def write_layer(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        target = self._store.layer_tar(layer.diff_id)
        with output_errors(target):
            target.parent.mkdir(exist_ok=True)
            self._check_layer_dir(target.parent)
            # Even a layer that fails leaves its directory: abort removes it.
            self._layer_dirs.append(target.parent)
            fd, temp = claim_temp(target)
            self._temps.add(temp)
            try:
                # fd only holds the lock; the bytes go through a file.
                with open(temp, "wb") as f:
                    for chunk in chunks:
                        f.write(chunk)
                os.fchmod(fd, 0o644 & ~current_umask())
                # Only verified content (the iterator checks it before it
                # ends) ever takes the final name; still locked, so no
                # other run's sweep can take it for stale before.
                os.replace(temp, target)
                self._written.append(target)
                self._store.layer_verified(layer.diff_id)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
                self._temps.discard(temp)
            version = target.parent / "VERSION"
            if not version.exists():
                write_atomic(version, dockersave.LAYER_VERSION)
        if self._expander:
            self._expander.ready(layer.diff_id)

    def commit(self, image: Image) -> None:
        root = self.root
        with output_errors(self.path):
            for name, data in dockersave.legacy_layer_files(image):
                # A shared layer keeps the json the first image gave it.
                if not (self._shared and (root / name).exists()):
                    write_atomic(root / name, data)
            config = self._store.config_file(image.config_digest)
            if not config.exists():
                write_atomic(config, image.config)
            if self._expander:
                # Before the image is catalogued: a layer that cannot be
                # unpacked fails the whole fetch.
                self._expander.wait()
            if self._shared:
                name = self._store.add_image(
                    image.repository, image.tag,
                    dockersave.manifest_json(image),
                    tuple(layer.diff_id for layer in image.layers))
                if self._expander:
                    self._expander.place(root / name.removesuffix(".json"))
                return
            if self._expander:
                self._expander.place(
                    root / dockersave.MANIFEST.removesuffix(".json"))
            repositories = dockersave.repositories_json(image)
            if repositories:
                write_atomic(root / dockersave.REPOSITORIES, repositories)
            write_atomic(root / dockersave.MANIFEST,
                         dockersave.manifest_json(image))

    def _check_layer_dir(self, directory: Path) -> None:
        """A layer directory replaced by a link must not take the layer
        out of DIR (nor anything else there be written through it)."""
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) \
                or not safefile.inside(directory, self.root):
            raise StoreError(
                f"{directory} is not a directory but a link or a file: "
                f"{self.path} has been tampered with; remove {directory} "
                "and fetch again")

    def close(self) -> None:
        if self._staging:
            with output_errors(self.path):
                if self._staged_inside:
                    self._move_up(self._staging)
                else:
                    os.chmod(self._staging, 0o777 & ~current_umask())
                    os.rename(self._staging, self.path)
            self._staging = None
            os.close(self._staging_fd)
            self._staging_fd = -1

    def _move_up(self, staging: Path) -> None:
        """Move what was staged inside the directory up into it, the
        manifest last: until then the directory is not an image."""
        names = sorted(os.listdir(staging),
                       key=lambda name: name == dockersave.MANIFEST)
        for name in names:
            os.rename(staging / name, self.path / name)
        staging.rmdir()

    def abort(self) -> None:
        if self._expander:
            self._expander.abort()
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
            os.close(self._staging_fd)
            self._staging_fd = -1
            return
        # Layers cut short (Ctrl-C may not wait for their threads) leave
        # neither a temporary file nor an empty layer directory.
        for temp in list(self._temps):
            temp.unlink(missing_ok=True)
        if (self._created or self._was_empty) and self._written:
            # Leave no trace in a directory that was new or empty. (In a
            # store that held images, downloaded layers are kept for the
            # next attempt.)
            self._remove_unused_layers()
        for directory in self._layer_dirs:
            _rmdir_if_empty(directory)
        if self._created \
                and [p.name for p in self.path.iterdir()] == [LOCK]:
            (self.path / LOCK).unlink(missing_ok=True)
            _rmdir_if_empty(self.path)

    def _remove_unused_layers(self) -> None:
        """Remove the layers this run wrote that no catalogued image uses.

        Another run may have found one of them here and catalogued an
        image using it meanwhile (or an earlier image of this run did):
        those stay. Decided under the lock that cataloguing takes, so no
        image is catalogued with a layer removed under it.
        """
        try:
            with self._store.locked():
                used = self._store.used_layers()
                for layer in self._written:
                    if layer.parent.name not in used:
                        for path in (layer, layer.parent / "VERSION",
                                     layer.parent / "json"):
                            path.unlink(missing_ok=True)
        except (OSError, StoreError):
            # A catalog that cannot be read: keep every layer rather than
            # guess which are unused.
            pass


def _sweep_store_temps(root: Path) -> None:
    """Files half-written by runs that were killed: layers and their
    legacy files, configs, manifests, the catalog. (Not --expand's trees,
    which carry no lock to tell a live one.)"""
    try:
        names = os.listdir(root)
    except OSError:
        return
    configs = {name[:71] for name in names if _CONFIG_TEMP.match(name)}
    sweep_stale(root, ".catalog.json.", ".manifest", ".repositories.",
                *configs)
    for name in names:
        if _LAYER_DIR.match(name):
            sweep_stale(root / name, ".layer.tar.", ".VERSION.", ".json.")


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
