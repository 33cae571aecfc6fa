//! Stream mode's server-side steps that must be atomic or need the delivery counts, as
//! Lua scripts (a [`ScriptSet`] of the at-least-once core: loaded on Control, run with
//! EVALSHA).

use std::sync::LazyLock;

use crate::pipeline::alo::{Script, ScriptSet};

/// Own pending entries, or claims from dead consumers, with their delivery counts.
/// `KEYS`: the stream. `ARGV`: group, consumer, mode (`own` | `claim`), cursor, count,
/// min-idle (ms, claims only).
/// - `own`: `XREADGROUP … STREAMS s <cursor>` (this consumer's pending entries after the
///   cursor; the cursor returned is the last id read, empty when none are left).
///   Entries the server deleted (trimmed, XDEL) come back without fields: they are
///   acknowledged here and counted.
/// - `claim`: `XAUTOCLAIM s g c <min-idle> <cursor> COUNT n`; the cursor returned is where
///   the next call goes on (`0-0`: the whole PEL was seen). Deleted ids (Redis 7 lists
///   them, already out of the PEL) are counted.
///
/// Returns `{cursor, entries, delivery counts (XPENDING, this delivery included),
/// deleted}`.
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stream-fetch",
        r"local s, g, me, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local entries, cursor, deleted = {}, '', 0
if mode == 'own' then
  local r = redis.call('XREADGROUP', 'GROUP', g, me, 'COUNT', ARGV[5], 'STREAMS', s, ARGV[4])
  local got = (r and r[1] and r[1][2]) or {}
  for _, e in ipairs(got) do
    cursor = e[1]
    if e[2] then
      entries[#entries + 1] = e
    else
      redis.call('XACK', s, g, e[1])
      deleted = deleted + 1
    end
  end
else
  local r = redis.call('XAUTOCLAIM', s, g, me, ARGV[6], ARGV[4], 'COUNT', ARGV[5])
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if e and e[2] then entries[#entries + 1] = e end
  end
  if r[3] then deleted = #r[3] end
end
local counts = {}
for i, e in ipairs(entries) do
  local p = redis.call('XPENDING', s, g, e[1], e[1], 1)
  counts[i] = (p[1] and p[1][4]) or 1
end
return {cursor, entries, counts, deleted}
",
    )
});

/// Dead letters. `KEYS`: the stream, its dead stream. `ARGV`: group, dead stream's
/// `MAXLEN ~`, delete (`1`: XDEL the entry too), now (ms), then triples (id, reason,
/// deliveries). For each entry still pending, one atomic step: XACK it and XADD its
/// fields plus `ringq-id`, `ringq-reason`, `ringq-deliveries` and `ringq-dead-at` to the
/// dead stream. An entry no longer pending (acked by a copy elsewhere) is skipped, so a
/// batch sent twice adds nothing twice. Returns how many went dead.
pub(crate) static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stream-dead",
        r"local s, dead, g = KEYS[1], KEYS[2], ARGV[1]
local n = 0
for i = 5, #ARGV, 3 do
  local id = ARGV[i]
  local e = redis.call('XRANGE', s, id, id)
  if redis.call('XACK', s, g, id) == 1 then
    local f = (e[1] and e[1][2]) or {}
    f[#f + 1] = 'ringq-id'
    f[#f + 1] = id
    f[#f + 1] = 'ringq-reason'
    f[#f + 1] = ARGV[i + 1]
    f[#f + 1] = 'ringq-deliveries'
    f[#f + 1] = ARGV[i + 2]
    f[#f + 1] = 'ringq-dead-at'
    f[#f + 1] = ARGV[4]
    redis.call('XADD', dead, 'MAXLEN', '~', ARGV[2], '*', unpack(f))
    if ARGV[3] == '1' then redis.call('XDEL', s, id) end
    n = n + 1
  end
end
return n
",
    )
});

/// Acknowledge and delete in one step (servers without XACKDEL). `KEYS`: the stream;
/// `ARGV`: group, ids. Returns how many were acknowledged.
pub(crate) static ACKDEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "stream-ackdel",
        r"local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return n
",
    )
});

/// Every script, in load order.
pub(crate) static SET: ScriptSet = ScriptSet(&[&FETCH, &DEAD, &ACKDEL]);
