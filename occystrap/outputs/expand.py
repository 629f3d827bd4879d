"""--expand: each layer unpacked beside its layer.tar, and the image's
final filesystem built by applying the layers in order.

Both appear atomically (built under a hidden temporary name, then renamed),
so a directory that is there is complete; an interrupted run leaves none.
"""

import os
import shutil
import tempfile
from pathlib import Path

from occystrap import dockersave
from occystrap.image import Image
from occystrap.layers import apply_layer, extract_layer

# Beside <diff_id>/layer.tar; whiteout markers stay visible in it.
EXPANDED_LAYER = "layer"


def expand_layer(layer_tar: Path) -> None:
    """Unpack one verified layer.tar into the directory beside it."""
    target = layer_tar.parent / EXPANDED_LAYER
    if target.is_dir():
        return  # built whole earlier, from the same verified content
    temp = Path(tempfile.mkdtemp(prefix=f".{EXPANDED_LAYER}.", suffix=".tmp",
                                 dir=layer_tar.parent))
    try:
        with open(layer_tar, "rb") as f:
            extract_layer(f, temp)
        _replace_dir(temp, target)
    finally:
        _remove(temp)


def build_filesystem(root: Path, image: Image, target: Path) -> None:
    """Apply the image's layers, lowest first, into a fresh `target`."""
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                 dir=target.parent))
    try:
        os.chmod(temp, 0o755)
        for layer in image.layers:
            with open(root / dockersave.layer_path(layer.diff_id), "rb") as f:
                apply_layer(f, temp)
        _replace_dir(temp, target)
    finally:
        _remove(temp)


def _replace_dir(source: Path, target: Path) -> None:
    """Put source at target, moving any earlier version out of the way."""
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                    dir=target.parent))
        os.rename(target, old / "previous")
        os.rename(source, target)
        _remove(old)
    else:
        os.rename(source, target)


def _remove(path: Path) -> None:
    """Remove a tree we built, even where layers left it unwritable."""
    if not path.exists():
        return

    def make_writable(function, name, _error):
        parent = os.path.dirname(name)
        os.chmod(parent, 0o700)
        if os.path.isdir(name) and not os.path.islink(name):
            os.chmod(name, 0o700)
        function(name)

    shutil.rmtree(path, onerror=make_writable)
