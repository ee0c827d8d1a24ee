-- claim_parked: lease the head of the device parked longest for one app in this shard: the probe
-- that tells whether the app's open route works again.
-- KEYS[1..4] the shard's due, lease, heads, stats; KEYS[5] the app's parked ZSET.
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] lease length (ms); ARGV[4] retention (s).
-- Returns {claimed, expired, malformed, errors} as claim does; claimed holds at most one
-- notification.
-- Keeps: 2 (only a head is leased, and only of a device not leased already), 4 (expired heads met
-- on the way are finalised, never handed out), 14 (malformed heads failed, an error kept to its
-- device, as in claim).
local prefix, now = ARGV[1], tonumber(ARGV[2])
local lease_ms, retention = tonumber(ARGV[3]), tonumber(ARGV[4])
-- Devices looked at per call at most (each with only expired heads): bounded run time.
local MAX_LOOKED_AT = 100
local claimed, expired, malformed, errors, leased = {}, {}, {}, {}, {}
local looked_at = 0
while #claimed == 0 and looked_at < MAX_LOOKED_AT do
  looked_at = looked_at + 1
  local first = redis.call('ZPOPMIN', KEYS[5])
  if #first == 0 then
    break
  end
  if not redis.call('ZSCORE', LEASE, first[1]) then
    lease_head_guarded(prefix, first[1], now, claimed, expired, malformed, leased, errors)
  end
end
lease_devices(leased, now + lease_ms)
flush(prefix, retention)
return {claimed, expired, malformed, errors}
