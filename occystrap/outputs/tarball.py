"""Writes an image as a `docker load`-able tarball, atomically."""

import os
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

from occystrap import dockersave
from occystrap.errors import OutputError
from occystrap.fsutil import current_umask, output_errors
from occystrap.image import Image, Layer

_BLOCK = tarfile.BLOCKSIZE
# GNU headers can hold any size in one block (base-256 past 8 GiB), so a
# layer's header can be written before its size is known and fixed in place.
_FORMAT = tarfile.GNU_FORMAT


class TarballWriter:
    """Streams layers straight into the tarball, one pass over the bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            raise OutputError(f"{path} is a directory; give a file name for "
                              "the tarball")
        parent = path.parent
        if not parent.is_dir():
            raise OutputError(f"cannot write {path}: directory {parent} "
                              "does not exist")
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                        dir=parent)
        except OSError as e:
            raise OutputError(f"cannot write in {parent}: {e.strerror}") \
                from None
        self._temp = Path(temp)
        self._file = os.fdopen(fd, "w+b")
        self._written: set[str] = set()

    def begin(self, image: Image) -> None:
        pass

    def has_layer(self, layer: Layer) -> bool:
        # An image may list the same layer twice (empty layers, mostly).
        return layer.diff_id.hex in self._written

    def write_layer(self, layer: Layer, chunks: Iterator[bytes]) -> None:
        with self._errors():
            name = dockersave.layer_dir(layer.diff_id)
            self._member(f"{name}/", None)
            self._member(f"{name}/VERSION", dockersave.LAYER_VERSION)
            header_at = self._file.tell()
            self._file.write(_header(dockersave.layer_path(layer.diff_id), 0))
            size = 0
            for chunk in chunks:
                self._file.write(chunk)
                size += len(chunk)
            self._file.write(_padding(size))
            end = self._file.tell()
            self._file.seek(header_at)
            self._file.write(_header(dockersave.layer_path(layer.diff_id),
                                     size))
            self._file.seek(end)
            self._written.add(name)

    def commit(self, image: Image) -> None:
        with self._errors():
            described = set()
            for index, layer in enumerate(image.layers):
                if layer.diff_id not in described:
                    described.add(layer.diff_id)
                    self._member(f"{layer.diff_id.hex}/json",
                                 dockersave.legacy_layer_json(image, index))
            self._member(dockersave.config_name(image.config_digest),
                         image.config)
            self._member(dockersave.MANIFEST, dockersave.manifest_json(image))
            repositories = dockersave.repositories_json(image)
            if repositories:
                self._member(dockersave.REPOSITORIES, repositories)
            self._file.write(b"\0" * (2 * _BLOCK))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self._temp, 0o644 & ~current_umask())
            os.replace(self._temp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)

    def _member(self, name: str, data: bytes | None) -> None:
        if data is None:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            self._file.write(info.tobuf(_FORMAT, "utf-8", "strict"))
            return
        self._file.write(_header(name, len(data)))
        self._file.write(data)
        self._file.write(_padding(len(data)))

    def _errors(self):
        return output_errors(self.path)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(_FORMAT, "utf-8", "strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)
