"""The test servers' port picker stays out of the host's ephemeral range, whatever that range is."""

from __future__ import annotations

import pytest

from tests.ports import _range


@pytest.mark.parametrize("ephemeral", [(32768, 60999), (15000, 60999), (10000, 20000), (20000, 30000),
                                       (49152, 65535), (12000, 31999)])
def test_the_range_misses_the_ephemeral_ports(ephemeral):
    lo, hi = _range(ephemeral)
    assert hi - lo >= 2000
    assert hi <= ephemeral[0] or lo > ephemeral[1], (lo, hi)


def test_no_room_beside_it_keeps_the_default():
    assert _range((1024, 65535)) == (12000, 32000)
