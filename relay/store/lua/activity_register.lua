-- activity_register: bind a service's Live Activity to its update token for the service's lifetime.
-- KEYS[1] the activity's HASH (relay:{activity:<app>:<service id>}:activity:<app>:<service id>).
-- ARGV[1] the activity token; ARGV[2] the device token; ARGV[3] the lifetime in seconds.
-- Returns 1. Keeps: no registration without its lifetime (a crash between two commands would
-- leave a record that never expires), and the last stamp survives a re-registration.
redis.call('HSET', KEYS[1], 'activity_token', ARGV[1], 'device_token', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
