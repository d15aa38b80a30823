-- Helpers shared by lua_cluster.lua (the master) and lua_worker.lua.
local M = {}

M.CHUNK = tonumber(os.getenv("BENCH_CHUNK") or "") or 10000 -- small messages per burst
M.BIG_CHUNK = tonumber(os.getenv("BENCH_BIG_CHUNK") or "") or 16 -- 64 KiB messages per burst
M.IN_FLIGHT = tonumber(os.getenv("BENCH_IN_FLIGHT") or "") or 2 -- bursts unwritten at once
M.SMALL_TEXT = "hello world"
M.BIG = string.rep("x", 65536)

function M.small(i) return { seq = i, text = M.SMALL_TEXT } end
function M.big() return M.BIG end

-- Sends n messages made by make(i) through send(msg[, cb]), in bursts of
-- `chunk` (default CHUNK) messages with a write callback on the last message of each burst, and at most
-- IN_FLIGHT bursts unwritten at once: bounded memory whatever the receiver
-- does. When a burst has been written, the next one is queued on a later loop
-- turn (a 0 ms timer; the library flushes what is queued before the loop
-- polls), not from inside the write callback itself. done() runs once all
-- are written.
function M.burst_send(send, n, make, done, chunk)
  chunk = chunk or M.CHUNK
  local uv = require("luv")
  local nxt, outstanding, pumping = 1, 0, false
  local pump
  if n <= 0 then
    if done then done() end
    return
  end
  local timer = uv.new_timer()
  local function written(err)
    if err then
      io.stderr:write("bench: send failed: ", tostring(err), "\n")
      os.exit(1)
    end
    outstanding = outstanding - 1
    if nxt > n then
      if outstanding == 0 then
        if not timer:is_closing() then timer:close() end
        if done then done() end
      end
      return
    end
    if not timer:is_active() then timer:start(0, 0, pump) end
  end
  pump = function()
    if pumping then return end
    pumping = true
    while outstanding < M.IN_FLIGHT and nxt <= n do
      local last = math.min(n, nxt + chunk - 1)
      outstanding = outstanding + 1
      for i = nxt, last - 1 do send(make(i)) end
      nxt = last + 1
      send(make(last), written)
    end
    pumping = false
  end
  pump()
end

return M
