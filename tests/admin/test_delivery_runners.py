"""The admin API against running delivery runners: suspend really stops them, and their metrics reach /metrics and /stats."""

from __future__ import annotations

import time
from typing import Any

from tests.admin.conftest import Admin, wait_until
from tests.admin.test_metrics import samples


def queued(admin: Admin) -> int:
    with admin.client("viewer") as client:
        return client.get("/stats").json()["data"]["queue"].get("active", 0)


def test_suspended_runners_take_no_work_and_activation_resumes_them(make_server: Any) -> None:
    server = make_server({
        "admin": {"enabled": True},
        "delivery": {"workers": 1},
        "routes": [{"match": ["*"], "kind": "discard"}],
    })
    admin = Admin(server)
    with admin.client("operator") as client:
        assert client.post("/api/v1/delivery/suspend").json()["data"]["suspended"] is True
    admin.send(3)  # ingress keeps accepting while delivery is suspended
    time.sleep(2.5)  # more than the runner's idle look at the schedule
    assert queued(admin) == 3

    with admin.client("operator") as client:
        assert client.post("/api/v1/delivery/activate").json()["data"]["suspended"] is False
    assert wait_until(lambda: queued(admin) == 0, timeout=10), queued(admin)

    delivered = lambda: samples(admin, "smtp_messages_sent_total", status="delivered")  # noqa: E731
    assert wait_until(lambda: delivered() == {"delivery-0": 3.0}), delivered()
    assert samples(admin, "smtp_delivery_duration_seconds_count") == {"delivery-0": 3.0}
    with admin.client("viewer") as client:
        assert client.get("/stats").json()["data"]["messages"]["sent"] == 3
    assert server.stop() == 0
