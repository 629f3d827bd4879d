"""Sizes and durations as messages and progress lines show them."""

import pytest

from occystrap.humanize import human_duration, human_size


@pytest.mark.parametrize("seconds, shown", [
    (0, "0s"),
    (42.4, "42s"),
    (59.6, "1m00s"),
    (187, "3m07s"),
    (600, "10m00s"),
    (3599.6, "1h00m"),
    (3900, "1h05m"),
    (7199.2, "2h00m"),   # an HTTP date two hours ahead, read a moment later
    (90000, "25h00m"),
])
def test_human_duration(seconds, shown):
    assert human_duration(seconds) == shown


@pytest.mark.parametrize("count, shown", [
    (0, "0 B"),
    (1023, "1023 B"),
    (1536, "1.5 KiB"),
    (10 << 20, "10.0 MiB"),
    (5 << 40, "5120.0 GiB"),
])
def test_human_size(count, shown):
    assert human_size(count) == shown
