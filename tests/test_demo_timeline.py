"""The demo's picture: the fault schedule against ok % and p99 over time (pure logic)."""

from __future__ import annotations

from dbresilience._demo import Run, timeline


def test_the_picture_shows_the_outage_and_the_recovery() -> None:
    """Requests failing and slow during the second phase only: the ok % row drops and the p99
    row peaks under that phase's digit, and both recover after it."""
    run = Run("dbresilience")
    run.phases = [(0.0, "steady state"), (10.0, "server restart"), (20.0, "recovery")]
    for i in range(300):
        at = i / 10
        outage = 10 <= at < 20
        run.samples.append((at, 900.0 if outage else 5.0, not outage))
    lines = timeline(run, columns=30)
    fault, ok, p99 = (line.split("|")[1] for line in lines[1:4])
    assert fault == "1" * 10 + "2" * 10 + "3" * 10
    assert ok == "█" * 10 + " " * 10 + "█" * 10
    assert p99 == " " * 10 + "█" * 10 + " " * 10
    assert "1=steady state  2=server restart  3=recovery" in lines[1]
    assert lines[3].endswith("0-900 ms")


def test_no_request_and_empty_slices() -> None:
    """No request: one line saying so; a slice without requests shows as a dot."""
    assert timeline(Run("naive")) == ["naive: no requests"]
    run = Run("gap")
    run.phases = [(0.0, "steady state")]
    run.samples = [(0.0, 1.0, True), (9.9, 1.0, True)]
    assert "·" in timeline(run, columns=10)[2]
