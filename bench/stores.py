"""How fast each store keeps mail: messages/s and µs per message for put(), fsync or commit or PUT included.

One thread puts copies one after another, as one of a delivery runner's store threads does, into a
fresh store in a temporary directory on the data disk (--dir). s3 runs against moto's S3 server in
this process, a fake (no S3-compatible server runs offline here): its figure is boto3's signing and
a loopback HTTP round trip, not S3's latency.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastmta.config import RouteConfig, StoreConfig  # noqa: E402 (needs the repo on sys.path)
from fastmta.stores import opened  # noqa: E402
from fastmta.stores.base import Copy  # noqa: E402

KINDS = ("maildir", "mbox", "eml-tree", "eml-tree+sealed", "sqlite", "s3")
SIZES = {"1k": 1024, "10k": 10240}
KEYS = StoreConfig(keys={"k1": base64.b64encode(b"k" * 32).decode()}, active_key="k1")


def messages(count: int, size: int, seed: int) -> list[Copy]:
    """`count` copies of exactly `size` bytes: headers, then lines of words a full-text index has to take apart."""
    chooser = random.Random(seed)
    words = [bytes(chooser.choices(b"abcdefghijklmnopqrstuvwxyz", k=chooser.randint(2, 9))) for _ in range(2000)]
    made = []
    for number in range(count):
        head = f"From: bench@source.example\r\nTo: you@bench.example\r\nSubject: bench {number}\r\n\r\n".encode()
        body = bytearray(head)
        while len(body) < size:
            body += b" ".join(chooser.choices(words, k=10)) + b"\r\n"
        made.append(Copy(f"B{number:015d}", "bench@source.example", ("you@bench.example",), time.time(), bytes(body[:size])))
    return made


def route(kind: str, directory: Path, s3_endpoint: str) -> RouteConfig:
    if kind == "s3":
        return RouteConfig(
            match=["*"], kind="s3", bucket="bench", region="us-east-1", endpoint_url=s3_endpoint,
            access_key="bench", secret_key="bench",
        )  # fmt: skip
    base, _, sealed = kind.partition("+")
    path = directory / ("stored.db" if base == "sqlite" else base)
    return RouteConfig(match=["*"], kind=base, path=str(path), encrypt=bool(sealed))


def measure(kind: str, copies: list[Copy], directory: Path, s3_endpoint: str) -> dict[str, float]:
    store = opened(route(kind, directory, s3_endpoint), KEYS)
    store.put(copies[0])  # the first makes directories, the database or the connection
    started, cpu = time.perf_counter(), time.process_time()
    for copy in copies[1:]:
        store.put(copy)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    store.close()
    count = len(copies) - 1
    return {
        "messages_per_second": count / seconds,
        "us_per_message": seconds / count * 1e6,
        "cpu_us_per_message": cpu_seconds / count * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stores.py", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=300, help="copies put per store and size (default 300)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--dir", default=None, help="where the stores go (default: a temporary directory in the system's)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",")
    results: list[dict[str, object]] = []
    moto, s3_endpoint = None, ""
    if "s3" in kinds:
        import boto3
        from moto.server import ThreadedMotoServer  # the test extra's: pip install -e '.[test]'

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        s3_endpoint = "http://{}:{}".format(*moto.get_host_and_port())
        bench = route("s3", Path(), s3_endpoint)
        boto3.client(
            "s3", endpoint_url=s3_endpoint, region_name=bench.region, aws_access_key_id=bench.access_key,
            aws_secret_access_key=bench.secret_key,
        ).create_bucket(Bucket=bench.bucket)  # fmt: skip
    try:
        for size_name, size in SIZES.items():
            copies = messages(args.messages + 1, size, args.seed)
            for kind in kinds:
                directory = Path(tempfile.mkdtemp(prefix="fastmta-stores-", dir=args.dir))
                try:
                    results.append({"kind": kind, "size": size_name, **measure(kind, copies, directory, s3_endpoint)})
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
    finally:
        if moto:
            moto.stop()
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.messages} copies per store and size, one thread")
    print(f"{'store':<17}{'size':>5}{'msg/s':>10}{'µs/msg':>10}{'CPU µs/msg':>12}")
    for row in results:
        print(f"{row['kind']:<17}{row['size']:>5}{row['messages_per_second']:>10,.0f}{row['us_per_message']:>10,.0f}{row['cpu_us_per_message']:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
