"""The queue as the console and the API page it: filters, a cursor, and a deep page that costs what the first one does."""

from __future__ import annotations

import re
import time

from fastmta.admin.api.queue import QueueQuery, page
from fastmta.queue.records import HELD, Message, Recipient, new_message_id
from fastmta.queue.store import QueueStore
from tests.console.conftest import Console

LARGE = 20_000
BODY = b"Subject: seeded\r\n\r\nbody\r\n"


def seeded(count: int, now: float) -> list[tuple[Message, bytes]]:
    """`count` messages, oldest first, a second apart; every 100th to slow.test, every 7th in workspace w7."""
    batch = []
    for number in range(count):
        domain = "slow.test" if number % 100 == 0 else "example.org"
        message = Message(
            new_message_id(now - count + number), f"sender{number}@example.com", [Recipient(f"rcpt{number}@{domain}")],
            now - count + number, len(BODY), now + 3600, workspace_id="w7" if number % 7 == 0 else "",
        )
        batch.append((message, BODY))
    return batch


def ids_on(html: str) -> list[str]:
    return re.findall(r'<th scope="row"><a href="/ui/queue/([0-9A-Z]+)">', html)


def test_filters_and_the_cursor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = QueueStore(tmp_path, 1 << 26, events=())
    now = time.time()
    batch = seeded(300, now)
    batch[5][0].state = HELD
    batch[5][0].recipients[0].address = "Bob.Stuck@Slow.Test"
    store.insert(batch)
    ids = [message.id for message, _ in batch]
    try:
        assert [e.id for e in page(store, QueueQuery(recipient="bob.stuck")).items] == [ids[5]]
        assert [e.id for e in page(store, QueueQuery(domain="SLOW.TEST.")).items] == [ids[0], ids[5], ids[100], ids[200]]
        assert page(store, QueueQuery(sender="SENDER29")).total == 11  # 29, 290..299
        assert page(store, QueueQuery(workspace_id="w7")).total == 43
        assert [e.id for e in page(store, QueueQuery(status="held")).items] == [ids[5]]
        assert page(store, QueueQuery(older_than=200), now).total == 101  # received 200 s ago or before
        assert page(store, QueueQuery(newer_than=10), now).total == 10

        first = page(store, QueueQuery(limit=120, count=False))
        assert first.total is None and first.has_more and first.next_after == ids[119]
        rest = page(store, QueueQuery(limit=200, count=False, after=first.next_after))
        assert [e.id for e in rest.items] == ids[120:] and not rest.has_more and rest.next_after is None
        assert page(store, QueueQuery(after=ids[-1])).items == []
        assert page(store, QueueQuery(after="ZZZZ")).items == []  # past the end is the end, not the start again
    finally:
        store.close()


def test_the_console_pages_a_large_queue_without_reading_it_all(console: Console) -> None:
    now = time.time()
    batch = seeded(LARGE, now)
    console.store(batch)
    ids = [message.id for message, _ in batch]
    with console.client() as client:
        console.log_in(client, "viewer")
        first = client.get("/ui/queue")
        assert f"{LARGE} messages" in first.text and ids_on(first.text) == ids[:50]

        # Page by page through a filter: each page picks up where the one before stopped.
        shown, url = [], "/ui/queue?domain=slow.test"
        while url:
            answer = client.get(url).text
            shown += ids_on(answer)
            following = re.search(r'<a href="([^"]+)" hx-get="[^"]+" [^>]*rel="next">', answer)
            url = following.group(1).replace("&amp;", "&") if following else ""
        assert shown == ids[::100]

        def fastest(path: str) -> float:
            times = []
            for _ in range(3):
                started = time.perf_counter()
                assert client.get(path).status_code == 200
                times.append(time.perf_counter() - started)
            return min(times)

        deep = fastest(f"/ui/queue?after={ids[LARGE - 60]}")
        counted = fastest("/api/v1/queue?count=true&limit=1")  # reads and counts every record
    # The deep page reads 51 records; counting reads 20,000. On any machine the first is the smaller share.
    assert deep < counted / 3, f"a page deep in the queue took {deep:.3f} s, counting the whole queue {counted:.3f} s"
