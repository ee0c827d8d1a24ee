-- activity_bind: at ingest of a GMS callback push, remember which device GMS pushed the service
-- to (the one device that may register the service's Live Activity), and read the activity.
-- KEYS[1] the activity's HASH (relay:{activity:<app>:<service id>}:activity:<app>:<service id>).
-- ARGV[1] the device token GMS pushed to; ARGV[2] the service's lifetime in seconds.
-- Returns {activity_token, last} (false when absent). Keeps: no record without its lifetime,
-- counted from the service's first push (a later push does not extend it); a push to another
-- device rebinds the service to it and forgets the activity registered by the first.
local bound = redis.call('HGET', KEYS[1], 'gms_device_token')
if bound ~= ARGV[1] then
  if bound then
    redis.call('HDEL', KEYS[1], 'activity_token', 'device_token')
  end
  redis.call('HSET', KEYS[1], 'gms_device_token', ARGV[1])
end
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return redis.call('HMGET', KEYS[1], 'activity_token', 'last')
