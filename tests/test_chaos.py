"""`dbresilience chaos`, 60 seconds of it: nothing lost, doubled, overrun or leaked."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sixty_seconds_of_chaos_lose_nothing() -> None:
    """Three worker processes under every fault in turn for 60 s (kill storms, a restart,
    frozen backends, SIGKILLed workers, a Redis outage): the checker finds acknowledged
    writes, and none lost, doubled, past its deadline or showing the planted password."""
    result = subprocess.run(
        [sys.executable, "-m", "dbresilience", "chaos", "--seconds", "60"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-4000:]
    row = re.search(r"^\s*(\d+)" + r"\s+(\d+)" * 6 + r"\s*$", out, re.MULTILINE)
    assert row is not None, out
    acknowledged, lost, doubled, overruns, secrets, killed, _ = map(int, row.groups())
    assert acknowledged > 1000
    assert (lost, doubled, overruns, secrets) == (0, 0, 0, 0)
    assert killed >= 1  # the schedule did kill a worker
