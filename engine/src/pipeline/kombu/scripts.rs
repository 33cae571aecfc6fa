//! The server side of Kombu mode: two Lua scripts, each one atomic step, loaded on every
//! connection after its handshake (as reliable mode's).
//!
//! Records are Kombu's own: a field of the `unacked` hash whose value is
//! `[<element>, "", "<queue>"]` (the message as it was popped, the anonymous exchange and
//! the queue as routing key) and the same field in `unacked_index`, scored with the
//! delivery time in seconds. Kombu's `restore_visible` (any Python worker) therefore puts a
//! record ringq left behind back on its queue, at the step of its priority, marked
//! redelivered. The fields are ringq's own, `ringq:<consumer>:<key>:<n>`, numbered per key
//! by a counter in the key's held hash (`#n`), which also keeps `#tail`: every number
//! below it is settled. What a restart, or the recovery after a lost reply, gives back is
//! the records still in `unacked` between `#tail` and `#n`.
//!
//! Both scripts write in bulk (one `HSET`, one `ZADD`, one `HDEL`, one `ZREM` per batch):
//! a call from Lua into the server costs about as much as the write it makes.

use std::sync::LazyLock;

use crate::pipeline::alo::{Script, ScriptSet};

/// `KEYS`: `unacked`, `unacked_index`, then triples (level key, its held hash, its dead
/// list); `ARGV`: most elements to take, the score (seconds), the field base
/// `ringq:<consumer>:`, the time (ms), then per key the record tail (`, "", "<queue>"]`) and
/// the lowest number the engine may be given next (its floor: the counter never goes
/// below what the engine has seen, even if the server lost the counter). Pops up to that
/// many from the first non-empty key; each element that is a JSON object (`{…}`) is
/// recorded (value, index entry) in the same step, numbered by the key's counter; any
/// other is dead-lettered at once (a record of it would stop every Kombu worker's
/// `restore_visible`), numbered all the same. Returns `{key, elements, n}` (LMPOP's shape,
/// and the counter after them), or nil.
pub(crate) static KPOP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "kombu pop",
        r"local n = tonumber(ARGV[1])
for i = 3, #KEYS, 3 do
  local items = redis.call('RPOP', KEYS[i], n)
  if items then
    local a = 5 + 2 * (i - 3) / 3
    local tail, floor = ARGV[a], tonumber(ARGV[a + 1])
    local head = redis.call('HINCRBY', KEYS[i + 1], '#n', #items)
    if head < floor + #items then
      head = floor + #items
      redis.call('HSET', KEYS[i + 1], '#n', head)
    end
    local base, first = ARGV[3] .. KEYS[i] .. ':', head - #items
    local hv, zv = {}, {}
    for j, e in ipairs(items) do
      if string.byte(e, 1) == 123 and string.byte(e, -1) == 125 then
        local f = base .. (first + j - 1)
        hv[#hv + 1], hv[#hv + 2] = f, '[' .. e .. tail
        zv[#zv + 1], zv[#zv + 2] = ARGV[2], f
      else
        redis.call('LPUSH', KEYS[i + 2], '\0rq1 d=1 t=' .. ARGV[4] ..
          ' why=not%20a%20JSON%20object:%20dead-lettered%20by%20the%20pop%20script\n' .. e)
      end
    end
    for j = 1, #hv, 4000 do
      local k = math.min(j + 3999, #hv)
      redis.call('HSET', KEYS[1], unpack(hv, j, k))
      redis.call('ZADD', KEYS[2], unpack(zv, j, k))
    end
    return {KEYS[i], items, head}
  end
end
return false",
    )
});

/// `KEYS`: `unacked`, `unacked_index`, the key's held hash, the key, its dead list;
/// `ARGV`: the dead list's cap, the key's new `#tail` (or `-`), the number of acks, the
/// acked fields, then triples (op, field, element). Acks remove their records in bulk;
/// each other op first removes its record, and only when the value was still there (no
/// one else restored or acked it) acts: `l` pushes the element onto the key's left end
/// (the tail: served last, Kombu's reject-requeue), `r` onto its right end (served next,
/// as Kombu's restore), `d` onto the dead list (capped); `a` does nothing more. Returns
/// how many found their record gone (stale).
pub(crate) static KSETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "kombu settle",
        r"local cap, nacks = tonumber(ARGV[1]), tonumber(ARGV[3])
local stale = 0
for j = 4, 3 + nacks, 4000 do
  local k = math.min(j + 3999, 3 + nacks)
  stale = stale + (k - j + 1) - redis.call('HDEL', KEYS[1], unpack(ARGV, j, k))
  redis.call('ZREM', KEYS[2], unpack(ARGV, j, k))
end
for i = 4 + nacks, #ARGV, 3 do
  local op, f, e = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local had = redis.call('HDEL', KEYS[1], f)
  redis.call('ZREM', KEYS[2], f)
  if had == 0 then
    stale = stale + 1
  elseif op == 'l' then
    redis.call('LPUSH', KEYS[4], e)
  elseif op == 'r' then
    redis.call('RPUSH', KEYS[4], e)
  elseif op == 'd' then
    redis.call('LPUSH', KEYS[5], e)
    redis.call('LTRIM', KEYS[5], 0, cap - 1)
  end
end
if ARGV[2] ~= '-' and tonumber(ARGV[2]) > (tonumber(redis.call('HGET', KEYS[3], '#tail')) or 0) then
  redis.call('HSET', KEYS[3], '#tail', ARGV[2])
end
return stale",
    )
});

/// `KEYS`: `unacked`, `unacked_index`, the list for records that cannot be restored;
/// `ARGV`: groups (field, element, n, n target keys). Each record still in `unacked` is
/// removed and its element pushed onto each target's right end (served next, as Kombu's
/// `restore_by_tag`), or, with no target, onto the list of the unrestorable; a record
/// already gone only loses its index entry. Returns how many were restored.
pub(crate) static KRESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "kombu restore",
        r"local moved, i = 0, 1
while i <= #ARGV do
  local f, e, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local had = redis.call('HDEL', KEYS[1], f)
  redis.call('ZREM', KEYS[2], f)
  if had == 1 then
    if n == 0 then
      redis.call('LPUSH', KEYS[3], e)
    else
      for j = 1, n do redis.call('RPUSH', ARGV[i + 2 + j], e) end
      moved = moved + 1
    end
  end
  i = i + 3 + n
end
return moved",
    )
});

/// `KEYS`: `unacked_mutex`; `ARGV`: the token it was taken with. Releases the mutex only
/// if this consumer still holds it (redis-py's `Lock.release`, which Kombu uses).
pub(crate) static KUNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "kombu unlock",
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

/// Every Kombu-mode script, loaded on every connection.
pub(crate) static SET: ScriptSet = ScriptSet(&[&KPOP, &KSETTLE, &KRESTORE, &KUNLOCK]);
