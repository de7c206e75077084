"""prometheus_client's metric files on a full disk (issue 14): their blocks are reserved before
they are mapped, so no room is an error answered by keeping values in memory, never SIGBUS.
Each test runs on its own small tmpfs (CI runs as root)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.runtime import metricfiles
from testsupport.disk import fill, tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    metricfiles.take_faults()
    with tmpfs(tmp_path / "disk", "size=512k") as where:
        yield where
    metricfiles.take_faults()


def exported(path: Path) -> dict[str, float]:
    """What prometheus_client's collector reads from a metric file."""
    from prometheus_client.mmap_dict import MmapedDict

    return {key: value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))}


def test_a_metric_file_that_cannot_be_made_keeps_its_values_in_memory(disk: Path) -> None:
    fill(disk)
    AllocatedDict = metricfiles.allocated_dict_class()
    path = disk / "counter_1.db"
    values = AllocatedDict(str(path))
    for n in range(2000):  # past the first 64 KiB: the memory map grows too
        values.write_value(f"series-{n}", float(n), 0.0)
    assert values.read_value("series-1999") == (1999.0, 0.0)
    assert not path.exists()  # no empty file for the collector to choke on
    assert [(str(path), "create")] == [fault[:2] for fault in metricfiles.take_faults()]
    values.close()


def test_a_metric_file_that_cannot_grow_keeps_exporting_what_it_holds(disk: Path) -> None:
    AllocatedDict = metricfiles.allocated_dict_class()
    path = disk / "counter_2.db"
    values = AllocatedDict(str(path))
    values.write_value("early", 1.0, 0.0)
    fill(disk)
    n = 0
    while not metricfiles.take_faults():  # new series until the file must grow and cannot
        values.write_value(f"series-{n}-{'x' * 200}", float(n), 0.0)
        n += 1
        assert n < 10_000, "the file never needed to grow"
    late = f"series-{n - 1}-{'x' * 200}"
    values.write_value(late, 7.0, 0.0)
    values.write_value("early", 2.0, 0.0)  # an existing series: still written to the file
    assert values.read_value(late) == (7.0, 0.0)
    on_disk = exported(path)
    assert on_disk["early"] == 2.0
    assert late not in on_disk and len(on_disk) == n  # "early" and every series that found room
    values.close()


def test_a_metric_file_with_room_is_allocated_to_its_size(disk: Path) -> None:
    AllocatedDict = metricfiles.allocated_dict_class()
    path = disk / "histogram_3.db"
    values = AllocatedDict(str(path))
    for n in range(1000):  # grows past 64 KiB
        values.write_value(f"series-{n}-{'y' * 100}", float(n), 0.0)
    values.close()
    st = path.stat()
    assert st.st_blocks * 512 >= st.st_size > 1 << 16  # no hole: every page has its block
    assert exported(path)[f"series-999-{'y' * 100}"] == 999.0
    assert metricfiles.take_faults() == []


def test_every_degradation_counted_is_explained_in_the_help() -> None:
    from checkid.runtime import metrics

    help_text = metrics.COUNTERS["degraded"][0]
    assert all(f"{what}:" in help_text for what in metrics.DEGRADED)
