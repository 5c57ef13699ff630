"""s3: each message PUT to {bucket}/{YYYY}/{MM}/{DD}/{id}.eml with SigV4 (boto3), on AWS S3 or any S3-compatible store.

`id` is the queue id, as the admin API names messages, not the Message-ID header, which senders
repeat: a message stored again (a retry, a runner that died before settling it) overwrites its own
object. A copy is durable once the PUT succeeded: S3 answers 200 only after storing it, and botocore
sends a checksum of the body for the store to verify. Any failure is a deferral, tried again later.
"""

from __future__ import annotations

import re

from fastmta.config import RouteConfig
from fastmta.stores.base import Copy, Failed
from fastmta.stores.eml_tree import day_parts
from fastmta.stores.sealed import MAGIC

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as missing:  # an optional extra: say which
    raise ImportError("an s3 route needs boto3: pip install 'fastmta[s3]'") from missing

_UNSAFE_IN_KEY = re.compile(r"[^A-Za-z0-9._-]")


def key_of(copy: Copy) -> str:
    return "/".join((*day_parts(copy.received_at), f"{_UNSAFE_IN_KEY.sub('_', copy.message_id)}.eml"))


class S3Store:
    per_recipient = False

    def __init__(self, route: RouteConfig) -> None:
        self.bucket = route.bucket
        # Empty keys leave credentials to boto3's own sources (AWS_* variables, ~/.aws, an instance role).
        self.client = boto3.session.Session().client(
            "s3",
            region_name=route.region or None,
            endpoint_url=route.endpoint_url or None,
            aws_access_key_id=route.access_key or None,
            aws_secret_access_key=route.secret_key or None,
            # A store that does not answer defers the recipients within a minute; the runner retries later.
            config=BotoConfig(
                signature_version="s3v4", connect_timeout=10, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
            ),
        )

    def put(self, copy: Copy) -> None:
        content_type = "application/octet-stream" if copy.body.startswith(MAGIC) else "message/rfc822"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key_of(copy), Body=copy.body, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise Failed(f"s3 PUT to {self.bucket} failed: {exc}") from exc

    def close(self) -> None:
        self.client.close()
