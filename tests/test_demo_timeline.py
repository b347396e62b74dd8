"""The demo's picture: the fault schedule against ok % and p99 over time (pure logic)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dbresilience._demo import Run, _report, _write_picture, timeline


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


def outage_runs() -> list[Run]:
    """Two runs, the first failing during its second phase."""
    runs = []
    for name, broken in (("naive", True), ("dbresilience", False)):
        run = Run(name)
        run.phases = [(0.0, "steady state"), (10.0, "server restart"), (20.0, "recovery")]
        for i in range(300):
            at = i / 10
            outage = broken and 10 <= at < 20
            run.samples.append((at, 900.0 if outage else 5.0, not outage))
        runs.append(run)
    return runs


def test_plot_writes_a_png_when_matplotlib_is_installed(tmp_path: Path) -> None:
    """demo --plot FILE: a valid PNG (signature, an IHDR chunk, and matplotlib reads it back
    as an image the size it was drawn) with one panel per run."""
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: the PNG is optional")
    import matplotlib.image

    path = tmp_path / "demo.png"
    out: list[str] = []
    _write_picture(outage_runs(), path, out.append)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 640)  # 10 x 3.2 in per run at 100 dpi
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (640, 1000)
    assert out == [f"\n  picture: {path} (PNG)"]


def test_without_matplotlib_the_text_picture_is_printed_and_no_file_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib missing (an import that fails): no file, a line naming ``pip install
    matplotlib``, and the report still prints the text picture."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = tmp_path / "demo.png"
    runs = outage_runs()
    out: list[str] = []
    _report(runs, out.append)
    _write_picture(runs, path, out.append)
    assert not path.exists()
    assert "pip install matplotlib" in out[-1]
    assert any(line.startswith("  ok %    |") for line in out)
    assert any(line.startswith("  fault   |") for line in out)


def test_demo_help_offers_the_plot_option() -> None:
    """``dbresilience demo --help`` names --plot FILE and what it needs."""
    done = subprocess.run(
        [sys.executable, "-m", "dbresilience", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--plot FILE" in done.stdout
    assert "matplotlib" in done.stdout
