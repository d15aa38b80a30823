-- Timers for the supervisor's parts: one-shot timers, and verdicts given
-- only after the loop has read what is waiting on its sockets.

local uv = require("luv")
local Emitter = require("cluster.emitter")

local timers = {}

-- fn() once, ms from now; returns the handle (closed when it fires or by
-- timers.cancel).
function timers.after(ms, fn)
  local t = uv.new_timer()
  t:start(math.max(0, math.floor(ms + 0.5)), 0, function()
    t:close()
    fn()
  end)
  return t
end

-- Cancel a timer from timers.after (nil and fired ones are fine).
function timers.cancel(t)
  if t and not t:is_closing() then t:close() end
end

-- Verdicts (hung? not ready? still running?) are given after the loop's
-- next poll phase, not in the timer callback that asks for them: timers run
-- before I/O, so when this process was late (busy, descheduled), the
-- answer that clears a worker (a pong, 'listening', its exit) may be
-- sitting unread. An idle handle keeps that poll from blocking; the check
-- handle runs right after it. One pair of handles serves every supervisor.
local pending = {}
local check, idle

local function run_pending()
  check:stop()
  idle:stop()
  local list = pending
  pending = {}
  for _, fn in ipairs(list) do Emitter.call_protected("a supervisor verdict", fn) end
end

function timers.after_io(fn)
  pending[#pending + 1] = fn
  if not check then check, idle = uv.new_check(), uv.new_idle() end
  if #pending == 1 then
    check:start(run_pending)
    idle:start(function() end)
  end
end

return timers
