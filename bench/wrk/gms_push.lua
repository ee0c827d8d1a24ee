-- wrk script: POST /gms/push, one GMS wait-for-agent event per request, a fresh GMS _id each
-- time and the device tokens taken in turn (per-device order: many devices, or no concurrency).
-- Arguments after `--`: API_TOKEN DEVICES SEED (8 hex digits) ID_PREFIX (at most 6 characters).
-- Tokens and ids have the same shape as bench/loadgen.py's, so results compare directly.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
end

function init(args)
  devices = tonumber(args[2])
  seed = args[3]
  prefix = args[4] .. string.format("%02X", thread_number)
  id_format = "%s%0" .. (32 - #prefix) .. "X"
  counter = 0
  headers = {
    ["Authorization"] = "Bearer " .. args[1],
    ["Content-Type"] = "application/json",
  }
end

function request()
  local token = seed .. string.format("%056x", counter % devices)
  local id = string.format(id_format, prefix, counter)
  counter = counter + 1
  local body = '{"deviceId":"' .. token .. '","message":{"_id":"' .. id
    .. '","_action":"wait-for-agent"}}'
  return wrk.format("POST", "/gms/push", headers, body)
end

-- One machine-readable line for the harness; wrk's own summary is printed above it.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"latency_p50_us":%d,'
      .. '"latency_p99_us":%d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(99)))
end
