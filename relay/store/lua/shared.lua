-- Helpers every script shares, in the library's top level (after the key-name prelude that
-- scripts.py generates), so a state change is written once. Every shard script's KEYS[1..4] are its
-- shard's due, lease, heads and stats keys (DUE, LEASE, HEADS, STATS, bound per call) and ARGV[1]
-- the shard's key prefix "relay:{s}:"; keys found at run time (queues, records) are built from
-- that prefix, so they share the {s} hash tag and the script stays in one Cluster slot.

-- Writes that several notifications of one call share, made once at its end (flush): the shard's
-- counters, and each history bucket's TTL and listing.
local counts, buckets_touched = {}, {}
local function count(name, by)
  counts[name] = (counts[name] or 0) + by
end

local function flush(prefix, retention)
  for name, by in pairs(counts) do
    if by ~= 0 then
      redis.call('HINCRBY', STATS, name, by)
    end
  end
  counts = {}
  for bucket, slot in pairs(buckets_touched) do
    redis.call('EXPIRE', bucket, retention)
    redis.call('ZADD', prefix .. K_HISTORY_BUCKETS, 'NX', slot, slot)
  end
  buckets_touched = {}
end

-- `value` as a number in [0, max] (a malformed record's text or a negative number: 0), for a
-- history record's fixed-size fields.
local function clamp(value, max)
  return math.min(math.max(tonumber(value) or 0, 0), max)
end

-- One length byte and the bytes of `value` (nil or false: none), as a history record holds a
-- string.
local function short_string(value)
  value = string.sub(value or '', 1, 255)
  return string.char(#value) .. value
end

-- ---- a queued notification's record (relay.store.queued: the layout is described there) ----

local NOTE_HEADER = '>BBI4I6HBHBBI6I6'
local NOTE_HEADER_SIZE = 31
local NOTE_MUTABLE = '>BI4I6HB' -- state, claim_no, updated_at_ms, attempts, possibly_sent
local NOTE_ACCEPTED_AT = 19 -- byte offset of accepted_at_ms (6 bytes)

-- The record `raw` as a table (its strings false when absent, the token as its bytes, the payload
-- from byte payload_at of raw), or nil when this layout did not write it (invariant 14: the
-- caller fails it alone).
local function read_note(raw)
  if type(raw) ~= 'string' or #raw < NOTE_HEADER_SIZE then
    return nil
  end
  local version, state, claim_no, updated, attempts, possibly_sent, last_status, priority,
    push_code, accepted, expires, pos = struct.unpack(NOTE_HEADER, raw)
  if version ~= NOTE_LAYOUT or not STATE_OF_CODE[state] then
    return nil
  end
  local n = {state = STATE_OF_CODE[state], claim_no = claim_no, updated_at_ms = updated,
    attempts = attempts, possibly_sent = possibly_sent, last_status = last_status,
    priority = priority, push_code = push_code, push_type = PUSH_TYPE_OF_CODE[push_code] or false,
    accepted_at_ms = accepted, expires_at = expires, raw = raw}
  local size, byte, sub = #raw, string.byte, string.sub
  for i = 1, #NOTE_STRINGS do
    local high, low = byte(raw, pos, pos + 1)
    if not low then
      return nil
    end
    local length, name = high * 256 + low, NOTE_STRINGS[i]
    pos = pos + 2
    if length == NOTE_ABSENT then
      n[name] = false
    elseif length == NOTE_SAME_AS_SERVICE and name == 'collapse_id' then
      n.collapse_id, n.collapse_is_service = n.service_id, true
    elseif pos + length - 1 > size then
      return nil
    else
      n[name] = sub(raw, pos, pos + length - 1)
      pos = pos + length
    end
  end
  n.payload_at = pos
  return n
end

local function payload_of(n)
  return string.sub(n.raw, n.payload_at)
end

-- The bytes a claim, release or lease running out rewrite, from byte 1 (SETRANGE).
local function note_mutable(n)
  return struct.pack(NOTE_MUTABLE, HISTORY_STATE[n.state], n.claim_no, n.updated_at_ms, n.attempts,
    n.possibly_sent)
end

-- The whole record of `n` again (a retry: its last status and reason change).
local function pack_note(n)
  local parts = {struct.pack(NOTE_HEADER, NOTE_LAYOUT, HISTORY_STATE[n.state], n.claim_no,
    n.updated_at_ms, n.attempts, n.possibly_sent, n.last_status, n.priority, n.push_code,
    n.accepted_at_ms, n.expires_at)}
  for _, name in ipairs(NOTE_STRINGS) do
    local value = n[name]
    if name == 'collapse_id' and n.collapse_is_service then
      parts[#parts + 1] = struct.pack('>H', NOTE_SAME_AS_SERVICE)
    elseif value then
      parts[#parts + 1] = struct.pack('>H', #value) .. value
    else
      parts[#parts + 1] = struct.pack('>H', NOTE_ABSENT)
    end
  end
  parts[#parts + 1] = payload_of(n)
  return table.concat(parts)
end

local function get_note(prefix, id)
  return read_note(redis.call('GET', prefix .. K_NOTE .. id))
end

-- When the record `id` was accepted (ms), read without the rest of it; nil when unreadable.
local function accepted_at(prefix, id)
  -- pcall: a key of another type reads as unreadable (settle calls this after its first write).
  local raw = redis.pcall('GETRANGE', prefix .. K_NOTE .. id, NOTE_ACCEPTED_AT,
    NOTE_ACCEPTED_AT + 5)
  if type(raw) ~= 'string' or #raw ~= 6 then
    return nil
  end
  return (struct.unpack('>I6', raw))
end

-- ---- the indexes ----

-- `device`'s head is now `head` (an id, or false when its queue is empty), due at `due_ms`:
-- DUE and HEADS follow (HEADS holds the head's accepted_at; a malformed one counts from now,
-- invariant 14). Its lease is the caller's.
local function head_changed(prefix, device, head, due_ms, head_accepted_ms)
  if head then
    redis.call('ZADD', DUE, due_ms, device)
    redis.call('ZADD', HEADS, head_accepted_ms or accepted_at(prefix, head) or due_ms, device)
  else
    redis.call('ZREM', DUE, device)
    redis.call('ZREM', HEADS, device)
  end
end

-- The key of the history bucket an id's final record goes to, its field there and the bucket's
-- number (relay.store.history: ids are "<shard>-<32 hex>", the first 12 hex digits the time the id
-- was made; the last 16, mostly random, tell the ids of one bucket apart).
local function history_slot(prefix, id)
  local made_ms = tonumber(string.sub(id, -32, -21), 16) or 0
  local bucket = math.floor(made_ms / HISTORY_BUCKET_MS)
  return prefix .. K_HISTORY .. bucket, string.sub(id, -16), bucket
end

-- Make one notification final: its queued record goes, and what the status API shows stays,
-- packed (the layout is relay.store.history's), in its shard's history bucket for the retention
-- period; the shard's counters move with it (the counter is named after the state; flush writes
-- them). `n` is its record as read_note read it (nil: malformed, only what its device says is
-- kept); `outcome` the result's last_status, last_reason, apns_id, apns_unique_id. The caller
-- takes it out of the device's list.
local function finalise(prefix, device, id, n, state, now, outcome)
  if not n or outcome.last_reason == 'MalformedRecord' then
    -- Only what is known good goes to the history: the device's app and the record's numbers.
    n = {app = string.match(device, '^(.*):'), accepted_at_ms = n and n.accepted_at_ms or now,
      expires_at = n and n.expires_at, attempts = n and n.attempts, claim_no = n and n.claim_no}
  end
  local accepted = clamp(n.accepted_at_ms, 2 ^ 48 - 1)
  -- GMS pushes collapse by their service id: said by a flag rather than stored twice.
  local layout, collapse = HISTORY_LAYOUT, n.collapse_id
  if n.collapse_is_service or (collapse and collapse == n.service_id) then
    layout, collapse = layout + HISTORY_COLLAPSE_IS_SERVICE, nil
  end
  local reason = outcome.last_reason
  if reason == nil then
    reason = n.last_reason
  end
  local record = struct.pack('>BBBBHBBI6I4I4', layout, HISTORY_STATE[state], clamp(n.attempts, 255),
      clamp(n.claim_no, 255), clamp(outcome.last_status or n.last_status, 65535),
      clamp(n.priority, 255), HISTORY_PUSH_TYPE[n.push_type] or 0, accepted,
      clamp(now - accepted, 2 ^ 32 - 1),
      clamp((tonumber(n.expires_at) or 0) - math.floor(accepted / 1000), 2 ^ 32 - 1))
    .. short_string(n.app) .. short_string(n.service_id) .. short_string(n.action)
    .. short_string(collapse) .. short_string(reason) .. short_string(outcome.apns_id)
    .. short_string(outcome.apns_unique_id)
  local bucket, field, slot = history_slot(prefix, id)
  redis.call('HSET', bucket, field, record)
  buckets_touched[bucket] = slot
  redis.call('DEL', prefix .. K_NOTE .. id)
  count(state, 1)
  count('pending', -1)
end

-- The state a notification returns to when its claim ends unsent (release, lease run out).
-- Invariant 12, possibly sent keeps its place: QUEUED means never possibly sent, and only a QUEUED
-- notification may be superseded or overtaken by a chat line (enqueue). A notification that may
-- have reached APNs (an attempt settled, a send handed to the connection and then released, a
-- lease that ran out with its holder's send unknown: possibly_sent set) is RETRYING from then on,
-- whatever its attempts.
local function unsent_state(n)
  if n.possibly_sent ~= 0 or n.attempts > 0 then
    return STATE.RETRYING
  end
  return STATE.QUEUED
end

-- The record of `id` (read_note's table) when claim number `claim_no` of it on `device` still
-- stands: no later claim was made and this one was not ended unsent, and it is still its device's
-- head; then also the id after it in the queue (false: none). Otherwise nil: the lease was lost
-- and the caller's result must not touch anything (invariant 3). A lease that ran out but was not
-- claimed again still stands: its result is as good as a re-send's.
local function claimed_note(prefix, device, id, claim_no)
  local n = get_note(prefix, id)
  if not n or n.claim_no ~= tonumber(claim_no) or FINAL[n.state] then
    return nil
  end
  local first = redis.call('LRANGE', prefix .. K_QUEUE .. device, 0, 1)
  if first[1] ~= id then
    return nil
  end
  return n, first[2] or false
end

-- End a claim without a final state (retry, release): the head stays, due again at `due_ms`. The
-- claim number moves on so that the ended claim cannot act a second time. `whole`: other fields
-- than the mutable ones changed (a retry's status and reason): the record is written again.
local function end_claim_unsent(prefix, device, id, n, state, due_ms, now, whole)
  n.claim_no, n.state, n.updated_at_ms = n.claim_no + 1, state, now
  if whole then
    redis.call('SET', prefix .. K_NOTE .. id, pack_note(n))
  else
    redis.call('SETRANGE', prefix .. K_NOTE .. id, 1, note_mutable(n))
  end
  redis.call('ZREM', LEASE, device)
  redis.call('ZADD', DUE, due_ms, device)
end

-- Fail the device's queued notifications from list index `first` on with one outcome (dead token,
-- purge) and cut them from the list: newest first, each cut as it is failed, so that an error
-- part-way (a history bucket of another type) leaves the ones not reached queued as they were and
-- none failed twice. Returns how many were failed.
local function fail_queued(prefix, device, first, now, outcome)
  local queue = prefix .. K_QUEUE .. device
  local ids = redis.call('LRANGE', queue, first, -1)
  for i = #ids, 1, -1 do
    -- pcall: a record of another type is failed with what its device says (14).
    local ok, n = pcall(get_note, prefix, ids[i])
    finalise(prefix, device, ids[i], ok and n or nil, STATE.FAILED, now, outcome)
    redis.call('RPOP', queue)
  end
  return #ids
end

-- What a claim hands out of a record: CLAIM_FIELDS' values (false: none), the token as hex.
local function claim_values(n, token_hex)
  local values = {}
  for i, name in ipairs(CLAIM_FIELDS) do
    if name == 'device_token' then
      values[i] = token_hex
    else
      values[i] = n[name]
    end
  end
  return values
end

-- Lease `device`'s head, finalising on the way the heads that cannot be sent (past expires_at:
-- into `expired`; without a payload: failed MissingPayload; a record the scripts cannot read, or
-- one of another device: failed MalformedRecord, {id, device} into `malformed`). Appends {id,
-- claim number, payload, the record's token bytes, CLAIM_FIELDS values...} to `claimed` when a
-- head was leased, and the
-- device to `leased` (the caller moves those from DUE to LEASE in one command each); a device
-- left with nothing leaves every index.
local function lease_head(prefix, device, now, claimed, expired, malformed, leased)
  local queue = prefix .. K_QUEUE .. device
  local head = redis.call('LINDEX', queue, 0)
  local popped = false
  while head do
    local n = get_note(prefix, head)
    -- The record's app is the device's, and its token as long as the device's: whether the
    -- token's bytes are the device's hex digits the codec checks (relay.store.codec.leased_from).
    local intact = n and n.app and n.device_token and n.claim_no < 2 ^ 32 - 1
      and string.sub(device, 1, #n.app + 1) == n.app .. ':'
      and #device == #n.app + 1 + 2 * #n.device_token
    local live = intact and n.expires_at * 1000 > now
    if live and n.payload_at <= #n.raw then
      if popped then
        redis.call('ZADD', HEADS, n.accepted_at_ms, device)
      end
      n.claim_no, n.state, n.updated_at_ms = n.claim_no + 1, STATE.SENDING, now
      redis.call('SETRANGE', prefix .. K_NOTE .. head, 1, note_mutable(n))
      local values = claim_values(n, string.sub(device, #n.app + 2))
      claimed[#claimed + 1] = {head, n.claim_no, payload_of(n), n.device_token,
        unpack(values, 1, #CLAIM_FIELDS)}
      leased[#leased + 1] = device
      return
    end
    redis.call('LPOP', queue)
    popped = true
    if not intact then
      malformed[#malformed + 1] = {head, device}
      finalise(prefix, device, head, n, STATE.FAILED, now, {last_reason = 'MalformedRecord'})
    elseif live then
      -- A record without its payload cannot be sent; failing it keeps the device moving.
      finalise(prefix, device, head, n, STATE.FAILED, now, {last_reason = 'MissingPayload'})
    else
      expired[#expired + 1] = {head, n.app, n.service_id, n.action}
      finalise(prefix, device, head, n, STATE.EXPIRED, now, {})
    end
    head = redis.call('LINDEX', queue, 0)
  end
  head_changed(prefix, device, false, now)
  redis.call('ZREM', LEASE, device)
end

-- How long a device whose claim or settle met an error (a key no check foresaw) waits before it
-- is claimed again.
local SET_ASIDE_MS = 60000

-- The text of an error pcall caught (a Redis error reply is a table holding it in `err`).
local function error_text(problem)
  if type(problem) == 'table' then
    return tostring(problem.err or 'error')
  end
  return tostring(problem)
end

-- Set `device` aside after `problem` (a script error) met it: its lease dropped, due again in
-- SET_ASIDE_MS; {device, problem} goes to `errors` (invariant 14: the call goes on for the rest).
local function set_aside(device, now, problem, errors)
  redis.call('ZREM', LEASE, device)
  redis.call('ZADD', DUE, now + SET_ASIDE_MS, device)
  errors[#errors + 1] = {device, error_text(problem)}
end

-- lease_head, with any error it meets (a record no check foresaw) kept to its own device: the
-- device is set aside and the claim goes on for every other device (invariant 14).
local function lease_head_guarded(prefix, device, now, claimed, expired, malformed, leased,
    errors)
  local before, leased_before = #claimed, #leased
  local ok, problem = pcall(lease_head, prefix, device, now, claimed, expired, malformed, leased)
  if not ok then
    for i = #claimed, before + 1, -1 do
      claimed[i] = nil
    end
    for i = #leased, leased_before + 1, -1 do
      leased[i] = nil
    end
    set_aside(device, now, problem, errors)
  end
end

-- Move the devices whose heads were leased from DUE to LEASE, one command each.
local function lease_devices(leased, deadline_ms)
  if #leased == 0 then
    return
  end
  redis.call('ZREM', DUE, unpack(leased))
  local scored = {}
  for i, device in ipairs(leased) do
    scored[2 * i - 1], scored[2 * i] = deadline_ms, device
  end
  redis.call('ZADD', LEASE, unpack(scored))
end
