-- activity_stamp: take the next aps.timestamp of one service's Live Activity (compare and set).
-- KEYS[1] the activity's HASH (relay:{activity:<app>:<service id>}:activity:<app>:<service id>).
-- ARGV[1] the field `last` as read, '<event_s>:<timestamp_s>' ('' when it had none); ARGV[2] the
-- new `last`, holding the stamp to take; ARGV[3] the
-- record's lifetime in seconds, set only when the record has none yet (a start through
-- push-to-start makes the record before the app registers its activity token).
-- Returns 1 when taken, 0 when another process took a stamp since the read (read again, decide
-- anew). Keeps: stamps strictly increase per activity across all api processes (the rule itself
-- is relay.activities.next_timestamp; this script only makes it atomic).
local last = redis.call('HGET', KEYS[1], 'last') or ''
if last ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'last', ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
