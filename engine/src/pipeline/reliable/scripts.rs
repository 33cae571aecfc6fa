//! The server side of reliable mode: four Lua scripts, each one atomic step. They are
//! loaded (`SCRIPT LOAD`) on every connection right after its handshake and run with
//! `EVALSHA`; the SHA-1s are computed here, so a command can follow its load at once.
//!
//! Element order: a lease `LPUSH`es onto the processing list, so its tail holds the
//! oldest leased element; recovery moves elements back to the *right* end of the queue,
//! the end pops take from, so they are served first, oldest first.

use std::sync::LazyLock;

use crate::pipeline::alo::{Script, ScriptSet};

/// `KEYS`: pairs (queue key, processing list); `ARGV[1]`: most elements to take. Takes up
/// to that many from the first non-empty queue key (`RPOP` with a count) and pushes them
/// onto its processing list, returning `{key, elements}` (LMPOP's shape), or nil.
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "lease",
        r"local n = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  local items = redis.call('RPOP', KEYS[i], n)
  if items then
    for j = 1, #items, 1000 do
      redis.call('LPUSH', KEYS[i + 1], unpack(items, j, math.min(j + 999, #items)))
    end
    return {KEYS[i], items}
  end
end
return false
",
    )
});

/// Outcomes of one key's messages. `KEYS`: processing list, retry set, dead list.
/// `ARGV`: counts of acks, retries and deads, the dead list's length cap, its age cutoff
/// (ms since the epoch, 0 for none); then the acked elements (oldest first), the retries
/// as (element, new element, due ms), the deads as (element, new element). An element not
/// found in the processing list was taken back by recovery (its lease ran out): nothing is
/// done for it, and it is counted. Returns `{stale acks, stale retries, stale deads}`.
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "settle",
        r"local p = KEYS[1]
local na, nr, nd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 6
local sa, sr, sd = 0, 0, 0
if na > 0 then
  local tail = redis.call('LRANGE', p, -na, -1)
  local inorder = #tail == na
  if inorder then
    for j = 1, na do
      if tail[na + 1 - j] ~= ARGV[i + j - 1] then
        inorder = false
        break
      end
    end
  end
  if inorder then
    redis.call('LTRIM', p, 0, -na - 1)
  else
    for j = 0, na - 1 do
      if redis.call('LREM', p, -1, ARGV[i + j]) == 0 then sa = sa + 1 end
    end
  end
  i = i + na
end
for j = 1, nr do
  if redis.call('LREM', p, -1, ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 1])
  else
    sr = sr + 1
  end
  i = i + 3
end
if nd > 0 then
  for j = 1, nd do
    if redis.call('LREM', p, -1, ARGV[i]) == 1 then
      redis.call('LPUSH', KEYS[3], ARGV[i + 1])
    else
      sd = sd + 1
    end
    i = i + 2
  end
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
  local cutoff = tonumber(ARGV[5])
  if cutoff > 0 then
    while true do
      local e = redis.call('LINDEX', KEYS[3], -1)
      if not e then break end
      local t = tonumber(string.match(e, '^%zrq1 [^\n]* t=(%d+)'))
      if t and t < cutoff then redis.call('RPOP', KEYS[3]) else break end
    end
  end
end
return {sa, sr, sd}
",
    )
});

/// Retried messages that are due go back to their queue. `KEYS`: retry set, queue key;
/// `ARGV`: now (ms), most to move. Earliest due is served first. Returns how many moved.
pub(crate) static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "requeue",
        r"local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for i = #due, 1, -1 do redis.call('RPUSH', KEYS[2], due[i]) end
for i = 1, #due, 1000 do
  redis.call('ZREM', KEYS[1], unpack(due, i, math.min(i + 999, #due)))
end
return #due
",
    )
});

/// Liveness and recovery of one queue. `KEYS`: this consumer's heartbeat, the consumer
/// set, the sweep lock. `ARGV`: mode, consumer id, now (ms), lease (ms), the heartbeat
/// prefix, then pairs (queue key, processing prefix). Modes:
/// - `beat`: refresh the heartbeat (`SET PX lease`) and the set membership;
/// - `start`: move this consumer's own processing lists back to their queues, counting a
///   delivery for each (its previous run may have handled them), then `beat`;
/// - `orphans`: the same without counting (leases whose replies were lost in flight);
/// - `stop`: the same as `orphans`, then delete the heartbeat and leave the set;
/// - `sweep`: under the sweep lock (`SET NX PX`, `ARGV[4]` then its time), for every member of the set other
///   than this one whose heartbeat has expired, move its processing lists back, counting
///   a delivery, and remove it from the set.
///
/// Returns `{consumers swept, elements moved}`, or `{-1, 0}` when another consumer holds
/// the sweep lock.
///
/// The lists it moves between are named by `ARGV`, so on a cluster the server checks
/// them only when they are touched, and refuses a key its migrating slot no longer holds
/// with an error that ends the script there (its writes so far stay). So each move first
/// reads both lists (`LLEN`): a refusal then comes before the `LPOP`, never between the
/// `LPOP` and its `RPUSH`, and no element is ever popped without being pushed back.
pub(crate) static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "recover",
        r"local function bump(e)
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
    if count then e = bump(e) end
    redis.call('RPUSH', k, e)
    n = n + 1
  end
end
local mode, me = ARGV[1], ARGV[2]
local swept, moved = 0, 0
if mode == 'sweep' then
  if not redis.call('SET', KEYS[3], me, 'NX', 'PX', ARGV[4]) then return {-1, 0} end
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if m ~= me and redis.call('EXISTS', ARGV[5] .. m) == 0 then
      for i = 6, #ARGV, 2 do moved = moved + move(ARGV[i + 1] .. m, ARGV[i], true) end
      redis.call('SREM', KEYS[2], m)
      swept = swept + 1
    end
  end
  return {swept, moved}
end
if mode ~= 'beat' then
  for i = 6, #ARGV, 2 do moved = moved + move(ARGV[i + 1] .. me, ARGV[i], mode == 'start') end
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
