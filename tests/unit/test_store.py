"""The queue store and group commit on a real LMDB environment."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from fastmta.queue import records
from fastmta.queue.commit import GroupCommit
from fastmta.queue.records import HELD, MESSAGE_DECODER, Message, Recipient, new_message_id
from fastmta.queue.store import CorruptRecord, QueueStore, StoreFullError


def message(size: int = 10) -> Message:
    now = time.time()
    return Message(
        id=new_message_id(now), sender="a@b.c", recipients=[Recipient("d@e.f")], received_at=now,
        size=size, next_attempt=now,
    )


def test_ids_are_unique_and_sortable() -> None:
    ids = [new_message_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 21 and i.isalnum() and i.isupper() for i in ids)
    start = time.time()
    timed = [new_message_id(start + n / 1000) for n in range(1000)]
    assert timed == sorted(timed)


def test_ids_name_their_node_so_nodes_with_the_same_pids_never_share_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "_node", records._node)
    made: dict[str, list[str]] = {}
    for node in ("mx1.test", "mx2.test", "mx3.test"):
        records.name_node(node)
        # The same pid and counter on every node, as in identical containers.
        monkeypatch.setattr(records, "_counter", itertools.count())
        made[node] = [new_message_id(1.7e9) for _ in range(3)]
    assert len({i for ids in made.values() for i in ids}) == 9
    assert all(i[9:14] == records.node_tag(node) for node, ids in made.items() for i in ids)


def test_ids_from_before_the_node_tag_sort_with_new_ones_by_time() -> None:
    """16-character ids of older versions (milliseconds, pid, counter) stay in the queue and must keep their order."""
    millis = int(1.7e9 * 1000)
    older = records._base32(millis << 36 | 4321 << 14 | 5, 16)
    assert new_message_id((millis - 1) / 1000) < older < new_message_id((millis + 1) / 1000)


def test_insert_get_scan_due_hold_release_delete(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26)
    first, second = message(), message()
    store.insert([(first, b"one"), (second, b"two")])
    assert store.get(first.id) == first and store.body(second.id) == b"two"
    assert [m.id for m in store.scan()] == [first.id, second.id]
    assert store.due() == [first.id, second.id]
    held = store.set_held(first.id, True)
    assert held is not None and held.state == HELD and store.due() == [second.id]
    store.set_held(first.id, False)
    assert sorted(store.due()) == sorted([first.id, second.id])
    assert store.delete(first.id) and not store.delete(first.id)
    assert store.get(first.id) is None and store.body(first.id) is None and store.count() == 1


def test_a_full_store_takes_what_fits_and_nothing_half(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 4 << 20)
    small = [message() for _ in range(3)]
    batch = [(small[0], b"a"), (message(), b"z" * (8 << 20)), (small[1], b"b"), (small[2], b"c")]
    first, too_big, second, third = store.insert(batch)
    assert first is second is third is None and isinstance(too_big, StoreFullError)
    assert store.count() == 3 and sorted(store.due()) == sorted(m.id for m in small)
    with store.env.begin() as txn:
        assert txn.stat(store.bodies)["entries"] == 3
    with pytest.raises(StoreFullError):
        store.insert([(message(), b"y" * (8 << 20))])
    assert store.count() == 3


def test_corrupt_record_is_reported(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 24)
    good = message()
    store.insert([(good, b"ok")])
    with store.env.begin(write=True) as txn:
        txn.put(b"0000BROKEN000000", b"\xc1garbage", db=store.messages)
    entries = list(store.scan())
    assert any(isinstance(e, CorruptRecord) and e.message_id == "0000BROKEN000000" for e in entries)
    with pytest.raises(CorruptRecord):
        store.get("0000BROKEN000000")


def test_records_tolerate_unknown_fields() -> None:
    import msgspec

    raw = msgspec.msgpack.encode({**msgspec.to_builtins(message()), "added_in_a_later_version": 1})
    assert MESSAGE_DECODER.decode(raw).sender == "a@b.c"


def test_group_commit_batches_concurrent_messages(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26)

    async def main() -> GroupCommit:
        committer = GroupCommit(store.insert, asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        results = [loop.create_future() for _ in range(200)]
        for result in results:
            committer.submit((message(), b"body"), lambda error, r=result: r.set_result(error))
        assert [await r for r in results] == [None] * 200
        await committer.wait_idle()
        committer.close()
        return committer

    committer = asyncio.run(main())
    assert committer.items == 200 and committer.batches < 20
    assert store.count() == 200


def test_group_commit_reports_store_full(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 20)

    async def main() -> list[BaseException | None]:
        committer = GroupCommit(store.insert, asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        results = [loop.create_future() for _ in range(5)]
        for result in results:
            committer.submit((message(), b"y" * 400_000), lambda error, r=result: r.set_result(error))
        out = [await r for r in results]
        committer.close()
        return out

    assert any(isinstance(error, StoreFullError) for error in asyncio.run(main()))
    with store.env.begin() as txn:
        assert txn.stat(store.bodies)["entries"] == txn.stat(store.messages)["entries"]


def test_one_message_too_big_for_the_store_costs_only_its_own_place(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 20)
    small = [message() for _ in range(3)]

    async def main() -> list[BaseException | None]:
        committer = GroupCommit(store.insert, asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        items = [(small[0], b"a"), (message(), b"z" * 2_000_000), (small[1], b"b"), (small[2], b"c")]
        results = [loop.create_future() for _ in items]
        # Submitted in one loop turn, so they go to the store as one batch.
        for item, result in zip(items, results):
            committer.submit(item, lambda error, r=result: r.set_result(error))
        out = [await r for r in results]
        committer.close()
        return out

    first, too_big, second, third = asyncio.run(main())
    assert first is second is third is None and isinstance(too_big, StoreFullError)
    assert store.count() == 3 and {store.body(m.id) for m in small} == {b"a", b"b", b"c"}
