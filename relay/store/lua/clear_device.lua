-- clear_device: lift a device's dead-token mark and purge its queue.
-- KEYS[1..4] the shard's due, lease, heads, stats; KEYS[5] the device's queue LIST; KEYS[6] its
-- dead-token HASH.
-- ARGV[1] shard key prefix; ARGV[2] device "<app>:<token>"; ARGV[3] now (ms); ARGV[4] retention (s).
-- Returns how many notifications were purged: each becomes failed with reason "Purged", except the
-- head in flight, which its worker settles.
-- Keeps: 2 and 3 (an in-flight head keeps its lease and stays the head), counters agree with states.
local prefix, device, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('DEL', KEYS[6])
local in_flight = redis.call('ZSCORE', LEASE, device)
local first = in_flight and 1 or 0
local purged = fail_queued(prefix, device, first, now, {last_reason = 'Purged'})
if not in_flight then
  head_changed(prefix, device, false, now)
end
flush(prefix, tonumber(ARGV[4]))
return purged
