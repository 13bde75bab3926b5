-- wrk script: POST pre-signed NOWPayments IPNs, each thread its own slice.
--
-- wrk -s ipn.lua URL -- BODIES FIRST LAST THREADS DISTINCT
--   BODIES    file of "<signature>\t<body>" lines (bench/bodies.py)
--   FIRST     first line to use, 0-based; LAST: one past the last line
--   THREADS   wrk's -t, so the range splits into disjoint per-thread slices
--   DISTINCT  1: warn on stderr if a thread runs out and starts repeating
--
-- Requests are formatted once in init, so sending costs wrk next to nothing.
-- done() prints one "BENCH_RESULT {...}" JSON line for bench/wrk.py to parse.

local next_thread_id = 0

function setup(thread)
   thread:set("thread_id", next_thread_id)
   next_thread_id = next_thread_id + 1
end

local requests = {}
local count = 0
local position = 0
local distinct = false
local warned = false

function init(args)
   local path = args[1]
   local first = tonumber(args[2])
   local last = tonumber(args[3])
   local threads = tonumber(args[4])
   distinct = args[5] == "1"
   local share = math.floor((last - first) / threads)
   local low = first + thread_id * share
   local high = low + share
   local line_number = 0
   for line in io.lines(path) do
      if line_number >= high then
         break
      end
      if line_number >= low then
         local tab = line:find("\t", 1, true)
         local headers = {
            ["Content-Type"] = "application/json",
            ["x-nowpayments-sig"] = line:sub(1, tab - 1),
         }
         count = count + 1
         requests[count] = wrk.format("POST", nil, headers, line:sub(tab + 1))
      end
      line_number = line_number + 1
   end
   if count == 0 then
      error("no bodies in lines " .. low .. ".." .. high .. " of " .. path)
   end
end

function request()
   position = position + 1
   if position > count then
      position = 1
      if distinct and not warned then
         warned = true
         io.stderr:write("BENCH_EXHAUSTED thread ran out of distinct bodies\n")
      end
   end
   return requests[position]
end

function done(summary, latency, _)
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"non_2xx_3xx": %d, "connect_errors": %d, "read_errors": %d, '
         .. '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
         .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, errors.status,
      errors.connect, errors.read, errors.write, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
