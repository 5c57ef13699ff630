"""moto's S3 server on a loopback port, standing in for S3: no S3-compatible server runs offline here.

It runs in a thread of the test process and speaks S3's REST API with SigV4, so the code under
test (boto3 in the s3 store, in-process or in `fastmta serve`) goes over HTTP as it would to S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REGION = "us-east-1"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


@contextmanager
def server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on an ephemeral loopback port, stopped afterwards."""
    from moto.server import ThreadedMotoServer

    started = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    started.start()
    host, port = started.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        started.stop()


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    )
