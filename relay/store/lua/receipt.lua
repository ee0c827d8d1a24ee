-- receipt: record that the phone showed a notification (a delivery receipt, relay.receipts).
-- KEYS[1] the receipt bucket of the notification's shard and history bucket: HASH
--         relay:{<shard>}:r:<bucket> (relay.store.history.bucket_of), beside its h:<bucket>.
-- ARGV[1] the notification's field there (relay.store.history.history_field), ARGV[2] when the
-- receipt arrived (ms), ARGV[3] the retention (s): the bucket's TTL from its last write.
-- Returns 1 when recorded, 0 when one was recorded before.
-- Keeps: the first receipt wins; a replayed one changes nothing, not even the TTL. It touches
-- no queued record, so it holds whether the notification is queued, in flight or final.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
