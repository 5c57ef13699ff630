"""The storing route kinds through the real `fastmta serve`: one message to an mbox, a sealed eml-tree, an
sqlite database searched through the admin API, and S3, where a bucket that is not there defers its recipient.

S3 is moto's S3 server (tests/s3.py), a fake: no S3-compatible server runs offline here.
"""

from __future__ import annotations

import base64
import mailbox
import time
from pathlib import Path

import httpx

from fastmta.stores.sealed import Sealer
from tests import s3
from tests.integration.test_delivery import journal, send, wait_until
from tests.integration.test_ingress import without_received
from tests.unit.test_stores import unescaped

KEY = base64.b64encode(b"k" * 32).decode()
BODY = b"Subject: invoice 42\r\nFrom: alice@example.com\r\n\r\nFrom the desk of Alice: the invoice is attached.\r\n"
RECIPIENTS = ("bob@mbox.test", "carol@eml.test", "dave@sql.test", "erin@s3.test", "frank@nobucket.test")


def test_one_message_in_every_store_and_a_failed_put_deferred(make_server, tmp_path: Path, s3_endpoint: str) -> None:
    bucket = f"mail-{time.monotonic_ns()}"
    s3.client(s3_endpoint).create_bucket(Bucket=bucket)
    server = make_server(
        {
            "smtp": {"workers": 1},
            "delivery": {"workers": 1, "retry_schedule": ["1h"]},
            "admin": {"enabled": True},
            "store": {"keys": {"k1": KEY}, "active_key": "k1"},
            "routes": [
                {"match": ["mbox.test"], "kind": "mbox", "path": str(tmp_path / "mbox")},
                {"match": ["eml.test"], "kind": "eml-tree", "path": str(tmp_path / "eml"), "encrypt": True},
                {"match": ["sql.test"], "kind": "sqlite", "path": str(tmp_path / "stored.db")},
                {"match": ["s3.test"], "kind": "s3", "bucket": bucket},
                {"match": ["nobucket.test"], "kind": "s3", "bucket": "no-such-bucket"},
            ],
        },
        # The S3 settings every s3 route shares, as a container would pass them.
        env={"SMTP_S3_ENDPOINT_URL": s3_endpoint, "SMTP_S3_REGION": s3.REGION,
             "SMTP_S3_ACCESS_KEY": s3.ACCESS_KEY, "SMTP_S3_SECRET_KEY": s3.SECRET_KEY},
    )  # fmt: skip
    send(server, BODY, to=RECIPIENTS)
    wait_until(lambda: len(journal(server)) == len(RECIPIENTS))
    outcomes = {entry["recipient"]: (entry["status"], entry["reply"]) for entry in journal(server)}
    assert {r: status for r, (status, _) in outcomes.items()} == {r: "delivered" for r in RECIPIENTS[:-1]} | {
        "frank@nobucket.test": "deferred"
    }
    assert outcomes["frank@nobucket.test"][1].startswith("451 4.3.0 s3 PUT to no-such-bucket failed")

    [entry] = mailbox.mbox(tmp_path / "mbox" / "bob@mbox.test", create=False)
    assert entry.get_from().startswith("alice@example.com ")
    assert unescaped(entry.as_bytes()).replace(b"\n", b"\r\n").endswith(BODY)
    [sealed] = (tmp_path / "eml").rglob("*.eml")
    assert without_received(Sealer({"k1": base64.b64decode(KEY)}, "k1").unseal(sealed.read_bytes())) == BODY
    [stored] = s3.client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]
    assert stored["Key"] == f"{'/'.join(sealed.relative_to(tmp_path / 'eml').parts)}"
    assert without_received(s3.client(s3_endpoint).get_object(Bucket=bucket, Key=stored["Key"])["Body"].read()) == BODY

    token = server.cli("token", "create", "--role", "viewer", "--name", "t").stdout.decode().split()[-1]
    with httpx.Client(base_url=server.admin_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
        found = api.get("/api/v1/stored", params={"q": "desk invoice"})
        assert found.status_code == 200 and found.headers["X-Total-Count"] == "1"
        [item] = found.json()["data"]["items"]
        assert item["subject"] == "invoice 42" and item["recipients"] == ["dave@sql.test"] and "[desk]" in item["snippet"]
        assert found.json()["data"]["route"] == 2 and item["id"] == sealed.stem
        for params, field in (({"q": '"unbalanced'}, "q"), ({"route": "0"}, "route")):
            refused = api.get("/api/v1/stored", params=params)
            assert refused.status_code == 422 and refused.json()["error"]["field"] == field
    assert server.stop() == 0
