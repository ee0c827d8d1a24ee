-- settle: record the outcomes of a batch of this shard's claims.
-- KEYS[1..4] the shard's due, lease, heads, stats.
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] retention (s); ARGV[4] dead-token TTL (s);
-- then 9 values per claim: id, claim number, outcome ('delivered' | 'retry' | 'failed' | 'dead' |
-- 'expired'), APNs status, reason, apns_id, retry delay (ms), token invalid since (ms),
-- apns_unique_id (sandbox: the key of Apple's Delivery Log); '' = none.
-- Returns how many claims were applied; a claim whose lease was lost (claimed again since, ended
-- already, or no longer the head) is ignored. PUBLISHes the shard's prefix on the wake channel when
-- a device's next notification became due, as enqueue does for a new one: an idle worker would
-- otherwise leave it until its periodic re-claim, up to a second for every notification.
-- Keeps: 2 (the head leaves only when final; the next becomes due), 3 (stale results change nothing),
-- 5 (retry at now + delay), 6 (a dead token is marked and its queued notifications failed at once).
local prefix, now, retention, dead_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local applied, next_due = 0, false

-- Pairs for the fields whose value is given ('' = none), so absent stays absent.
local function given(...)
  local pairs_given, args = {}, {...}
  for i = 1, #args, 2 do
    if args[i + 1] ~= '' then
      pairs_given[#pairs_given + 1] = args[i]
      pairs_given[#pairs_given + 1] = args[i + 1]
    end
  end
  return pairs_given
end

for i = 5, #ARGV, 9 do
  local id, outcome, status, reason = ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local device = claimed_device(prefix, id, ARGV[i + 1])
  if device then
    applied = applied + 1
    local note = prefix .. K_NOTE .. id
    if outcome == 'retry' then
      redis.call('HINCRBY', note, 'attempts', 1)
      end_claim_unsent(prefix, device, id, STATE.RETRYING, now + tonumber(ARGV[i + 6]), now,
        given('last_status', status, 'last_reason', reason))
      redis.call('HINCRBY', STATS, 'retried', 1)
    else
      redis.call('LPOP', prefix .. K_QUEUE .. device)
      if outcome == 'expired' then
        finalise(prefix, device, id, STATE.EXPIRED, now, retention, {})
      elseif outcome == 'delivered' then
        redis.call('HINCRBY', note, 'attempts', 1)
        redis.call('HDEL', note, 'last_reason')
        finalise(prefix, device, id, STATE.DELIVERED, now, retention,
          given('delivered_at_ms', now, 'apns_id', ARGV[i + 5], 'last_status', status,
            'apns_unique_id', ARGV[i + 8]))
      else
        redis.call('HINCRBY', note, 'attempts', 1)
        local result = given('last_status', status, 'last_reason', reason)
        finalise(prefix, device, id, STATE.FAILED, now, retention, result)
        if outcome == 'dead' then
          local mark = prefix .. K_DEAD .. device
          if redis.call('EXISTS', mark) == 0 then
            redis.call('HINCRBY', STATS, 'dead_marked', 1)
          end
          redis.call('DEL', mark)
          redis.call('HSET', mark, 'marked_at_ms', now,
            unpack(given('reason', reason, 'status', status, 'invalid_since_ms', ARGV[i + 7])))
          redis.call('EXPIRE', mark, dead_ttl)
          fail_queued(prefix, device, 0, now, retention, result)
        end
      end
      rearm(prefix, device, now)
      next_due = next_due or redis.call('LINDEX', prefix .. K_QUEUE .. device, 0) ~= false
    end
  end
end
if next_due then
  redis.call('PUBLISH', WAKE_CHANNEL, prefix)
end
return applied
