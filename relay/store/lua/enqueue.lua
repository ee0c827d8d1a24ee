-- enqueue: accept one notification into its device's FIFO, or refuse it having written nothing.
-- KEYS[1..4] the shard's due, lease, heads, stats; KEYS[5] the device's queue LIST; KEYS[6] the new
-- notification's record HASH; KEYS[7] the device's dead-token HASH; KEYS[8] the device's
-- service_id -> latest id HASH; KEYS[9] the idempotency key (absent when the notification has none).
-- ARGV[1] shard key prefix; ARGV[2] new id; ARGV[3] device "<app>:<token>"; ARGV[4] now (ms);
-- ARGV[5] retention (s); ARGV[6] per-device cap; ARGV[7] per-shard pending cap; ARGV[8] service_id
-- to supersede by ('' = none); ARGV[9] order group and ARGV[10] order ('' = none: append at the
-- tail); ARGV[11] the APNs payload; ARGV[12] the digest of the request that chose the idempotency
-- key ('' = the relay derived the key: any repeat is a duplicate); ARGV[13..] the notification's
-- other field/value pairs.
-- Returns {'accepted', id, superseded id or ''} | {'duplicate', id} | {'reused', id} (the key came
-- with another request digest) | {'dead', reason, invalid_since_ms} | {'device_full'} |
-- {'pending_full'}.
-- The idempotency key holds "<id>" or "<id> <request digest>".
-- Keeps: 1 (accepted means stored; every check precedes every write, so a refusal stores nothing),
-- 2 (appended at the tail; an ordered notification is inserted before the first never-sent one of
-- its group with a higher order, never before one sent or in flight), 6 (dead tokens refused), 9 (both caps; a duplicate counts against none),
-- idempotency, and 12 (possibly sent keeps its place: only a QUEUED notification, one never
-- claimed or only given back before its request went out, is superseded or passed by a chat
-- line; one in flight, retrying or whose lease ran out never is).
local queue, note, dead, slots, idem = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local prefix, id, device, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local retention, service_id = tonumber(ARGV[5]), ARGV[8]
local order_group, order = ARGV[9], tonumber(ARGV[10])

-- The same call run again (redis-py re-sends a command whose reply was lost, a spool replay
-- repeated): it is done already, and may be final since (its record then is history).
local history, history_field = history_slot(prefix, id)
if redis.call('EXISTS', note) == 1 or redis.call('HEXISTS', history, history_field) == 1 then
  return {'accepted', id, ''}
end
if idem then
  local seen = redis.call('GET', idem)
  if seen then
    local seen_id, seen_digest = string.match(seen, '^(%S+) ?(.*)$')
    if seen_digest ~= '' and ARGV[12] ~= '' and seen_digest ~= ARGV[12] then
      return {'reused', seen_id}
    end
    return {'duplicate', seen_id}
  end
end
local mark = redis.call('HMGET', dead, 'reason', 'invalid_since_ms')
if mark[1] then
  return {'dead', mark[1], mark[2]}
end

local older = false
if service_id ~= '' then
  older = redis.call('HGET', slots, service_id)
  if older then
    local state = redis.call('HGET', prefix .. K_NOTE .. older, 'state')
    if state ~= STATE.QUEUED then
      older = false
    end
  end
end
local freed = older and 1 or 0
local length = redis.call('LLEN', queue)
if length - freed >= tonumber(ARGV[6]) then
  return {'device_full'}
end
if tonumber(redis.call('HGET', STATS, 'pending') or '0') - freed >= tonumber(ARGV[7]) then
  return {'pending_full'}
end

-- A device that had nothing queued, or whose head was superseded, is due now: wake a worker.
local newly_due = length == 0
if older then
  newly_due = redis.call('LINDEX', queue, 0) == older
  redis.call('LREM', queue, 1, older)
  finalise(prefix, device, older, STATE.SUPERSEDED, now, retention, {})
end
-- The first queued (never sent) notification of the same group with a higher order, if any. Only
-- QUEUED ones are passed: one in flight, retrying or whose lease ran out may have reached the
-- phone already (invariant 12). The scan is bounded by the per-device cap.
local successor = false
if order then
  for _, queued in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    local other = redis.call('HMGET', prefix .. K_NOTE .. queued, 'state', 'order_group', 'order')
    -- tonumber: a malformed order is passed by nothing rather than failing the enqueue (14).
    if other[1] == STATE.QUEUED and other[2] == order_group
        and (tonumber(other[3]) or -math.huge) > order then
      successor = queued
      break
    end
  end
end
if successor then
  -- A new head takes over the old one's due time; HEADS keeps the older accepted_at, which is
  -- still pending, so the oldest-pending age does not jump back.
  redis.call('LINSERT', queue, 'BEFORE', successor, id)
else
  redis.call('RPUSH', queue, id)
end
redis.call('HSET', note, 'state', STATE.QUEUED, 'attempts', 0, 'claim_no', 0,
  'accepted_at_ms', now, 'updated_at_ms', now, unpack(ARGV, 13))
redis.call('SET', prefix .. K_PAYLOAD .. id, ARGV[11])
if service_id ~= '' then
  redis.call('HSET', slots, service_id, id)
end
if idem then
  local remembered = id
  if ARGV[12] ~= '' then
    remembered = id .. ' ' .. ARGV[12]
  end
  redis.call('SET', idem, remembered, 'EX', retention)
end
redis.call('HINCRBY', STATS, 'enqueued', 1)
redis.call('HINCRBY', STATS, 'pending', 1)
if newly_due then
  rearm(prefix, device, now)
  redis.call('PUBLISH', WAKE_CHANNEL, prefix)
end
return {'accepted', id, older or ''}
