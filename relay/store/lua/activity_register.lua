-- activity_register: bind a service's Live Activity to its update token, for the device GMS pushed
-- the service to only.
-- KEYS[1] the activity's HASH (relay:{activity:<app>:<service id>}:activity:<app>:<service id>).
-- ARGV[1] the activity token; ARGV[2] the device token; ARGV[3] the lifetime in seconds.
-- Returns 1 when registered, 0 when GMS pushed this service to no device or to another one
-- (field gms_device_token, written at ingest by activity_bind). Keeps: a registration only for
-- the device GMS addressed; its lifetime runs from GMS's first push and no PUT extends it (a
-- record without one, which cannot happen, gets it); the last stamp survives a re-registration.
if redis.call('HGET', KEYS[1], 'gms_device_token') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'activity_token', ARGV[1], 'device_token', ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
