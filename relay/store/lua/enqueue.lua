-- enqueue: accept notifications into their devices' FIFOs (one shard's, each on its own: accepted
-- whole or refused having written nothing).
-- KEYS[1..4] the shard's due, lease, heads, stats; then per notification ARGV says how many keys
-- it has (3 or 4): its device's queue LIST, its record STRING, its device's dead-token HASH and,
-- when it has one, its idempotency key.
-- ARGV[1] shard key prefix; ARGV[2] now (ms); ARGV[3] retention (s); ARGV[4] per-device cap;
-- ARGV[5] per-shard pending cap; then 8 values per notification: its id, device "<app>:<token>",
-- service_id to supersede by ('' = none), order group and order ('' = none: append at the tail),
-- record (relay.store.queued.pack_queued: queued, accepted at ARGV[2], the APNs payload at its
-- end), the digest of the request that chose the idempotency key ('' = the relay derived the key:
-- any repeat is a duplicate), and its key count.
-- Returns per notification {'accepted', id, superseded id or ''} | {'duplicate', id} | {'reused',
-- id} (the key came with another request digest) | {'dead', reason, invalid_since_ms} |
-- {'device_full'} | {'pending_full'} | {'unreadable', error} (a key of its device that is not of the
-- type this relay writes; nothing of it stored).
-- The idempotency key holds "<id>" or "<id> <request digest>".
-- Keeps: 1 (accepted means stored; every check precedes every write, so a refusal stores nothing),
-- 2 (appended at the tail; an ordered notification is inserted before the first never-sent one of
-- its group with a higher order, never before one sent or in flight), 6 (dead tokens refused), 9
-- (both caps; a duplicate counts against none), idempotency, 12 (possibly sent keeps its place:
-- only a QUEUED notification, one never claimed or only given back before its request went out,
-- is superseded or passed by a chat line; one in flight, retrying or whose lease ran out never
-- is) and 14 (a queued record it cannot read is passed over, never a failed enqueue).
local prefix, now, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local device_cap, pending_cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local pending = tonumber(redis.call('HGET', STATS, 'pending') or '0')
local woken = false

local function enqueue_one(queue, note, dead, idem, id, device, service_id, order_group, order,
    record, digest)
  -- The same call run again (redis-py re-sends a command whose reply was lost, a spool replay
  -- repeated): it is done already, and may be final since (its record then is history).
  local history, history_field = history_slot(prefix, id)
  if redis.call('EXISTS', note) == 1 or redis.call('HEXISTS', history, history_field) == 1 then
    return {'accepted', id, ''}
  end
  if idem then
    local seen = redis.call('GET', idem)
    if seen then
      local seen_id, seen_digest = string.match(seen, '^(%S+) ?(.*)$')
      if seen_digest ~= '' and digest ~= '' and seen_digest ~= digest then
        return {'reused', seen_id}
      end
      return {'duplicate', seen_id}
    end
  end
  local mark = redis.call('HMGET', dead, 'reason', 'invalid_since_ms')
  if mark[1] then
    return {'dead', mark[1], mark[2]}
  end

  -- The device's queue is short (the per-device cap bounds it): the notification this one
  -- supersedes (the latest with its service id, when that one is QUEUED) and the one it goes before
  -- (the first QUEUED one of its group with a higher order) are found by reading it, newest first
  -- for the first, oldest first for the second.
  local ids, length = nil, nil
  local notes = {}
  local function note_at(i)
    if notes[i] == nil then
      -- pcall: a key of another type (an older layout's record) is passed over, as unreadable.
      local ok, n = pcall(get_note, prefix, ids[i])
      notes[i] = ok and n or false
    end
    return notes[i]
  end
  if service_id ~= '' or order then
    ids = redis.call('LRANGE', queue, 0, -1)
    length = #ids
  else
    length = redis.call('LLEN', queue)
  end
  local older, older_at = false, nil
  if service_id ~= '' then
    -- The service id is a record's first string: its length and bytes follow the header, so each
    -- record is read only that far (a record of another layout matches nothing: invariant 14).
    local wanted = struct.pack('>H', #service_id) .. service_id
    for i = length, 1, -1 do
      local start = redis.pcall('GETRANGE', prefix .. K_NOTE .. ids[i], 0,
        NOTE_HEADER_SIZE + #wanted - 1)
      if type(start) == 'string' and string.byte(start, 1) == NOTE_LAYOUT and string.sub(start, NOTE_HEADER_SIZE + 1) == wanted then
        if string.byte(start, 2) == HISTORY_STATE[STATE.QUEUED] then
          older, older_at = ids[i], i
        end
        break
      end
    end
  end
  local freed = older and 1 or 0
  if length - freed >= device_cap then
    return {'device_full'}
  end
  if pending + (counts.pending or 0) - freed >= pending_cap then
    return {'pending_full'}
  end
  local successor = false
  if order then
    for i = 1, length do
      local n = note_at(i)
      -- tonumber: a malformed order is passed by nothing rather than failing the enqueue (14).
      if i ~= older_at and n and n.state == STATE.QUEUED and n.order_group == order_group
          and (tonumber(n.order) or -math.huge) > order then
        successor = ids[i]
        break
      end
    end
  end

  -- A device that had nothing queued, or whose head was superseded, is due now: wake a worker.
  local newly_due = length == 0
  if older then
    newly_due = older_at == 1
    redis.call('LREM', queue, 1, older)
    finalise(prefix, device, older, note_at(older_at), STATE.SUPERSEDED, now, {})
  end
  if successor then
    -- A new head takes over the old one's due time; HEADS keeps the older accepted_at, which is
    -- still pending, so the oldest-pending age does not jump back.
    redis.call('LINSERT', queue, 'BEFORE', successor, id)
  else
    redis.call('RPUSH', queue, id)
  end
  redis.call('SET', note, record)
  if idem then
    local remembered = id
    if digest ~= '' then
      remembered = id .. ' ' .. digest
    end
    redis.call('SET', idem, remembered, 'EX', retention)
  end
  count('enqueued', 1)
  count('pending', 1)
  if newly_due then
    local head = id
    if length > 1 then
      head = redis.call('LINDEX', queue, 0)
    end
    head_changed(prefix, device, head, now, head == id and now or nil)
    woken = true
  end
  return {'accepted', id, older or ''}
end

local replies, key = {}, 5
for i = 6, #ARGV, 8 do
  local key_count = tonumber(ARGV[i + 7])
  local idem = false
  if key_count == 4 then
    idem = KEYS[key + 3]
  end
  -- pcall: a key of the device's that a command cannot read (another type) refuses this one
  -- notification; the others are stored and every stored one counted (the counts are written
  -- once, below). Every read that can meet such a key precedes the notification's first write.
  local ok, reply = pcall(enqueue_one, KEYS[key], KEYS[key + 1], KEYS[key + 2], idem, ARGV[i],
    ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6])
  if not ok then
    reply = {'unreadable', error_text(reply)}
  end
  replies[#replies + 1] = reply
  key = key + key_count
end
flush(prefix, retention)
if woken then
  redis.call('PUBLISH', WAKE_CHANNEL, prefix)
end
return replies
