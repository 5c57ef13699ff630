"""/metrics against the real server: per-worker series add up to what was sent, and survive a worker's SIGKILL."""

from __future__ import annotations

import os
import signal
import smtplib

import pytest

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
    return {name: pid for name, pid in admin.server.children().items() if name.startswith("smtp-")}


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


def test_refusals_and_auth_attempts_are_counted_by_reason(make_server) -> None:
    server = make_server({
        "admin": {"enabled": True},
        "smtp": {"workers": 1, "require_tls_for_auth": False},
        "limits": {"connections_per_minute": 3, "exempt_mynetworks": False},
    })
    admin = Admin(server)
    assert server.cli("user", "add", "dora", "--password-stdin", input=b"right\n").returncode == 0
    # The start-up probe was the first connection of this minute; two more are allowed.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("a.test")
        client.login("dora", "right")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("b.test")
        client.user, client.password = "dora", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)  # one attempt: login() would go on to LOGIN
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    assert refused.value.smtp_code == 421

    def counted() -> tuple[dict[str, float], ...]:
        return (
            samples(admin, "smtp_connections_rejected_total", reason="connections_per_minute"),
            samples(admin, "smtp_ratelimit_hits_total", limit="connections_per_minute"),
            samples(admin, "smtp_auth_attempts_total", result="success"),
            samples(admin, "smtp_auth_attempts_total", result="failure"),
        )

    expected = ({"smtp-0": 1.0},) * 4
    assert wait_until(lambda: counted() == expected), counted()
    with admin.client("viewer") as client:
        auth = client.get("/stats").json()["data"]["auth"]
    assert (auth["success"], auth["failure"]) == (1, 1)
    assert server.stop() == 0


def test_what_no_worker_counts_is_read_when_scraped(admin: Admin) -> None:
    # Every process the supervisor runs, and the supervisor itself, with its CPU, memory and start time.
    names = {"supervisor", *admin.server.children()}
    for sample in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"):
        assert set(samples(admin, sample)) == names, sample
    assert all(value > 1 << 20 for value in samples(admin, "process_resident_memory_bytes").values())

    admin.send(1)  # no delivery runner here: it stays queued
    assert samples(admin, "smtp_messages_queued")["admin"] >= 1
    assert samples(admin, "smtp_queue_oldest_message_age_seconds")["admin"] > 0

    disk = samples(admin, "fastmta_data_disk_free_bytes")["admin"], samples(admin, "fastmta_data_disk_size_bytes")["admin"]
    assert 0 < disk[0] <= disk[1]

    with admin.client("operator") as client:
        assert client.post("/api/v1/delivery/suspend").status_code == 200
        assert samples(admin, "fastmta_delivery_suspended") == {"admin": 1.0}
        assert client.post("/api/v1/delivery/activate").status_code == 200
    assert samples(admin, "fastmta_delivery_suspended") == {"admin": 0.0}
