"""A worker's in-memory tally, moved to prometheus, reads exactly as if each value had been observed there."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from fastmta.metrics import PROCESSING_BUCKETS, Tally


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for m in histogram.collect() for s in m.samples if "created" not in s.name}


def test_tally_equals_observing_each_value() -> None:
    values = [0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.2, 7.0, 99.0]
    direct = Histogram("direct", "d", ["worker"], buckets=PROCESSING_BUCKETS, registry=CollectorRegistry())
    tallied = Histogram("direct", "d", ["worker"], buckets=PROCESSING_BUCKETS, registry=CollectorRegistry())
    for value in values:
        direct.labels("smtp-0").observe(value)
    tally = Tally(PROCESSING_BUCKETS)
    for value in values[:3]:
        tally.observe(value)
    tally.move_to(tallied.labels("smtp-0"))
    for value in values[3:]:
        tally.observe(value)
    tally.move_to(tallied.labels("smtp-0"))
    assert _samples(direct) == _samples(tallied)
    assert tally.counts == [0] * len(tally.bounds) and tally.total == 0.0
