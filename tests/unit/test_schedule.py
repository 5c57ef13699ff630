"""Leases, settling, reclaiming and making mail due, on a real queue store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fastmta.queue.records import DEFERRED, DELIVERED, FAILED, HELD, QUEUED, Message, Recipient, new_message_id
from fastmta.queue.schedule import Scheduler, Settlement
from fastmta.queue.store import EtrnRequest, QueueStore


@pytest.fixture
def scheduler(tmp_path: Path) -> Scheduler:
    return Scheduler(QueueStore(tmp_path, 1 << 26))


def queued(scheduler: Scheduler, *recipients: str, at: float | None = None) -> Message:
    at = time.time() if at is None else at
    message = Message(
        id=new_message_id(at), sender="a@example.com", recipients=[Recipient(r) for r in recipients],
        received_at=at, size=3, next_attempt=at,
    )
    scheduler.store.insert([(message, b"hi\n")])
    return message


def test_a_lease_hides_the_message_until_it_ends(scheduler: Scheduler) -> None:
    now = time.time()
    first, second = queued(scheduler, "b@x.test", at=now - 2), queued(scheduler, "c@x.test", at=now - 1)
    assert [m.id for m in scheduler.lease("r:1", 10, 60, now)] == [first.id, second.id]
    assert scheduler.lease("r:2", 10, 60, now) == []
    assert [m.id for m in scheduler.lease("r:2", 10, 60, now + 61)] == [first.id, second.id]


def test_lease_takes_at_most_the_limit_soonest_first(scheduler: Scheduler) -> None:
    now = time.time()
    ids = [queued(scheduler, "b@x.test", at=now - 10 + n).id for n in range(5)]
    assert [m.id for m in scheduler.lease("r:1", 2, 60, now)] == ids[:2]
    assert queued(scheduler, "late@x.test", at=now + 100) and len(scheduler.lease("r:1", 10, 60, now)) == 3


def test_settle_removes_a_finished_message_and_stores_its_bounce(scheduler: Scheduler) -> None:
    message = queued(scheduler, "b@x.test", "c@x.test")
    leased = scheduler.lease("r:1", 10, 60)[0]
    leased.recipients[0].state = DELIVERED
    leased.recipients[1].state = FAILED
    bounce = Message(id=new_message_id(), sender="", recipients=[Recipient("a@example.com")], received_at=time.time(), size=1, next_attempt=time.time())
    scheduler.settle([Settlement(leased, "r:1", [(bounce, b"x")])])
    assert scheduler.store.get(message.id) is None and scheduler.store.body(message.id) is None
    assert scheduler.store.get(bounce.id) == bounce and scheduler.store.due() == [bounce.id]


def test_settle_reschedules_deferred_recipients_and_ends_the_lease(scheduler: Scheduler) -> None:
    message = queued(scheduler, "b@x.test", "c@x.test")
    leased = scheduler.lease("r:1", 10, 600)[0]
    later = time.time() + 120
    leased.recipients[0].state = DELIVERED
    leased.recipients[1].state, leased.recipients[1].next_attempt = DEFERRED, later
    scheduler.settle([Settlement(leased, "r:1")])
    stored = scheduler.store.get(message.id)
    assert stored is not None and stored.lease_owner == "" and stored.next_attempt == later
    assert scheduler.store.due(later - 1) == [] and scheduler.store.due(later + 1) == [message.id]


def test_settle_after_an_operator_deleted_the_message(scheduler: Scheduler) -> None:
    message = queued(scheduler, "b@x.test")
    leased = scheduler.lease("r:1", 10, 60)[0]
    scheduler.store.delete(message.id)
    leased.recipients[0].state = DELIVERED
    scheduler.settle([Settlement(leased, "r:1")])
    assert scheduler.store.count() == 0


def test_held_while_leased_stays_held(scheduler: Scheduler) -> None:
    message = queued(scheduler, "b@x.test")
    leased = scheduler.lease("r:1", 10, 60)[0]
    scheduler.store.set_held(message.id, True)
    leased.recipients[0].state, leased.recipients[0].next_attempt = DEFERRED, time.time()
    scheduler.settle([Settlement(leased, "r:1")])
    assert scheduler.store.get(message.id).state == HELD and scheduler.store.due(time.time() + 10**6) == []


def test_a_renewed_lease_keeps_the_message_from_other_runners(scheduler: Scheduler) -> None:
    now = time.time()
    message = queued(scheduler, "b@x.test", at=now - 1)
    scheduler.lease("r:1", 10, 60, now)
    assert scheduler.renew("r:1", [message.id], 60, now + 50) == 1
    assert scheduler.renew("r:2", [message.id], 60, now + 50) == 0  # not its lease
    assert scheduler.lease("r:2", 10, 60, now + 61) == []
    assert [m.id for m in scheduler.lease("r:2", 10, 60, now + 111)] == [message.id]


def test_a_stale_settle_keeps_the_new_lease_and_only_final_outcomes(scheduler: Scheduler) -> None:
    now = time.time()
    message = queued(scheduler, "b@x.test", "c@x.test", at=now - 3)
    stale = scheduler.lease("r:1", 10, 1, now - 2)[0]  # a lease that has already run out
    current = scheduler.lease("r:2", 10, 600)[0]
    stale.recipients[0].state = DELIVERED
    stale.recipients[1].state, stale.recipients[1].next_attempt = DEFERRED, now + 3600
    stale.recipients[1].delay_notified = True
    scheduler.settle([Settlement(stale, "r:1")])
    stored = scheduler.store.get(message.id)
    assert stored.lease_owner == "r:2" and stored.lease_until == current.lease_until
    assert [r.state for r in stored.recipients] == [DELIVERED, QUEUED]
    assert stored.recipients[1].delay_notified
    assert scheduler.store.due(current.lease_until - 1) == []


def test_released_while_leased_is_due_when_the_lease_ends(scheduler: Scheduler) -> None:
    message = queued(scheduler, "b@x.test")
    leased = scheduler.lease("r:1", 10, 60)[0]
    scheduler.store.set_held(message.id, True)
    scheduler.store.set_held(message.id, False)
    assert scheduler.store.due(leased.lease_until - 1) == [] and scheduler.store.due(leased.lease_until + 1) == [message.id]


def test_reclaim_takes_back_only_dead_owners_leases(scheduler: Scheduler) -> None:
    dead, alive = queued(scheduler, "b@x.test"), queued(scheduler, "c@x.test")
    scheduler.lease("dead:1", 1, 600)
    scheduler.lease("alive:2", 1, 600)
    assert scheduler.reclaim(lambda owner: owner.startswith("alive")) == 1
    assert scheduler.store.due() == [dead.id]
    assert scheduler.store.get(alive.id).lease_owner == "alive:2"


def test_make_due_and_etrn(scheduler: Scheduler) -> None:
    message = queued(scheduler, "b@sub.x.test")
    other = queued(scheduler, "c@y.test")
    for leased in scheduler.lease("r:1", 10, 60):
        leased.recipients[0].state, leased.recipients[0].next_attempt = DEFERRED, time.time() + 3600
        scheduler.settle([Settlement(leased, "r:1")])
    assert scheduler.store.due() == []
    scheduler.store.record_etrn(EtrnRequest("x.test", time.time()))
    assert scheduler.take_etrn_requests() == 1 and scheduler.store.due() == [message.id]
    assert scheduler.store.etrn_requests() == []
    assert scheduler.make_due() == 1 and set(scheduler.store.due()) == {message.id, other.id}
