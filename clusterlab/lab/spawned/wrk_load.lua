-- The lab's load script for wrk (runs inside wrk, LuaJIT): the request mix, a tally of the
-- worker header per thread, every answered request's outcome in 100 ms bins, and wrk's own
-- latency distribution, written in done() to the file named by CLUSTERLAB_WRK_OUT.
--
-- Environment (set by clusterlab.lab.running.wrk):
--   CLUSTERLAB_WRK_OUT     the result file
--   CLUSTERLAB_WRK_PATHS   "weight path" lines: the request mix
--   CLUSTERLAB_WRK_HEADER  the worker header's name ("" for none)
--   CLUSTERLAB_WRK_CLOSE   "1": a new connection per request (Connection: close)
--
-- wrk calls response() for answered requests only: connect, read and timeout errors are totals
-- in done(), so failures are binned only when answered (4xx, 5xx). The lab refuses wrk for
-- scenarios that need every failure in time (faults).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } clusterlab_timespec;
int clock_gettime(int clk_id, clusterlab_timespec *tp);
]]
local CLOCK_REALTIME = 0
local BIN_S = 0.1
local clock = ffi.new("clusterlab_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_REALTIME, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local header = string.lower(os.getenv("CLUSTERLAB_WRK_HEADER") or "")
local headers = {}
if os.getenv("CLUSTERLAB_WRK_CLOSE") == "1" then
  headers["Connection"] = "close"
end

local paths, weights, total = {}, {}, 0
for line in string.gmatch(os.getenv("CLUSTERLAB_WRK_PATHS") or "1 /", "[^\n]+") do
  local weight, path = string.match(line, "^(%S+) (.+)$")
  total = total + tonumber(weight)
  table.insert(paths, path)
  table.insert(weights, total)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  tally = {}
  bins = {}
  started = now()
  requests = {}
  for i, path in ipairs(paths) do
    requests[i] = wrk.format("GET", path, headers)
  end
end

function request()
  if #requests == 1 then
    return requests[1]
  end
  local r = math.random() * total
  for i, limit in ipairs(weights) do
    if r < limit then
      return requests[i]
    end
  end
  return requests[#requests]
end

local OUTCOMES = { "ok", "4xx", "5xx" }
local worker_key = nil -- the header's name as the server spells it, found on the first answer

local function worker_of(response_headers)
  if worker_key ~= nil then
    local value = response_headers[worker_key]
    if value ~= nil then
      return value
    end
  end
  for name, value in pairs(response_headers) do
    if string.lower(name) == header then
      worker_key = name
      return value
    end
  end
  return nil
end

function response(status, response_headers, body)
  local outcome = 1
  if status >= 500 then
    outcome = 3
  elseif status >= 400 then
    outcome = 2
  end
  -- one number per (100 ms bin, outcome): no string built per answer
  local key = math.floor(now() / BIN_S) * 4 + outcome
  bins[key] = (bins[key] or 0) + 1
  if header ~= "" then
    local worker = worker_of(response_headers)
    if worker ~= nil then
      tally[worker] = (tally[worker] or 0) + 1
    end
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("CLUSTERLAB_WRK_OUT"), "w"))
  local first = nil
  for _, thread in ipairs(threads) do
    local t = thread:get("started")
    if first == nil or t < first then
      first = t
    end
  end
  out:write(string.format("start %.6f\nend %.6f\n", first, now()))
  out:write(string.format("requests %d\nduration_us %d\n", summary.requests, summary.duration))
  local e = summary.errors
  out:write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
  -- wrk's distribution, as wrk prints it: corrected for coordinated omission (before done(),
  -- each answer slower than twice the mean interval per connection adds synthetic samples), so
  -- its mean and percentiles are above the answers' own; Debian's wrk gives Lua no buckets to
  -- undo that with. The lab says so beside every wrk point's latency.
  out:write(string.format("latency %d %d %.3f\n", latency.min, latency.max, latency.mean))
  for i = 0, 999 do
    out:write(string.format("pct %.1f %d\n", i / 10, latency:percentile(i / 10)))
  end
  for _, p in ipairs({ 99.91, 99.92, 99.93, 99.94, 99.95, 99.96, 99.97, 99.98, 99.99, 99.999 }) do
    out:write(string.format("pct %.3f %d\n", p, latency:percentile(p)))
  end
  out:write(string.format("pct 100 %d\n", latency.max))
  for i, thread in ipairs(threads) do
    for worker, count in pairs(thread:get("tally")) do
      out:write(string.format("tally %s %d\n", worker, count))
    end
    for key, count in pairs(thread:get("bins")) do
      local bin = math.floor(key / 4)
      out:write(string.format("bin %d %s %d\n", bin, OUTCOMES[key - bin * 4], count))
    end
  end
  out:close()
end
