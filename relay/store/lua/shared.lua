-- Helpers every script shares: prepended (after the key-name prelude that scripts.py generates)
-- to each script at load time, so a state change is written once. Every script's KEYS[1..4] are its
-- shard's due, lease, heads and stats keys and ARGV[1] the shard's key prefix "relay:{s}:"; keys
-- found at run time (queues, records) are built from that prefix, so they share the {s} hash tag
-- and the script stays in one Cluster slot.
local DUE, LEASE, HEADS, STATS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- `value` as a number in [0, max] (a malformed record's text or a negative number: 0), for a
-- history record's fixed-size fields.
local function clamp(value, max)
  return math.min(math.max(tonumber(value) or 0, 0), max)
end

-- One length byte and the bytes of `value` (nil: none), as a history record holds a string.
local function short_string(value)
  value = string.sub(value or '', 1, 255)
  return string.char(#value) .. value
end

-- The key of the history bucket an id's final record goes to, its field there and the bucket's
-- number (relay.store.history: ids are "<shard>-<32 hex>", the first 12 hex digits the time the id
-- was made; the last 16, mostly random, tell the ids of one bucket apart).
local function history_slot(prefix, id)
  local made_ms = tonumber(string.sub(id, -32, -21), 16) or 0
  local bucket = math.floor(made_ms / HISTORY_BUCKET_MS)
  return prefix .. K_HISTORY .. bucket, string.sub(id, -16), bucket
end

-- Make one notification final: its queued record and payload go, and what the status API shows
-- stays, packed (the layout is relay.store.history's), in its shard's history bucket for the
-- retention period; its supersede slot is freed, and the shard's counters move with it (the
-- counter is named after the state). `fields` are the outcome's field/value pairs (last_status,
-- last_reason, apns_id, apns_unique_id). The caller takes it out of the device's list.
local function finalise(prefix, device, id, state, now, retention, fields)
  local note = prefix .. K_NOTE .. id
  local r = redis.call('HMGET', note, 'app', 'service_id', 'action', 'push_type', 'collapse_id',
    'last_status', 'last_reason', 'attempts', 'priority', 'accepted_at_ms', 'expires_at',
    'claim_no')
  local outcome = {}
  for i = 1, #fields, 2 do
    outcome[fields[i]] = fields[i + 1]
  end
  local accepted = clamp(r[10] or now, 2 ^ 48 - 1)
  -- GMS pushes collapse by their service id: said by a flag rather than stored twice.
  local layout, collapse = HISTORY_LAYOUT, r[5]
  if collapse and collapse == r[2] then
    layout, collapse = layout + HISTORY_COLLAPSE_IS_SERVICE, nil
  end
  local record = struct.pack('>BBBBHBBI6I4I4', layout, HISTORY_STATE[state], clamp(r[8], 255),
      clamp(r[12], 255), clamp(outcome.last_status or r[6], 65535), clamp(r[9], 255),
      HISTORY_PUSH_TYPE[r[4]] or 0, accepted, clamp(now - accepted, 2 ^ 32 - 1),
      clamp((tonumber(r[11]) or 0) - math.floor(accepted / 1000), 2 ^ 32 - 1))
    .. short_string(r[1]) .. short_string(r[2]) .. short_string(r[3]) .. short_string(collapse)
    .. short_string(outcome.last_reason or r[7]) .. short_string(outcome.apns_id)
    .. short_string(outcome.apns_unique_id)
  local bucket, field, slot = history_slot(prefix, id)
  redis.call('HSET', bucket, field, record)
  redis.call('EXPIRE', bucket, retention)
  redis.call('ZADD', prefix .. K_HISTORY_BUCKETS, 'NX', slot, slot)
  redis.call('DEL', note, prefix .. K_PAYLOAD .. id)
  if r[2] then
    local slots = prefix .. K_SERVICE .. device
    if redis.call('HGET', slots, r[2]) == id then
      redis.call('HDEL', slots, r[2])
    end
  end
  redis.call('HINCRBY', STATS, state, 1)
  redis.call('HINCRBY', STATS, 'pending', -1)
end

-- After a device's claim ended or its head changed: drop the lease, and make the (new) head due at
-- `due_ms`, or take an empty device out of every index. Only a head is ever due (invariant 2).
local function rearm(prefix, device, due_ms)
  redis.call('ZREM', LEASE, device)
  local head = redis.call('LINDEX', prefix .. K_QUEUE .. device, 0)
  if head then
    redis.call('ZADD', DUE, due_ms, device)
    -- A malformed accepted_at (invariant 14) must not stop the device: its age counts from now.
    local accepted_at = tonumber(redis.call('HGET', prefix .. K_NOTE .. head, 'accepted_at_ms'))
    redis.call('ZADD', HEADS, accepted_at or due_ms, device)
  else
    redis.call('ZREM', DUE, device)
    redis.call('ZREM', HEADS, device)
  end
end

-- The state a notification returns to when its claim ends unsent (release, lease run out).
-- Invariant 12, possibly sent keeps its place: QUEUED means never possibly sent, and only a QUEUED
-- notification may be superseded or overtaken by a chat line (enqueue). A notification that may
-- have reached APNs (an attempt settled, a send handed to the connection and then released, a
-- lease that ran out with its holder's send unknown: `possibly_sent` set) is RETRYING from then
-- on, whatever its attempts; a malformed `attempts` counts as an attempt made.
local function unsent_state(note)
  local seen = redis.call('HMGET', note, 'attempts', 'possibly_sent')
  if seen[2] or (tonumber(seen[1]) or 1) > 0 then
    return STATE.RETRYING
  end
  return STATE.QUEUED
end

-- The device "<app>:<token>" when claim number `claim_no` of notification `id` still stands: no
-- later claim was made and this one was not ended unsent, the notification is not final and is
-- still its device's head. Otherwise nil: the lease was lost and the caller's result must not
-- touch anything (invariant 3). A lease that ran out but was not claimed again still stands: its
-- result is as good as a re-send's.
local function claimed_device(prefix, id, claim_no)
  local note = redis.call('HMGET', prefix .. K_NOTE .. id, 'app', 'device_token', 'state', 'claim_no')
  if not note[1] or note[4] ~= claim_no or FINAL[note[3]] then
    return nil
  end
  local device = note[1] .. ':' .. note[2]
  if redis.call('LINDEX', prefix .. K_QUEUE .. device, 0) ~= id then
    return nil
  end
  return device
end

-- End a claim without a final state (retry, release): the head stays, due again at `due_ms`. The
-- claim number moves on so that the ended claim cannot act a second time.
local function end_claim_unsent(prefix, device, id, state, due_ms, now, fields)
  local note = prefix .. K_NOTE .. id
  redis.call('HINCRBY', note, 'claim_no', 1)
  redis.call('HSET', note, 'state', state, 'updated_at_ms', now, unpack(fields))
  redis.call('ZREM', LEASE, device)
  redis.call('ZADD', DUE, due_ms, device)
end

-- Fail the device's queued notifications from list index `first` on with one reason (dead token,
-- purge) and cut them from the list. Returns how many were failed.
local function fail_queued(prefix, device, first, now, retention, fields)
  local queue = prefix .. K_QUEUE .. device
  local ids = redis.call('LRANGE', queue, first, -1)
  for _, id in ipairs(ids) do
    finalise(prefix, device, id, STATE.FAILED, now, retention, fields)
  end
  if first == 0 then
    redis.call('DEL', queue)
  else
    redis.call('LTRIM', queue, 0, first - 1)
  end
  return #ids
end

-- A record's field as a whole number, or nil when it is missing or not one (invariant 14).
local function whole(value)
  if type(value) == 'string' and string.match(value, '^%-?%d+$') then
    return tonumber(value)
  end
  return nil
end

-- Whether the fields the scripts compute with are sound: whole numbers where they count, and the
-- record belongs to the queue it heads. The rest of a record is the codec's to check
-- (relay.payload.check_notification), so the rules are not written twice.
local function sound(fields, device)
  local app, token = fields[CLAIM_INDEX.app], fields[CLAIM_INDEX.device_token]
  return whole(fields[CLAIM_INDEX.expires_at]) and whole(fields[CLAIM_INDEX.attempts])
    and whole(fields[CLAIM_INDEX.accepted_at_ms]) and whole(fields[CLAIM_INDEX.updated_at_ms])
    and app and token and app .. ':' .. token == device
end

-- Lease `device`'s head, finalising on the way the heads that cannot be sent (past expires_at:
-- into `expired`; without a payload: failed MissingPayload; a record the scripts cannot compute
-- with: failed MalformedRecord, {id, device} into `malformed`). Appends {id, claim number,
-- payload, CLAIM_FIELDS values...} to `claimed` when a head was leased; the device then leaves
-- DUE for LEASE, or every index when nothing is left.
local function lease_head(prefix, device, now, lease_ms, retention, claimed, expired, malformed)
  local queue = prefix .. K_QUEUE .. device
  local head = redis.call('LINDEX', queue, 0)
  while head do
    local note = prefix .. K_NOTE .. head
    local fields = redis.call('HMGET', note, unpack(CLAIM_FIELDS))
    local payload = redis.call('GET', prefix .. K_PAYLOAD .. head)
    local intact = sound(fields, device)
    local live = intact and whole(fields[CLAIM_INDEX.expires_at]) * 1000 > now
    if live and payload then
      -- pcall: a claim_no that is not a whole number fails this record, not the script.
      local claim_no = redis.pcall('HINCRBY', note, 'claim_no', 1)
      if type(claim_no) == 'number' then
        redis.call('HSET', note, 'state', STATE.SENDING, 'updated_at_ms', now)
        claimed[#claimed + 1] = {head, claim_no, payload, unpack(fields)}
        break
      end
      intact = false
    end
    redis.call('LPOP', queue)
    if not intact then
      malformed[#malformed + 1] = {head, device}
      finalise(prefix, device, head, STATE.FAILED, now, retention,
        {'last_reason', 'MalformedRecord'})
    elseif live then
      -- A record without its payload cannot be sent; failing it keeps the device moving.
      finalise(prefix, device, head, STATE.FAILED, now, retention,
        {'last_reason', 'MissingPayload'})
    else
      expired[#expired + 1] = {head, fields[CLAIM_INDEX.app], fields[CLAIM_INDEX.service_id],
        fields[CLAIM_INDEX.action]}
      finalise(prefix, device, head, STATE.EXPIRED, now, retention, {})
    end
    head = redis.call('LINDEX', queue, 0)
  end
  rearm(prefix, device, now)
  if head then
    redis.call('ZREM', DUE, device)
    redis.call('ZADD', LEASE, now + lease_ms, device)
  end
end

-- lease_head, with any error it meets (a record no check foresaw) kept to its own device: the
-- device is set aside (due again in `set_aside_ms`, its lease dropped), {device, error} goes to
-- `errors`, and the claim goes on for every other device (invariant 14).
local function lease_head_guarded(prefix, device, now, lease_ms, retention, claimed, expired,
    malformed, errors, set_aside_ms)
  local before = #claimed
  local ok, problem = pcall(lease_head, prefix, device, now, lease_ms, retention, claimed, expired,
    malformed)
  if not ok then
    for i = #claimed, before + 1, -1 do
      claimed[i] = nil
    end
    redis.call('ZREM', LEASE, device)
    redis.call('ZADD', DUE, now + set_aside_ms, device)
    if type(problem) == 'table' then
      problem = problem.err or 'error'
    end
    errors[#errors + 1] = {device, tostring(problem)}
  end
end
