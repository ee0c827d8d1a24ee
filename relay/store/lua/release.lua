-- release: give a batch of this shard's claims back unsent (shutdown, app paused, route failing).
-- KEYS[1..4] the shard's due, lease, heads, stats.
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] due again after (ms); then per claim: id,
-- claim number, device "<app>:<token>", and '1' when its request was handed to the APNs connection
-- (it may have reached the phone) or '0' when it never was.
-- Returns how many claims were released; a claim whose lease was lost is ignored.
-- Keeps: 2 (the head stays the head), 3 (nothing stays claimed), attempts unchanged, 12 (a claim
-- released after its request went out is possibly sent: RETRYING from then on; only one that
-- never went out, and was never possibly sent before, is QUEUED again).
local prefix, now, due_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3])
local released = 0
for i = 4, #ARGV, 4 do
  local id, device = ARGV[i], ARGV[i + 2]
  local n = claimed_note(prefix, device, id, ARGV[i + 1])
  if n then
    released = released + 1
    if ARGV[i + 3] == '1' then
      n.possibly_sent = 1
    end
    end_claim_unsent(prefix, device, id, n, unsent_state(n), due_ms, now, false)
  end
end
return released
