-- claim: put this shard's run-out leases back to due, then lease up to ARGV[3] due device heads,
-- leaving aside (parking) the devices of routes whose circuit is open.
-- KEYS[1..4] the shard's due, lease, heads, stats; KEYS[4 + i] the parked ZSET of app i (device ->
-- the due time it had when parked).
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] how many to claim (0 = only reap and report
-- whether work is due); ARGV[4] lease length (ms); ARGV[5] retention (s); ARGV[6] how many run-out
-- leases to reap at most; ARGV[5 + 2i] app i's name and ARGV[6 + 2i] its mode: 'park' (its route
-- is open: its due devices move to its parked ZSET) or 'send' (its parked devices, if any, are due
-- again at the time they had).
-- Returns {more, claimed, expired, malformed, errors}: more = 1 when due devices are left;
-- claimed = list of {id, claim number, payload, the record's token bytes, CLAIM_FIELDS
-- values...}; expired = list of {id,
-- app, service_id, action}; malformed = list of {id, device} failed as MalformedRecord; errors =
-- list of {device, error} for devices set aside after an error (due again in SET_ASIDE_MS).
-- Keeps: 2 (only a device's head is leased, one lease per device; a parked device keeps its place
-- and its due time), 3 (a run-out lease is claimable again; nothing stays parked once its route
-- sends), 12 (a run-out lease's head is marked possibly_sent and is RETRYING, never QUEUED
-- again: its holder may have sent it), 4 (a head past its expires_at is finalised as expired here, never handed out); a head
-- whose payload is missing is failed (MissingPayload) rather than handed out or left blocking,
-- 14 (a head the scripts cannot compute with is failed (MalformedRecord), and an error on one
-- device sets that device aside: it never fails the claim for the others).
local prefix, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_ms, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
-- Parked devices returned to due per app per claim, and rounds of parking per claim: both bound
-- the script's run time; what is left is done by the next claim.
local UNPARK_PER_CLAIM, PARK_ROUNDS = 1000, 4

local reaped, due_again = {}, {}
for _, device in ipairs(redis.call('ZRANGEBYSCORE', LEASE, '-inf', now, 'LIMIT', 0, ARGV[6])) do
  local queue = prefix .. K_QUEUE .. device
  local head = redis.call('LINDEX', queue, 0)
  reaped[#reaped + 1] = device
  if head then
    -- Its holder vanished: whether it sent is unknown, so it is possibly sent (invariant 12).
    -- pcall: a record of another type is the claim's to set aside, not a failed reap (14).
    local ok, n = pcall(get_note, prefix, head)
    if ok and n then
      n.possibly_sent, n.updated_at_ms = 1, now
      n.state = unsent_state(n)
      redis.call('SETRANGE', prefix .. K_NOTE .. head, 1, note_mutable(n))
    end
    due_again[#due_again + 1] = now
    due_again[#due_again + 1] = device
  else
    head_changed(prefix, device, false, now)
  end
end
if #reaped > 0 then
  redis.call('ZREM', LEASE, unpack(reaped))
end
if #due_again > 0 then
  redis.call('ZADD', DUE, unpack(due_again))
end

local parking = {}
for i = 1, #KEYS - 4 do
  local app, mode, parked = ARGV[5 + 2 * i], ARGV[6 + 2 * i], KEYS[4 + i]
  if mode == 'park' then
    parking[app] = parked
  else
    local entries = redis.call('ZPOPMIN', parked, UNPARK_PER_CLAIM)
    for j = 1, #entries, 2 do
      local device = entries[j]
      if redis.call('LINDEX', prefix .. K_QUEUE .. device, 0)
          and not redis.call('ZSCORE', LEASE, device) then
        redis.call('ZADD', DUE, 'NX', entries[j + 1], device)
      end
    end
  end
end

local claimed, expired, malformed, errors, leased = {}, {}, {}, {}, {}
local rounds = 0
-- Whether DUE may hold more due devices than the last look took: unknown until a look comes back
-- short (nothing this script does after a look makes a device due by `now`).
local maybe_more = true
while limit > #claimed and rounds < PARK_ROUNDS do
  rounds = rounds + 1
  local parked_now = 0
  local wanted = limit - #claimed
  local due = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'WITHSCORES', 'LIMIT', 0, wanted)
  maybe_more = #due == 2 * wanted
  for j = 1, #due, 2 do
    local device = due[j]
    -- A device is "<app>:<token>" and a token is hex: the app is everything before the last colon.
    local parked = parking[string.match(device, '^(.*):')]
    if parked then
      redis.call('ZADD', parked, due[j + 1], device)
      redis.call('ZREM', DUE, device)
      parked_now = parked_now + 1
    else
      lease_head_guarded(prefix, device, now, claimed, expired, malformed, leased, errors)
    end
  end
  -- Before the next round's look at DUE, which must not find these again.
  lease_devices(leased, now + lease_ms)
  leased = {}
  if parked_now == 0 then
    break
  end
end
flush(prefix, retention)
local more = 0
if maybe_more then
  more = #redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, 1)
end
return {more, claimed, expired, malformed, errors}
