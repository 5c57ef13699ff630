"""The counters of fastmta.counters.interface in Redis, shared by every node of a cluster, plus its switches and heartbeats.

Every update is one Lua script (EVALSHA), so it is atomic and costs one round trip; every key has
an expiry. Rates use the same sliding-window counter as state.lmdb: two string keys per kind, key
and window, expiring when they stop counting.

An SMTP connection costs one script of its own: its opening, which also takes its first
reservations of messages and recipients. An SMTP worker need not wait for it (open_soon): the
openings asked within one turn of its event loop go in one write and their answers are read as
they arrive (answers()), in order, on the same connection as every other command of the counting
path. A close needs no answer: it waits for the process's next write (the next openings, usually),
or for the once-a-second sweep. Meanwhile the limits count it as still open, and what it gives back
as still taken: stricter for up to a second, never more lenient.

What is held open (SMTP connections per IP and per node, connections to a destination) is kept per
owner, "<node>:<pid>", as a field of one hash per thing counted. The owner keeps the truth in its
own memory and writes its absolute count, so Redis can always be told again (republish). An owner
says it is alive with a key that expires after ALIVE_SECONDS unless renewed (sweep, once a
second); the scripts drop the fields of owners whose alive key is gone, so the connections of a
node that died stop counting within ALIVE_SECONDS.

The window of a rate is computed from the caller's clock: nodes need synchronised clocks (NTP),
as for any cluster; a skew of s seconds shifts a window's weighting by s/window.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from fastmta.counters.interface import Opened, Unused, Wanted
from fastmta.processes import alive

# An owner that stops renewing its alive key stops counting after this long.
ALIVE_SECONDS = 15.0
# A hash of held counts outlives its last change by this long (a held connection keeps renewing it).
HOLD_SECONDS = 86400.0
# A switch outlives its last change by this long; every node keeps a copy and writes it back if it is gone.
SWITCH_SECONDS = 30 * 86400.0
_NODES_SECONDS = 7 * 86400.0

# The sliding window of fastmta.ratelimit, in Lua: room under ARGV limit given the current and previous windows.
_WINDOW = """
local function window_take(current_key, previous_key, limit, want, partial, overlap, ttl_ms)
  local current = tonumber(redis.call('GET', current_key) or '0')
  local previous = tonumber(redis.call('GET', previous_key) or '0')
  local room = math.floor(limit - (current + previous * overlap))
  if room < 0 then room = 0 end
  local granted = want
  if want > room then
    if partial == 1 then granted = room else granted = 0 end
  end
  if granted > 0 then
    redis.call('INCRBY', current_key, granted)
    redis.call('PEXPIRE', current_key, ttl_ms)
  end
  return granted
end
"""

_TAKE = _WINDOW + """
return window_take(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
"""

# KEYS: alive, rate current, rate previous, the hashes, then a current and a previous window key per
# reservation; ARGV: owner, alive prefix, alive ms, hold ms, rate limit (0: none), overlap, rate ms,
# limit of the first hash (0: none), number of hashes, the owner's new count per hash, then limit,
# want, overlap and ms per reservation. Returns {-1} when the rate refuses, {-2} when the first hash
# is at its limit (nothing written then), else the live total of each hash, this owner's new count
# included, then what each reservation was granted.
_HOLD = _WINDOW + """
local owner, prefix, hashes = ARGV[1], ARGV[2], tonumber(ARGV[9])
local function others(key)
  local sum = 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local who = fields[i]
    if who ~= owner then
      if redis.call('EXISTS', prefix .. who) == 1 then sum = sum + tonumber(fields[i + 1])
      else redis.call('HDEL', key, who) end
    end
  end
  return sum
end
local answer = {}
for i = 1, hashes do answer[i] = others(KEYS[i + 3]) + tonumber(ARGV[i + 9]) end
local limit = tonumber(ARGV[8])
if limit > 0 and answer[1] > limit then return {-2} end
local rate = tonumber(ARGV[5])
if rate > 0 and window_take(KEYS[2], KEYS[3], rate, 1, 0, tonumber(ARGV[6]), ARGV[7]) == 0 then return {-1} end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
for i = 1, hashes do
  redis.call('HSET', KEYS[i + 3], owner, ARGV[i + 9])
  redis.call('PEXPIRE', KEYS[i + 3], ARGV[4])
end
local key, arg = hashes + 4, hashes + 10
while key < #KEYS do
  answer[#answer + 1] = window_take(KEYS[key], KEYS[key + 1], tonumber(ARGV[arg]), tonumber(ARGV[arg + 1]), 1,
                                    tonumber(ARGV[arg + 2]), ARGV[arg + 3])
  key, arg = key + 2, arg + 4
end
return answer
"""

# KEYS: hash..., then rate keys to give back to; ARGV: owner, number of hashes, hold ms, the
# owner's count per hash (0: its field goes), then the amount per rate key.
_RELEASE = """
local owner, hashes = ARGV[1], tonumber(ARGV[2])
for i = 1, hashes do
  if tonumber(ARGV[i + 3]) > 0 then
    redis.call('HSET', KEYS[i], owner, ARGV[i + 3])
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  else
    redis.call('HDEL', KEYS[i], owner)
  end
end
for i = hashes + 1, #KEYS do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count > 0 then
    local left = count - tonumber(ARGV[i + 3])
    if left < 0 then left = 0 end
    redis.call('SET', KEYS[i], left, 'KEEPTTL')
  end
end
return 0
"""

# KEYS: the switch's hash; ARGV: changed at, value, ms. The later change wins, whichever node saw it first.
_SWITCH = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and tonumber(at) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'at', ARGV[1], 'value', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def client(url: str, timeout: float) -> redis.Redis:
    """A pooled client that fails fast: no retries of its own, `timeout` for connecting and for each reply.

    The caller falls back to local state on failure rather than wait, so retrying here would
    only stall a session.
    """
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class Opening(NamedTuple):
    """A connection_opened() written without waiting for its answer (open_soon); `token` tells the asker which it is."""

    token: object
    ip: str
    per_minute: int
    reserve: Sequence[Wanted]


class _Release(NamedTuple):
    """A release not sent yet: the hashes whose counts it writes (as they are when sent), and what goes back to which window."""

    hashes: Sequence[str]
    rate_keys: Sequence[str] = ()
    amounts: Sequence[int] = ()


class _Unread(NamedTuple):
    """A command written whose reply is still to be read: an opening (its counts were raised as it was written), a
    release, or neither (a script told to Redis again)."""

    opening: Opening | None
    hashes: Sequence[str]
    release: _Release | None
    written_at: float  # time.monotonic()


def _nothing() -> None:
    """Nobody to tell."""


def _bytes(value: bytes | str) -> bytes:
    """redis-py types replies as bytes or str, by a client option; this client never decodes."""
    return value if isinstance(value, bytes) else value.encode()


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _as_redis_error(error: BaseException) -> redis.RedisError:
    """What the openings still unanswered hear when a write or read failed."""
    return error if isinstance(error, redis.RedisError) else redis.ConnectionError(repr(error))


def _connections_rate(ip: str, per_minute: int) -> tuple[str, str, int, float] | None:
    """The per-minute limit of new connections from `ip`, as _hold_command takes it."""
    return ("connections", ip, per_minute, 60.0) if per_minute > 0 else None


def _opened(sums: Sequence[int]) -> Opened | None:
    """_HOLD's answer to a connection's opening: None when the per-minute rate refused it."""
    return None if sums[0] < 0 else Opened(sums[0], sums[1], tuple(sums[2:]))


_ALIVE_MS, _HOLD_MS = _ms(ALIVE_SECONDS), _ms(HOLD_SECONDS)


def _packed(commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """One buffer, so one send: redis-py sends each item of the list on its own."""
    return [b"".join([hiredis.pack_command(command) for command in commands])]


class RedisCounters:
    """One process's view; `node` names the node, the pid the process within it."""

    def __init__(self, connection: redis.Redis, prefix: str, node: str) -> None:
        self._redis = connection
        self._prefix = prefix
        self._node = node
        self.owner = f"{node}:{os.getpid()}"
        self._alive_key = f"{prefix}alive:{self.owner}"
        self._take = connection.register_script(_TAKE)
        self._hold = connection.register_script(_HOLD)
        self._release = connection.register_script(_RELEASE)
        self._switch = connection.register_script(_SWITCH)
        # The counting path's own connection (see _send); connected at its first command, again after a failure.
        self._connection = connection.connection_pool.make_connection()
        # This owner's counts by hash key: the truth that Redis is told; and every hash it wrote a
        # field in since it last told Redis everything, so a republish can remove what no longer holds.
        self._held: Counter[str] = Counter()
        self._touched: set[str] = set()
        # Releases not sent yet: they go before the next command.
        self._pending: list[_Release] = []
        # Commands written by open_soon whose replies are not read yet, in the order written; and
        # the openings answered and not yet collected by answers().
        self._unread: deque[_Unread] = deque()
        self._answered: list[tuple[Opening, Opened | None | redis.RedisError]] = []
        # Openings Redis refused for not knowing the scripts (restarted, or flushed them): written again,
        # behind the scripts, by answers(); and whether the next write must tell Redis the scripts.
        self._refused: list[Opening] = []
        self._scripts_unknown = False
        # Set by whoever reads answers on an event loop (fastmta.smtp.admissions): told before the
        # connection closes, and when answers wait that no reply of its own will announce.
        self.stop_reading: Callable[[], None] = _nothing
        self.answers_waiting: Callable[[], None] = _nothing

    def _run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """The script's answer; releases waiting to be sent go first, in the same round trip."""
        return self._with_pending(("EVALSHA", script.sha, len(keys), *keys, *args))[-1]

    def _with_pending(self, *commands: tuple[Any, ...]) -> list[Any]:
        """One round trip: the releases waiting to be sent, then `commands`; the replies to `commands`.

        Scripts go by EVALSHA alone. A Redis that does not know them (restarted) is told them,
        once, and everything is sent again: none of the scripts ran, as none was known, and the
        other commands are ones that can run twice.
        """
        pending, self._pending = self._pending, []
        batch = [self._release_command(release) for release in pending] + list(commands)
        try:
            return self._send(batch)[len(pending):]
        except redis.exceptions.NoScriptError:
            for script in self._scripts():
                self._redis.script_load(script.script)
            self._scripts_unknown = False
            return self._send(batch)[len(pending):]

    def _scripts(self) -> tuple[Script, ...]:
        return (self._take, self._hold, self._release, self._switch)

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The raw replies to `commands`, written at once on this process's own connection.

        The counting path skips redis-py's command methods and pipelines: their retry wrapper,
        pool checkout (a poll of the socket), reply callbacks and argument checks cost 150-200 µs
        of CPU per round trip on the reference machine, this about 50 with hiredis packing the
        commands (docs/scaling.md, "Measured"). Replies to openings written earlier (open_soon) come
        first: they are read and kept for answers(). A failure leaves the connection closed, with no
        reply half-read; the next command connects again.
        """
        connection = self._connection
        try:
            connection.send_packed_command(_packed(commands))
            if self._unread:
                while self._unread:
                    self._read_unread()
                self.answers_waiting()
            return [connection.read_response() for _ in commands]
        except BaseException as error:
            self.abandon(_as_redis_error(error))
            raise

    def _release_command(self, release: _Release) -> tuple[Any, ...]:
        """The counts are this owner's when the command is written: the last write to a hash always tells the truth."""
        keys = [*release.hashes, *release.rate_keys]
        counts = [self._held[name] for name in release.hashes]
        return ("EVALSHA", self._release.sha, len(keys), *keys,
                self.owner, len(release.hashes), _HOLD_MS, *counts, *release.amounts)  # fmt: skip

    # ----- openings answered later ------------------------------------------------------------

    def open_soon(self, openings: Sequence[Opening]) -> None:
        """Writes the openings, after the releases waiting, without reading the replies: answers() gives them.

        An opening's counts are raised as it is written, so that whatever is written after it counts
        it; they are lowered again if Redis refuses it or cannot answer. After a NOSCRIPT the scripts
        go first, in the same write.
        """
        at = time.time()
        written_at = time.monotonic()
        commands: list[tuple[Any, ...]] = []
        unread: list[_Unread] = []
        if self._scripts_unknown:
            self._scripts_unknown = False
            commands = [("SCRIPT", "LOAD", script.script) for script in self._scripts()]
            unread = [_Unread(None, (), None, written_at) for _ in commands]
        pending, self._pending = self._pending, []
        commands += [self._release_command(release) for release in pending]
        unread += [_Unread(None, (), release, written_at) for release in pending]
        for opening in openings:
            hashes = self._connection_hashes(opening.ip)
            rate = _connections_rate(opening.ip, opening.per_minute)
            commands.append(self._hold_command(hashes, 0, rate, at, opening.reserve))
            self._raise(hashes)
            unread.append(_Unread(opening, hashes, None, written_at))
        try:
            self._connection.send_packed_command(_packed(commands))
        except BaseException as error:
            for entry in unread:
                self._lower(entry.hashes)
            self.abandon(_as_redis_error(error))
            raise
        self._unread.extend(unread)

    def answers(self, readable: bool = False) -> list[tuple[Opening, Opened | None | redis.RedisError]]:
        """The openings answered since the last call, reading the replies that have arrived without waiting for more.

        `readable`: the event loop says the connection has something to read. With no reply awaited
        that is the server closing it. None is a refusal (connections_per_minute); an error is
        Redis's failure to answer (the connection is closed then, and no opening is left
        unanswered). Openings refused because Redis did not know the scripts are written again, behind
        them, and answered by a later call. Raises an error reply other than NOSCRIPT (to a release:
        an opening's is its answer), as a command that waits for its reply would.
        """
        connection = self._connection
        try:
            if readable and self._unread:
                self._read_unread()
            elif readable and connection.can_read(timeout=0):  # raises if closed
                raise redis.ConnectionError("Redis sent what was not asked for")
            while self._unread and connection.can_read(timeout=0):
                self._read_unread()
        except redis.RedisError as error:
            self.abandon(error)
            if isinstance(error, redis.ResponseError):
                raise  # an error reply to a release: the caller gives up on Redis; the next call gives the answers
        refused, self._refused = self._refused, []
        if refused:
            try:
                self.open_soon(refused)
            except redis.RedisError as error:  # written again or answered: never left waiting
                self._answered += [(opening, error) for opening in refused]
        answered, self._answered = self._answered, []
        return answered

    def unanswered_since(self) -> float | None:
        """When (time.monotonic()) the oldest opening still without an answer was written."""
        return self._unread[0].written_at if self._unread else None

    def reply_fd(self) -> int | None:
        """The file descriptor to watch for replies (and for the server closing it), while connected."""
        sock = self._connection._sock  # type: ignore[attr-defined]  # redis-py offers no public accessor
        return None if sock is None else sock.fileno()

    def abandon(self, error: redis.RedisError) -> None:
        """Closes the connection; the openings still unanswered get `error` as their answer, their counts lowered again."""
        self.stop_reading()
        self._connection.disconnect()
        for entry in self._unread:
            self._lower(entry.hashes)
            if entry.opening is not None:
                self._answered.append((entry.opening, error))
        self._unread.clear()
        if not isinstance(error, redis.exceptions.NoScriptError):  # else still written again, by answers()
            self._answered += [(opening, error) for opening in self._refused]
            self._refused.clear()
        if self._answered:
            self.answers_waiting()

    def _read_unread(self) -> None:
        """Reads the oldest reply awaited. A NOSCRIPT reply's command is written again, behind the scripts; any
        other error reply fails as it would for a command that waits for its reply (the caller gives up on Redis)."""
        entry = self._unread[0]
        try:
            reply: Any = self._connection.read_response()
        except redis.ResponseError as error:  # an error reply; the connection is fine
            self._unread.popleft()
            if entry.opening is not None:
                self._lower(entry.hashes)
                self._refused.append(entry.opening)  # written again, or answered with the error by abandon()
            if not isinstance(error, redis.exceptions.NoScriptError):
                raise
            self._scripts_unknown = True
            if entry.release is not None:
                self._pending.append(entry.release)
            return
        self._unread.popleft()
        if entry.opening is not None:
            self._answered.append((entry.opening, self._opened(entry.hashes, reply)))

    def _opened(self, hashes: Sequence[str], reply: Any) -> Opened | None:
        opened = _opened([int(value) for value in reply])
        if opened is None:
            self._lower(hashes)
            # What was written after it counted it: written again, right, with the next command.
            self._pending.append(_Release(hashes))
        return opened

    def _raise(self, hashes: Sequence[str]) -> None:
        for name in hashes:
            self._held[name] += 1
            self._touched.add(name)

    def _lower(self, hashes: Sequence[str]) -> None:
        for name in hashes:
            self._held[name] -= 1
            if self._held[name] <= 0:
                del self._held[name]


    # ----- rates ------------------------------------------------------------------------------

    def _rate_keys(self, kind: str, key: str, window: float, now: float) -> tuple[list[str], float, int]:
        """The current and previous window's keys, the previous one's overlap, the current one's time to live."""
        index = math.floor(now / window)
        base = f"{self._prefix}rate:{kind}:{key}:"
        return [f"{base}{index}", f"{base}{index - 1}"], 1.0 - (now / window - index), _ms((index + 2) * window - now)

    def _window_take(self, kind: str, key: str, limit: int, window: float, want: int, now: float | None, partial: bool) -> int:
        keys, overlap, ttl = self._rate_keys(kind, key, window, time.time() if now is None else now)
        return int(self._run(self._take, keys, [limit, want, int(partial), repr(overlap), ttl]))

    def hit(self, kind: str, key: str, limit: int, window: float, now: float | None = None, amount: int = 1) -> bool:
        if limit <= 0:
            return True
        return self._window_take(kind, key, limit, window, amount, now, partial=False) == amount

    def take(self, kind: str, key: str, limit: int, window: float, want: int, now: float | None = None) -> int:
        return self._window_take(kind, key, limit, window, want, now, partial=True)

    def count(self, kind: str, key: str, window: float, now: float | None = None) -> float:
        keys, overlap, _ = self._rate_keys(kind, key, window, time.time() if now is None else now)
        current, previous = (int(raw or 0) for raw in self._with_pending(("MGET", *keys))[-1])
        return current + previous * overlap

    def add(self, kind: str, key: str, window: float, at: float, amount: int) -> None:
        """Counts `amount` events that happened at `at` without a limit: what a node counted alone, told later."""
        index = math.floor(at / window)
        ttl = (index + 2) * window - time.time()
        if ttl > 0:
            name = f"{self._prefix}rate:{kind}:{key}:{index}"
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.incrby(name, amount)
                pipe.pexpire(name, _ms(ttl))
                pipe.execute()

    # ----- what is held open ------------------------------------------------------------------

    def _holding(
        self,
        hashes: Sequence[str],
        limit: int,
        rate: tuple[str, str, int, float] | None,
        now: float | None,
        reserve: Sequence[Wanted] = (),
    ) -> list[int]:
        command = self._hold_command(hashes, limit, rate, time.time() if now is None else now, reserve)
        sums = [int(value) for value in self._with_pending(command)[-1]]
        if sums[0] >= 0:
            self._raise(hashes)
        return sums

    def _hold_command(
        self,
        hashes: Sequence[str],
        limit: int,
        rate: tuple[str, str, int, float] | None,
        at: float,
        reserve: Sequence[Wanted],
    ) -> tuple[Any, ...]:
        """_HOLD for one more held of each hash by this owner."""
        counts = [self._held[name] + 1 for name in hashes]
        if rate is None:
            rate_keys, overlap, rate_ttl, rate_limit = ["", ""], 0.0, 1, 0
        else:
            kind, key, rate_limit, window = rate
            rate_keys, overlap, rate_ttl = self._rate_keys(kind, key, window, at)
        reserve_keys: list[str] = []
        reserve_args: list[Any] = []
        for wanted in reserve:
            keys, wanted_overlap, ttl = self._rate_keys(wanted.kind, wanted.key, wanted.window, at)
            reserve_keys += keys
            reserve_args += [wanted.limit, wanted.want, repr(wanted_overlap), ttl]
        keys = [self._alive_key, *rate_keys, *hashes, *reserve_keys]
        return ("EVALSHA", self._hold.sha, len(keys), *keys,
                self.owner, f"{self._prefix}alive:", _ALIVE_MS, _HOLD_MS, rate_limit, repr(overlap),
                rate_ttl, limit, len(hashes), *counts, *reserve_args)  # fmt: skip

    def _letting_go(self, hashes: Sequence[str], give_back: Iterable[Unused], now: float | None, later: bool = False) -> None:
        """Written now, or with the next command when `later`."""
        self._lower(hashes)
        rate_keys, amounts = [], []
        for kind, key, window, amount in give_back:
            keys, _, _ = self._rate_keys(kind, key, window, time.time() if now is None else now)
            rate_keys.append(keys[0])
            amounts.append(amount)
        release = _Release(hashes, rate_keys, amounts)
        if later:
            self._pending.append(release)
        else:
            self._with_pending(self._release_command(release))

    def _connection_hashes(self, ip: str) -> list[str]:
        return [f"{self._prefix}conn:{ip}", f"{self._prefix}conn-total:{self._node}"]

    def connection_opened(
        self, ip: str, per_minute: int = 0, now: float | None = None, reserve: Sequence[Wanted] = ()
    ) -> Opened | None:
        return _opened(self._holding(self._connection_hashes(ip), 0, _connections_rate(ip, per_minute), now, reserve))

    def connection_closed(self, ip: str, give_back: Iterable[Unused] = (), now: float | None = None) -> None:
        self._letting_go(self._connection_hashes(ip), give_back, now, later=True)

    def acquire(self, kind: str, key: str, limit: int) -> bool:
        """One more of `kind` held for `key` unless `limit` are held across the cluster already."""
        return self._holding([f"{self._prefix}hold:{kind}:{key}"], limit, None, None)[0] >= 0

    def release(self, kind: str, key: str) -> None:
        self._letting_go([f"{self._prefix}hold:{kind}:{key}"], (), None)

    def connections(self) -> Counter[str]:
        """This owner's open connections by client IP."""
        start = f"{self._prefix}conn:"
        return Counter({name[len(start):]: count for name, count in self._held.items() if name.startswith(start)})

    def adopt_connections(self, by_ip: Counter[str]) -> None:
        """Connections counted elsewhere (while Redis was unreachable) become this owner's; republish() tells Redis."""
        for ip, count in by_ip.items():
            for name in self._connection_hashes(ip):
                self._held[name] += count

    def forget_connections(self) -> None:
        """Counted elsewhere from now on; their fields stay until a republish removes them or this owner is taken for dead."""
        start = (f"{self._prefix}conn:", f"{self._prefix}conn-total:")
        for name in [name for name in self._held if name.startswith(start)]:
            del self._held[name]

    def forget_hold(self, kind: str, key: str) -> None:
        """A hold let go while Redis was unreachable: republish() tells Redis."""
        name = f"{self._prefix}hold:{kind}:{key}"
        self._held[name] = max(0, self._held[name] - 1)
        if not self._held[name]:
            del self._held[name]

    def holds(self, kind: str, key: str) -> int:
        return self._held[f"{self._prefix}hold:{kind}:{key}"]

    def republish(self) -> None:
        """Tells Redis this owner's counts again: after an outage, or when its fields were dropped as dead."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._alive_key, "1", px=_ALIVE_MS)
            for name in self._touched - set(self._held):
                pipe.hdel(name, self.owner)
            for name, count in self._held.items():
                pipe.hset(name, self.owner, count)
                pipe.pexpire(name, _HOLD_MS)
            pipe.execute()
        self._touched = set(self._held)
        # The counts just written are newer than the waiting releases' (what those gave back of rate
        # windows is dropped: stricter until the window passes).
        self._pending.clear()

    def _scan(self, pattern: str) -> list[str]:
        return [name.decode() for name in self._redis.scan_iter(match=pattern, count=1000)]

    # ----- upkeep -----------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Sends releases still waiting; renews this owner's alive key; if it had expired (a stall, a
        Redis restart), tells its counts again."""
        created = self._with_pending(("SET", self._alive_key, "1", "PX", _ALIVE_MS, "NX"))[-1]
        if created and self._held:
            self.republish()
        elif not created:
            self._redis.pexpire(self._alive_key, _ALIVE_MS)
        return 0

    def forget_dead_processes(self) -> int:
        """This node's owners whose process is gone stop counting now rather than when their alive key expires."""
        dead = [
            name for name in self._scan(f"{self._prefix}alive:{self._node}:*")
            if name.rpartition(":")[2].isdigit() and not alive(int(name.rpartition(":")[2]))
        ]  # fmt: skip
        if dead:
            self._redis.delete(*dead)
        return len(dead)

    def ping(self) -> None:
        self._redis.ping()

    # ----- switches and heartbeats ------------------------------------------------------------

    def switch(self, name: str) -> tuple[float, bytes] | None:
        """A switch's value and when it was changed, or None if it was never set (or expired)."""
        found = self._redis.hmget(f"{self._prefix}switch:{name}", ["at", "value"])
        return None if found[0] is None else (float(found[0]), _bytes(found[1] or b""))

    def set_switch(self, name: str, at: float, value: bytes) -> bool:
        """Sets the switch unless it was changed later than `at`; True if it was set."""
        return bool(self._switch([f"{self._prefix}switch:{name}"], [repr(at), value, _ms(SWITCH_SECONDS)]))

    def beat(self, report: bytes, ttl: float) -> None:
        """This node's heartbeat: `report` is listed by nodes() until `ttl` passes without another."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self._prefix}node:{self._node}", report, px=_ms(ttl))
            pipe.sadd(f"{self._prefix}nodes", self._node)
            pipe.pexpire(f"{self._prefix}nodes", _ms(_NODES_SECONDS))
            pipe.execute()

    def nodes(self) -> dict[str, bytes]:
        """The last heartbeat of every node seen within its ttl, by node id."""
        names = sorted(_bytes(name).decode() for name in self._redis.smembers(f"{self._prefix}nodes"))
        if not names:
            return {}
        reports = self._redis.mget([f"{self._prefix}node:{name}" for name in names])
        gone = [name for name, report in zip(names, reports, strict=True) if report is None]
        if gone:
            self._redis.srem(f"{self._prefix}nodes", *gone)
        return {name: _bytes(report) for name, report in zip(names, reports, strict=True) if report is not None}

    def close(self) -> None:
        """A process that stops holds nothing: its alive key goes, so its fields stop counting at once."""
        try:
            self._with_pending(("DEL", self._alive_key))
        except redis.RedisError:
            pass  # they stop counting when the key expires
        self.stop_reading()
        self._connection.disconnect()
        self._redis.close()
