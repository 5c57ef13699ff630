"""The dead-letter endpoints against the real admin process: the list by sink and page, and a replay marked in the table."""

from __future__ import annotations

import time

import sqlalchemy as sa

from fastmta.config import load
from fastmta.history import dead_letters, db
from fastmta.history.dead_letters import Letter
from fastmta.history.schema import dead_letters as table
from tests.admin.conftest import Admin


def test_dead_letters_are_listed_and_a_replay_is_marked_for_the_sink_and_audited(admin: Admin) -> None:
    engine = db.opened(load(environ={"FASTMTA_SERVER_DATA_DIR": str(admin.server.data_dir)}))
    try:
        with engine.begin() as connection:
            connection.execute(sa.delete(table))
            dead_letters.add(connection, "webhook:crm", [Letter(f"e{n}", "message.sent", {"id": f"e{n}"}) for n in range(3)],
                             "refused: HTTP 400", 1, time.time())  # fmt: skip
            dead_letters.add(connection, "report", [Letter("r1", "delivery_report", {"id": "m1"})], "rejected 10 times", 10, time.time())
        with admin.client("viewer") as client:
            page = client.get("/api/v1/webhooks/dead-letters", params={"sink": "webhook:crm", "limit": "2", "offset": "1"}).json()["data"]
            assert (page["total"], page["limit"], page["offset"]) == (3, 2, 1)
            assert [item["event_id"] for item in page["items"]] == ["e1", "e2"]
            item = page["items"][0]
            assert (item["sink"], item["event"], item["payload"], item["reason"], item["attempts"]) == (
                "webhook:crm", "message.sent", {"id": "e1"}, "refused: HTTP 400", 1
            )
            assert item["replay_requested_at"] is None and item["replayed_at"] is None
            everything = client.get("/api/v1/webhooks/dead-letters").json()["data"]
            assert everything["total"] == 4 and everything["items"][-1]["sink"] == "report"
            assert client.post(f"/api/v1/webhooks/dead-letters/{item['id']}/replay").status_code == 403
        with admin.client("operator") as client:
            response = client.post(f"/api/v1/webhooks/dead-letters/{item['id']}/replay")
            assert response.status_code == 200, response.text
            assert response.json()["data"]["replay_requested_at"] is not None
            for missing in ("999999", "abc", "99999999999999999999"):
                response = client.post(f"/api/v1/webhooks/dead-letters/{missing}/replay")
                assert response.status_code == 404 and response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        with engine.connect() as connection:
            (due,) = dead_letters.due(connection, "webhook:crm", 10)
        assert due.event_id == "e1"
        with admin.client("admin") as client:
            audit = client.get("/api/v1/audit", params={"action": "webhook.replay"}).json()["data"]["items"]
        assert audit[0]["target"] == f"dead-letter:{item['id']}" and audit[0]["actor"] == "token:test-operator"
    finally:
        engine.dispose()
