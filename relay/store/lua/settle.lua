-- settle: record the outcomes of a batch of this shard's claims.
-- KEYS[1..4] the shard's due, lease, heads, stats.
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] retention (s); ARGV[4] dead-token TTL (s);
-- then 10 values per claim: id, claim number, device "<app>:<token>", outcome ('delivered' |
-- 'retry' | 'failed' | 'dead' | 'expired'), APNs status, reason, apns_id, retry delay (ms), token
-- invalid since (ms), apns_unique_id (sandbox: the key of Apple's Delivery Log); '' = none.
-- Returns {applied, errors}: applied = how many claims were applied; a claim whose lease was lost
-- (claimed again since, ended already, or no longer the head) is ignored. errors = list of
-- {device, error} for claims whose settle met a script error (a key of the device's no longer of
-- the type this relay writes): nothing of that claim is written, its device is set aside as a
-- claim sets one aside, and the other claims are applied. PUBLISHes the shard's prefix on the wake
-- channel when a device's next notification became due, as enqueue does for a new one: an idle
-- worker would otherwise leave it until its periodic re-claim, up to a second for every
-- notification.
-- Keeps: 2 (the head leaves only when final; the next becomes due), 3 (stale results change nothing),
-- 5 (retry at now + delay), 6 (a dead token is marked and its queued notifications failed at once),
-- 14 (an error on one claim is kept to its device; every read that can meet another type precedes
-- the claim's first write, so it writes nothing half-way, and a dead token's queue is failed one
-- whole notification at a time).
local prefix, now, retention, dead_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local applied, next_due, released, errors = 0, false, {}, {}

local function given(value)
  if value == '' then
    return nil
  end
  return value
end

-- Apply the claim whose values start at ARGV[i]; true when it still stood.
local function settle_one(i)
  local id, device, outcome = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  local status, reason = tonumber(ARGV[i + 4]), given(ARGV[i + 5])
  local n, next_id = claimed_note(prefix, device, id, ARGV[i + 1])
  if not n then
    return false
  end
  if outcome == 'retry' then
    -- As before: a status or reason not given leaves the last one standing.
    n.attempts = n.attempts + 1
    n.last_status, n.last_reason = status or n.last_status, reason or n.last_reason
    end_claim_unsent(prefix, device, id, n, STATE.RETRYING, now + tonumber(ARGV[i + 7]), now,
      true)
    count('retried', 1)
    return true
  end
  -- The final record first: its history write is the claim's first write.
  local result = {}
  if outcome == 'delivered' then
    n.attempts = n.attempts + 1
    finalise(prefix, device, id, n, STATE.DELIVERED, now, {last_reason = false,
      last_status = status, apns_id = given(ARGV[i + 6]), apns_unique_id = given(ARGV[i + 9])})
  elseif outcome == 'expired' then
    finalise(prefix, device, id, n, STATE.EXPIRED, now, {})
  else
    n.attempts = n.attempts + 1
    result = {last_status = status, last_reason = reason}
    finalise(prefix, device, id, n, STATE.FAILED, now, result)
  end
  redis.call('LPOP', prefix .. K_QUEUE .. device)
  if outcome == 'dead' then
    local mark = prefix .. K_DEAD .. device
    if redis.call('EXISTS', mark) == 0 then
      count('dead_marked', 1)
    end
    redis.call('DEL', mark)
    local fields = {'marked_at_ms', now}
    for _, pair in ipairs({{'reason', ARGV[i + 5]}, {'status', ARGV[i + 4]},
        {'invalid_since_ms', ARGV[i + 8]}}) do
      if pair[2] ~= '' then
        fields[#fields + 1], fields[#fields + 2] = pair[1], pair[2]
      end
    end
    redis.call('HSET', mark, unpack(fields))
    redis.call('EXPIRE', mark, dead_ttl)
    fail_queued(prefix, device, 0, now, result)
    next_id = false
  end
  head_changed(prefix, device, next_id, now)
  released[#released + 1] = device
  next_due = next_due or next_id ~= false
  return true
end

for i = 5, #ARGV, 10 do
  local ok, applied_one = pcall(settle_one, i)
  if not ok then
    set_aside(ARGV[i + 2], now, applied_one, errors)
  elseif applied_one then
    applied = applied + 1
  end
end
if #released > 0 then
  redis.call('ZREM', LEASE, unpack(released))
end
flush(prefix, retention)
if next_due then
  redis.call('PUBLISH', WAKE_CHANNEL, prefix)
end
return {applied, errors}
