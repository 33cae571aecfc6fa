//! The server side of reliable mode: four Lua scripts, each one atomic step. They are
//! loaded (`SCRIPT LOAD`) on every connection right after its handshake and run with
//! `EVALSHA`; the SHA-1s are computed here, so a command can follow its load at once.
//!
//! Element order: a lease `LPUSH`es onto the leased list, so its tail holds the oldest
//! leased element; recovery moves elements back to the *right* end of the queue, the end
//! pops take from, so they are served first, oldest first.
//!
//! Positions: the engine numbers the elements of each leased list in the order its
//! leases answered (one connection leases into a list, so that is the server's order),
//! from 0 when the list was last emptied by a recovery. Only the head grows (leases) and
//! only the tail shrinks (settles, by whole runs of settled elements), and an element
//! settled out of order is overwritten, not removed, so a position never moves: an
//! outcome names its element by position, and the lease hash keeps where the tail is.

use std::sync::LazyLock;

use crate::pipeline::alo::{Script, ScriptSet};

/// `KEYS`: triples (queue key, leased list, lease hash); `ARGV`: most elements to take,
/// this run's fence token. Takes up to that many from the first non-empty queue key
/// (`RPOP` with a count) and pushes them onto its leased list, returning `{key, elements,
/// head}` (LMPOP's shape, and the list's head position after the push: the lease hash's
/// `tail` plus the list's length), or nil. When the lease hash does not carry the token
/// (another consumer took this one's leases back: its heartbeat had expired), nothing is
/// taken and the reply is `-1`.
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "lease",
        r"local n = tonumber(ARGV[1])
for i = 1, #KEYS, 3 do
  local items = redis.call('RPOP', KEYS[i], n)
  if items then
    if redis.call('HGET', KEYS[i + 2], 'fence') ~= ARGV[2] then
      for j = #items, 1, -1 do redis.call('RPUSH', KEYS[i], items[j]) end
      return -1
    end
    local len = 0
    for j = 1, #items, 1000 do
      len = redis.call('LPUSH', KEYS[i + 1], unpack(items, j, math.min(j + 999, #items)))
    end
    return {KEYS[i], items, (tonumber(redis.call('HGET', KEYS[i + 2], 'tail')) or 0) + len}
  end
end
return false
",
    )
});

/// Outcomes of one key's messages, by position: no element travels back.
///
/// `KEYS`: leased list, lease hash, retry set, dead list. `ARGV`: the fence token, the
/// position the tail moves to (every element before it is settled), counts of acks,
/// retries and deads, the dead list's length cap, its age cutoff (ms since the epoch, 0
/// for none); then the positions of acks settled out of order, the retries as (position,
/// old header length, new header, due ms), the deads as (position, old header length, new
/// header).
///
/// A position `s` is the element `s - tail` from the list's tail (`tail` from the lease
/// hash). A retried or dead element is read, rebuilt as the new header and its payload,
/// moved, and overwritten with the settled marker; an ack out of order only overwrites.
/// Then the tail moves. Every step is idempotent, so a settle sent again after a lost
/// connection does nothing twice. An element already settled or no longer there is
/// counted. Returns `{those acks, retries, deads}`, or `-1` when the lease hash does not
/// carry the token (this consumer's leases were taken back: nothing is done).
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "settle",
        r"local p, h = KEYS[1], KEYS[2]
if redis.call('HGET', h, 'fence') ~= ARGV[1] then return -1 end
local tail = tonumber(redis.call('HGET', h, 'tail')) or 0
local len = redis.call('LLEN', p)
local settled = '\0rq1 settled\n'
local function at(pos)
  local i = tonumber(pos) - tail
  if i < 0 or i >= len then return nil end
  return -i - 1
end
local function take(pos, hl, header)
  local x = at(pos)
  if not x then return nil end
  local e = redis.call('LINDEX', p, x)
  if not e or e == settled then return nil end
  redis.call('LSET', p, x, settled)
  return header .. string.sub(e, tonumber(hl) + 1)
end
local na, nr, nd = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local sa, sr, sd = 0, 0, 0
local i = 8
for j = 1, na do
  local x = at(ARGV[i])
  if x then redis.call('LSET', p, x, settled) else sa = sa + 1 end
  i = i + 1
end
for j = 1, nr do
  local e = take(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if e then redis.call('ZADD', KEYS[3], ARGV[i + 3], e) else sr = sr + 1 end
  i = i + 4
end
if nd > 0 then
  for j = 1, nd do
    local e = take(ARGV[i], ARGV[i + 1], ARGV[i + 2])
    if e then redis.call('LPUSH', KEYS[4], e) else sd = sd + 1 end
    i = i + 3
  end
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
  local cutoff = tonumber(ARGV[7])
  if cutoff > 0 then
    while true do
      local e = redis.call('LINDEX', KEYS[4], -1)
      if not e then break end
      local t = tonumber(string.match(e, '^%zrq1 [^\n]* t=(%d+)'))
      if t and t < cutoff then redis.call('RPOP', KEYS[4]) else break end
    end
  end
end
local n = tonumber(ARGV[2]) - tail
if n > 0 then
  redis.call('LTRIM', p, 0, -n - 1)
  redis.call('HSET', h, 'tail', ARGV[2])
end
return {sa, sr, sd}
",
    )
});

/// Retried messages that are due go back to their queue. `KEYS`: the queue key, then its
/// retry sets (the current one, and the old name's where it differs); `ARGV`: now (ms),
/// most to move per set. Earliest due is served first. Returns `{how many moved, how many
/// are left in the sets}`.
pub(crate) static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "requeue",
        r"local moved = 0
for k = 2, #KEYS do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
  for i = #due, 1, -1 do redis.call('RPUSH', KEYS[1], due[i]) end
  for i = 1, #due, 1000 do
    redis.call('ZREM', KEYS[k], unpack(due, i, math.min(i + 999, #due)))
  end
  moved = moved + #due
end
local left = 0
for k = 2, #KEYS do left = left + redis.call('ZCARD', KEYS[k]) end
return {moved, left}
",
    )
});

/// Liveness and recovery of one queue. `KEYS`: this consumer's heartbeat, the consumer
/// set, the sweep lock. `ARGV`: mode, consumer id, now (ms), lease (ms), this run's fence
/// token, the heartbeat prefix, the old consumer set and heartbeat prefix (ringq 0.1's
/// names), then for each key of the queue eight names: the key, the prefixes of leased
/// lists, lease hashes and old processing lists, the retry set and its old name, the dead
/// list and its old name. Modes:
/// - `beat`: refresh the heartbeat (`SET PX lease`) and the set membership;
/// - `start`: move this consumer's own leased lists (and old processing lists) back to
///   their queues, counting a delivery for each (its previous run may have handled them),
///   set its lease hashes to this run's token at position 0, move an old retry set and
///   dead list into the new names, then `beat`;
/// - `orphans`: the same without counting or moving old names (leases whose replies were
///   lost in flight, or taken back by another consumer while this one was frozen);
/// - `stop`: as `orphans`, then delete the lease hashes and the heartbeat and leave the set;
/// - `sweep`: under the sweep lock (`SET NX PX`, `ARGV[4]` then its time), for every member
///   of the set other than this one whose heartbeat has expired, move its leased lists
///   back, counting a delivery, delete its lease hashes (so its late outcomes are
///   refused), and remove it from the set; the same for members of the old set, with
///   their old processing lists.
///
/// Settled markers are skipped. Returns `{consumers swept, elements moved}`, or `{-1, 0}`
/// when another consumer holds the sweep lock.
///
/// The lists it moves between are named by `ARGV`, so on a cluster the server checks
/// them only when they are touched, and refuses a key its migrating slot no longer holds
/// with an error that ends the script there (its writes so far stay). So each move first
/// reads both lists (`LLEN`): a refusal then comes before the `LPOP`, never between the
/// `LPOP` and its `RPUSH`, and no element is ever popped without being pushed back.
pub(crate) static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "recover",
        r"local settled = '\0rq1 settled\n'
local function bump(e)
  if string.sub(e, 1, 5) == '\0rq1 ' then
    local d = string.match(e, '^%zrq1 d=(%d+)')
    if d then return '\0rq1 d=' .. (tonumber(d) + 1) .. string.sub(e, 8 + #d) end
  end
  return '\0rq1 d=1\n' .. e
end
local function move(p, k, count)
  redis.call('LLEN', k)
  redis.call('LLEN', p)
  local n = 0
  while true do
    local e = redis.call('LPOP', p)
    if not e then return n end
    if e ~= settled then
      if count then e = bump(e) end
      redis.call('RPUSH', k, e)
      n = n + 1
    end
  end
end
local mode, me, token = ARGV[1], ARGV[2], ARGV[5]
local swept, moved = 0, 0
if mode == 'sweep' then
  if not redis.call('SET', KEYS[3], me, 'NX', 'PX', ARGV[4]) then return {-1, 0} end
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if m ~= me and redis.call('EXISTS', ARGV[6] .. m) == 0 then
      for i = 9, #ARGV, 8 do
        moved = moved + move(ARGV[i + 1] .. m, ARGV[i], true)
        redis.call('DEL', ARGV[i + 2] .. m)
      end
      redis.call('SREM', KEYS[2], m)
      swept = swept + 1
    end
  end
  for _, m in ipairs(redis.call('SMEMBERS', ARGV[7])) do
    if redis.call('EXISTS', ARGV[8] .. m) == 0 then
      for i = 9, #ARGV, 8 do moved = moved + move(ARGV[i + 3] .. m, ARGV[i], true) end
      redis.call('SREM', ARGV[7], m)
      swept = swept + 1
    end
  end
  return {swept, moved}
end
if mode ~= 'beat' then
  local count = mode == 'start'
  for i = 9, #ARGV, 8 do
    moved = moved + move(ARGV[i + 1] .. me, ARGV[i], count)
    moved = moved + move(ARGV[i + 3] .. me, ARGV[i], count)
    if mode == 'stop' then
      redis.call('DEL', ARGV[i + 2] .. me)
    else
      redis.call('HSET', ARGV[i + 2] .. me, 'fence', token, 'tail', '0')
    end
    if count and ARGV[i + 5] ~= ARGV[i + 4] then
      if redis.call('EXISTS', ARGV[i + 5]) == 1 then
        redis.call('ZUNIONSTORE', ARGV[i + 4], 2, ARGV[i + 4], ARGV[i + 5], 'AGGREGATE', 'MIN')
        redis.call('DEL', ARGV[i + 5])
      end
      while redis.call('LMOVE', ARGV[i + 7], ARGV[i + 6], 'LEFT', 'RIGHT') do end
    end
  end
end
if mode == 'stop' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], me)
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('SADD', KEYS[2], me)
end
return {swept, moved}
",
    )
});

/// Every script, in load order.
pub(crate) static SET: ScriptSet = ScriptSet(&[&LEASE, &SETTLE, &REQUEUE, &RECOVER]);
