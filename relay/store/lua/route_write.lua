-- route_write: store a route's circuit if nobody changed it since it was read (compare and set).
-- KEYS[1] the route's HASH (relay:{route:<app>}:route:<app>:<environment>:<endpoint>).
-- ARGV[1] the version read ('0': the route had no record); ARGV[2..] the circuit's field/value
-- pairs (every field: the record is replaced whole).
-- Returns the new version, or 0 when the version moved on (the caller reads again and decides anew).
-- Keeps: one decision per state change across all workers (the pure logic lives in
-- relay/delivery/circuit.py; this script only makes its writes atomic), so one worker probes and
-- one worker logs each transition.
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', version + 1, unpack(ARGV, 2))
return version + 1
