"""The tarball writer's layout planning: hints right, wrong or missing."""

import hashlib
import json
import tarfile
import threading

import pytest

import imagebuild as ib
from occystrap.digest import Digest
from occystrap.errors import OutputError
from occystrap.image import Image, Layer
from occystrap.manifest import Platform
from occystrap.outputs.tarball import TarballWriter


def _layers(count):
    tars = [ib.tar_bytes([ib.file(f"f{n}", ib.random_bytes(3000 + n * 1500, n))])
            for n in range(count)]
    layers = [Layer(n, Digest.of(tar)) for n, tar in enumerate(tars)]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [
        str(layer.diff_id) for layer in layers]}}).encode()
    image = Image("t/x", "v1", "t/x:v1", Platform(), config,
                  Digest.of(config), tuple(layers))
    return image, tars


def _write(path, image, tars, hints, concurrently=True):
    writer = TarballWriter(path)
    writer.open()
    writer.begin(image)
    writer.plan(list(zip(image.layers, hints)))

    def chunks(tar):
        for start in range(0, len(tar), 1000):  # odd sizes, many chunks
            yield tar[start:start + 1000]

    threads = [threading.Thread(target=writer.write_layer,
                                args=(layer, chunks(tar)))
               for layer, tar in zip(image.layers, tars)]
    for thread in threads:
        thread.start()
        if not concurrently:
            thread.join()
    for thread in threads:
        thread.join()
    writer.commit(image)
    writer.close()


def _contents(path):
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read()
                for m in archive.getmembers() if m.isfile()}


@pytest.mark.parametrize("hints", [
    "exact", "none", "short", "long", "mixed", "tiny"])
def test_every_hint_gives_a_correct_archive(tmp_path, hints):
    image, tars = _layers(4)
    sizes = [len(t) for t in tars]
    chosen = {
        "exact": sizes,
        "none": [None] * 4,
        "short": [s - 2048 for s in sizes],   # e.g. multi-member gzip
        "long": [s + 5000 for s in sizes],
        "mixed": [sizes[0], None, sizes[2] - 512, sizes[3] + 513],
        "tiny": [1, 0, 1023, None],
    }[hints]
    out = tmp_path / "x.tar"
    _write(out, image, tars, chosen)
    contents = _contents(out)
    for layer, tar in zip(image.layers, tars):
        assert contents[f"{layer.diff_id.hex}/layer.tar"] == tar
    manifest = json.loads(contents["manifest.json"])
    assert manifest[0]["Layers"] == [f"{layer.diff_id.hex}/layer.tar"
                                     for layer in image.layers]
    unused = [n for n in contents if n.startswith(".occystrap-unused")]
    assert bool(unused) == (hints in ("short", "long", "mixed"))


def test_output_is_deterministic(tmp_path):
    image, tars = _layers(5)
    digests = set()
    for attempt in range(3):
        out = tmp_path / f"{attempt}.tar"
        hints = [len(t) if n % 2 else None for n, t in enumerate(tars)]
        _write(out, image, tars, hints)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_abort_leaves_nothing_and_stops_writers(tmp_path):
    image, tars = _layers(2)
    writer = TarballWriter(tmp_path / "x.tar")
    writer.open()
    writer.plan([(layer, None) for layer in image.layers])
    writer.abort()
    with pytest.raises(OutputError, match="abandoned"):
        writer.write_layer(image.layers[0], iter([tars[0]]))
    assert list(tmp_path.iterdir()) == []


def test_bad_destinations(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        TarballWriter(tmp_path).open()
    with pytest.raises(OutputError, match="does not exist"):
        TarballWriter(tmp_path / "no" / "x.tar").open()
