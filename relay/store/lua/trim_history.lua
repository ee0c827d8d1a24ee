-- trim_history: delete this shard's history buckets up to a number, and forget the ones gone.
-- KEYS[1..4] the shard's due, lease, heads, stats; KEYS[5] the shard's history-bucket index ZSET.
-- ARGV[1] shard key prefix; ARGV[2] the newest bucket number to delete (-1: none); ARGV[3] the
-- first bucket number still within the retention: older ones that expired or were evicted are
-- forgotten (a newer one gone stays listed: it says its ids were given up, not unknown).
-- Returns {records deleted, buckets deleted}; a bucket's delivery receipts (K_RECEIPTS, the same
-- number) go with it.
-- Keeps: 13 (history is what gives way when Redis memory runs short, oldest first; queued work is
-- never touched: the buckets hold only final records).
local prefix, upto, retained = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- Buckets looked at per call at most: bounded run time (a day of 10-minute buckets is 144).
local MAX_LOOKED_AT = 1000
local records, buckets = 0, 0
for _, number in ipairs(redis.call('ZRANGE', KEYS[5], 0, MAX_LOOKED_AT - 1)) do
  local bucket = prefix .. K_HISTORY .. number
  if tonumber(number) <= upto then
    records = records + redis.call('HLEN', bucket)
    buckets = buckets + redis.call('UNLINK', bucket)
    redis.call('UNLINK', prefix .. K_RECEIPTS .. number)
    redis.call('ZREM', KEYS[5], number)
  elseif tonumber(number) < retained and redis.call('EXISTS', bucket) == 0 then
    redis.call('ZREM', KEYS[5], number)
  end
end
return {records, buckets}
