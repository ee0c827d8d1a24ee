-- release: give a batch of this shard's claims back unsent (shutdown, app paused).
-- KEYS[1..4] the shard's due, lease, heads, stats.
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] due again after (ms); then per claim: id,
-- claim number.
-- Returns how many claims were released; a claim whose lease was lost is ignored.
-- Keeps: 2 (the head stays the head), 3 (nothing stays claimed), attempts unchanged.
local prefix, now, due_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3])
local released = 0
for i = 4, #ARGV, 2 do
  local device = claimed_device(prefix, ARGV[i], ARGV[i + 1])
  if device then
    released = released + 1
    local attempts = redis.call('HGET', prefix .. K_NOTE .. ARGV[i], 'attempts')
    end_claim_unsent(prefix, device, ARGV[i], unsent_state(attempts), due_ms, now, {})
  end
end
return released
