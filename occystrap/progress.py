"""Progress events the library reports; only the CLI draws them."""

import dataclasses
from typing import Callable

from occystrap.image import Image, Layer


@dataclasses.dataclass(frozen=True)
class ImageStarted:
    """Image `number` (from 0) of `total` in a run of many begins."""

    number: int
    total: int


@dataclasses.dataclass(frozen=True)
class ImageResolved:
    image: Image


@dataclasses.dataclass(frozen=True)
class LayerStarted:
    layer: Layer


@dataclasses.dataclass(frozen=True)
class LayerSkipped:
    """The destination already holds this layer, verified."""

    layer: Layer


@dataclasses.dataclass(frozen=True)
class LayerBytes:
    layer: Layer
    transferred: int


@dataclasses.dataclass(frozen=True)
class LayerDone:
    layer: Layer


Event = ImageStarted | ImageResolved | LayerStarted | LayerSkipped | LayerBytes | LayerDone
Callback = Callable[[Event], None]


def ignore(event: Event) -> None:
    pass
