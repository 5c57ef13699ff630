"""/metrics against the real server: per-worker series add up to what was sent, and survive a worker's SIGKILL."""

from __future__ import annotations

import json
import os
import signal

from prometheus_client.parser import text_string_to_metric_families

from tests.admin.conftest import Admin, wait_until


def samples(admin: Admin, name: str, **labels: str) -> dict[str, float]:
    """The value of each worker's series of one sample name."""
    with admin.client("viewer") as client:
        text = client.get("/metrics").text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                worker = sample.labels["worker"]
                found[worker] = found.get(worker, 0.0) + sample.value
    return found


def accepted(admin: Admin) -> dict[str, float]:
    return samples(admin, "smtp_messages_received_total", status="accepted")


def smtp_pids(admin: Admin) -> dict[str, int]:
    children = json.loads((admin.server.data_dir / "children.json").read_text())
    return {child["name"]: child["pid"] for child in children if child["name"].startswith("smtp-")}


def test_per_worker_series_sum_to_what_was_sent_and_survive_a_kill(admin: Admin) -> None:
    before = sum(accepted(admin).values())
    admin.send(20)
    assert wait_until(lambda: sum(accepted(admin).values()) == before + 20), accepted(admin)
    per_worker = accepted(admin)
    # Twenty connections over two SO_REUSEPORT sockets: both workers get some (all on one: 2 in a million).
    assert set(per_worker) == {"smtp-0", "smtp-1"}
    connections = samples(admin, "smtp_connections_total")
    sizes = samples(admin, "smtp_message_size_bytes_count")
    assert sum(sizes.values()) == before + 20
    assert sum(samples(admin, "smtp_processing_duration_seconds_count").values()) == before + 20

    victim_name, victim = sorted(smtp_pids(admin).items())[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: smtp_pids(admin).get(victim_name, victim) != victim), smtp_pids(admin)
    # The dead worker's counters stay in the sum: nothing goes backwards.
    for name, old in (("smtp_messages_received_total", per_worker), ("smtp_connections_total", connections)):
        now = samples(admin, name)
        assert all(now.get(worker, 0.0) >= value for worker, value in old.items()), (name, old, now)
    # Its live gauge left with it.
    assert wait_until(lambda: sum(samples(admin, "smtp_connections_active").values()) == 0)

    admin.send(10)
    assert wait_until(lambda: sum(accepted(admin).values()) == before + 30), accepted(admin)
