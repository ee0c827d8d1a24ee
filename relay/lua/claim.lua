-- claim: put this shard's run-out leases back to due, then lease up to ARGV[3] due device heads.
-- KEYS[1..4] the shard's due, lease, heads, stats.
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] how many to claim (0 = only reap and report
-- whether work is due); ARGV[4] lease length (ms); ARGV[5] retention (s); ARGV[6] how many run-out
-- leases to reap at most.
-- Returns {more, claimed, expired}: more = 1 when due devices are left; claimed = list of
-- {id, claim number, payload, CLAIM_FIELDS values...}; expired = list of {id, app, service_id,
-- action}.
-- Keeps: 2 (only a device's head is leased, one lease per device), 3 (a run-out lease is claimable
-- again), 4 (a head past its expires_at is finalised as expired here, never handed out); a head
-- whose payload is missing is failed (MissingPayload) rather than handed out or left blocking.
local prefix, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_ms, retention = tonumber(ARGV[4]), tonumber(ARGV[5])

for _, device in ipairs(redis.call('ZRANGEBYSCORE', LEASE, '-inf', now, 'LIMIT', 0, ARGV[6])) do
  local head = redis.call('LINDEX', prefix .. K_QUEUE .. device, 0)
  if head then
    local note = prefix .. K_NOTE .. head
    redis.call('HSET', note, 'state', unsent_state(redis.call('HGET', note, 'attempts')),
      'updated_at_ms', now)
  end
  rearm(prefix, device, now)
end

local claimed, expired = {}, {}
if limit > 0 then
  for _, device in ipairs(redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, limit)) do
    local queue = prefix .. K_QUEUE .. device
    local head = redis.call('LINDEX', queue, 0)
    while head do
      local note = prefix .. K_NOTE .. head
      local fields = redis.call('HMGET', note, unpack(CLAIM_FIELDS))
      local payload = redis.call('GET', prefix .. K_PAYLOAD .. head)
      local live = tonumber(fields[CLAIM_INDEX.expires_at]) * 1000 > now
      if live and payload then
        local claim_no = redis.call('HINCRBY', note, 'claim_no', 1)
        redis.call('HSET', note, 'state', STATE.SENDING, 'updated_at_ms', now)
        claimed[#claimed + 1] = {head, claim_no, payload, unpack(fields)}
        break
      end
      redis.call('LPOP', queue)
      if live then
        -- A record without its payload cannot be sent; failing it keeps the device moving.
        finalise(prefix, device, head, STATE.FAILED, now, retention,
          {'last_reason', 'MissingPayload'})
      else
        expired[#expired + 1] = {head, fields[CLAIM_INDEX.app], fields[CLAIM_INDEX.service_id],
          fields[CLAIM_INDEX.action]}
        finalise(prefix, device, head, STATE.EXPIRED, now, retention, {})
      end
      head = redis.call('LINDEX', queue, 0)
    end
    rearm(prefix, device, now)
    if head then
      redis.call('ZREM', DUE, device)
      redis.call('ZADD', LEASE, now + lease_ms, device)
    end
  end
end
local more = #redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, 1)
return {more, claimed, expired}
