"""The benchmarks' own code paths that need no database, run small: `make bench` is not part of
CI, so a library change that breaks a benchmark (a check the benchmark's call does not pass)
shows here instead of at the end of a 15-minute `make bench`."""

from __future__ import annotations

import pytest
from benchmarks import bench_serialize

import dbresilience as dbr


@pytest.mark.parametrize("params", [[7, "start"], list(bench_serialize.ROW)], ids=["pair", "row"])
@pytest.mark.parametrize("serializer", [dbr.MsgpackSerializer(), dbr.JsonSerializer()])
def test_journaled_submit_benchmark_runs(params: list[object], serializer: dbr.Serializer) -> None:
    """Both of the serializer table's submit rows (the row's Decimal, datetime and UUID only
    with msgpack: JSON refuses them, which the table prints)."""
    if isinstance(serializer, dbr.JsonSerializer) and len(params) > 2:
        with pytest.raises(TypeError):
            bench_serialize._submit_p50s(serializer, params, 20, 1)
        return
    (p50,) = bench_serialize._submit_p50s(serializer, params, 20, 1)
    assert 0 < p50 < 1e6
