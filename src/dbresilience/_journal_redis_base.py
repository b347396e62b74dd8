"""What the sync and async stream journals share and that does no I/O: the keys of a stream, the
payload of an entry and the Lua scripts (each one atomic, on the keys of one stream: one hash
tag, one slot of a Redis Cluster). See :mod:`dbresilience._journal_redis_async`."""

from __future__ import annotations

from typing import Any

from dbresilience._journal import Record, format_line
from dbresilience._redact import check_redis_url
from dbresilience._serialize import Serializer

__all__ = [
    "APPEND",
    "DONE",
    "GROUP",
    "LEASE",
    "REDIS_MAX_BULK",
    "RELEASE",
    "REPLAY",
    "check_stream_url",
    "encode",
    "producer_key",
    "stream_keys",
]

GROUP = "dbr"
# said by the drainer: the stream or its group found gone; a batch it cannot acknowledge
GONE = (
    "write queue: the stream %r or its consumer group is gone (deleted, or Redis restarted "
    "without persistence): writes it held and had not applied are lost; made again"
)
UNACKED = (
    "write queue: cannot acknowledge %d committed writes (%d for the dead-letter stream %r): "
    "%s; retrying, the batch stays pending"
)
# said at close by a queue that drained: writes in the stream wait for another drainer
LEFT_AT_CLOSE = (
    "write queue: closed with %d writes left in the stream %r for the next drainer "
    "(not applied by this one)"
)
# a submit refused: the write can never enter the stream
TOO_LARGE = (
    "write queue: this write is %d bytes in the stream; Redis takes at most "
    "proto-max-bulk-len=%d bytes a value: refused, not queued"
)
# a held write larger than Redis takes now (its limit lowered after the write was accepted)
TOO_LARGE_HELD = (
    "write queue: a write of %d bytes is larger than Redis takes now (proto-max-bulk-len=%d): "
    "LOST, never in the stream; the writes behind it go on"
)
SEND_BATCH = 1000  # entries per XADD script call
# Redis's default proto-max-bulk-len (512 MB), less room for the command's framing: the largest
# payload a stream takes until the server is asked its own; also the bytes of one append call
REDIS_MAX_BULK = 512 * 1024 * 1024 - 1024

# XADD each payload while the stream holds fewer than ARGV[1] entries; ARGV[2] is the first
# payload's ticket (this instance's count of writes), KEYS[2] this instance's marker: "ticket id"
# of the last one added. A call that timed out on the client (Redis frozen, a reply lost) may
# have run: its payloads come again and are skipped, never added twice. Returns {skipped, the
# marker's id when some were skipped, the ids added}; the rest stay with the caller
# (backpressure, never trimming)
APPEND = """
local first = tonumber(ARGV[2])
local done, last = 0, ''
local v = redis.pcall('GET', KEYS[2])
if type(v) == 'string' then
  local sp = string.find(v, ' ', 1, true)
  if sp then
    done = tonumber(string.sub(v, 1, sp - 1)) or 0
    last = string.sub(v, sp + 1)
  end
end
local skip = math.max(0, math.min(done - first + 1, #ARGV - 2))
local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
local ids = {}
for i = 3 + skip, #ARGV do
  if room <= 0 then break end
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
  room = room - 1
end
if #ids > 0 then
  redis.call('SET', KEYS[2], (first + skip + #ids - 1) .. ' ' .. ids[#ids], 'PX', 3600000)
end
if skip == 0 then last = '' end
return {skip, last, ids}
"""

# take or renew the lease: 2 newly taken, 1 renewed, 0 held by another
LEASE = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# a batch is done: ARGV = group, dead-letter bound, n, then n dead letters (4 values each: the
# last is the entry it comes from), then the batch's ids to XACK and XDEL. A dead letter is added
# only while its entry is still in the stream: a call run twice (its reply lost, the client
# sending it again) adds it once
DONE = """
local n = tonumber(ARGV[3])
local at = 4
local added = 0
for i = 1, n do
  local from = ARGV[at + 3]
  if from == '' or #redis.call('XRANGE', KEYS[1], from, from) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
               'd', ARGV[at], 'error', ARGV[at + 1], 'code', ARGV[at + 2], 'from', from)
    added = added + 1
  end
  at = at + 4
end
if at <= #ARGV then
  local ids = {unpack(ARGV, at)}
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return added
"""

# dead letters back into the stream (at its end), each removed from the dead-letter stream,
# while the stream holds fewer than ARGV[1] entries (its bound: never pushed past it). ARGV[2..]
# are the ids. Returns {moved, held back for lack of room (left in the dead-letter stream)}
REPLAY = """
local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
local moved, held = 0, 0
for i = 2, #ARGV do
  local e = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  if #e == 1 then
    if room <= 0 then
      held = held + 1
    else
      local f = e[1][2]
      for j = 1, #f, 2 do
        if f[j] == 'd' then
          redis.call('XADD', KEYS[1], '*', 'd', f[j + 1])
          redis.call('XDEL', KEYS[2], ARGV[i])
          moved = moved + 1
          room = room - 1
        end
      end
    end
  end
end
return {moved, held}
"""


def producer_key(stream: str, producer: str) -> str:
    """The key of *producer*'s append marker on *stream* (see ``APPEND``; expires after an
    hour: it only has to outlive a timed-out call until its payloads come again)."""
    return f"{{{stream}}}:p:{producer}"


def stream_keys(stream: str) -> tuple[str, str, str]:
    """The keys of *stream*: ``(stream, dead letters, lease)``, one hash tag for all three."""
    return f"{{{stream}}}", f"{{{stream}}}:dead", f"{{{stream}}}:lease"


def text(value: Any) -> str:
    """A reply element (bytes from redis-py) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def encode(record: Record, serializer: Serializer) -> str:
    """A write as a stream entry's payload: the file journal's line (see
    :func:`dbresilience._journal.format_line`), without its newline."""
    return format_line(record, serializer)[:-1].decode()


def check_stream_url(name: str, url: str, owner: str) -> str:
    """*url* if it is a Redis URL the stream journal can use: what redis-py parses
    (``redis://``, ``rediss://``, ``unix://``), ``redis+cluster://host:port[/…]`` (checked as
    ``redis://`` to that node) or ``redis+sentinel://host:port[,host:port]/service[/db]``
    (checked as ``redis://`` to the first sentinel, and a service named). ``ValueError`` naming
    *name* otherwise, never quoting a password (see :func:`check_redis_url`)."""
    for scheme in ("redis+cluster://", "redis+sentinel://"):
        if url.startswith(scheme):
            rest = url[len(scheme) :]
            userinfo, at, hosts = rest.rpartition("@")
            first, _, path = hosts.partition("/")
            if scheme == "redis+sentinel://" and not path.strip("/"):
                raise ValueError(f"{name}: a redis+sentinel:// URL names its service (…/service)")
            check_redis_url(name, f"redis://{userinfo}{at}{first.split(',')[0]}/0", owner)
            return url
    return check_redis_url(name, url, owner)
