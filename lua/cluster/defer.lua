-- Work for a later loop turn: 'setup', 'fork' and state changes started by
-- a call are emitted after the call returns, so listeners added right
-- after it still see them. One timer serves the whole queue; it is created
-- on first use (require must leave no handle behind) and never closed.
-- defer.unref_call is for work that should not keep the loop alive.

local uv = require("luv")
local call_protected = require("cluster.emitter").call_protected

local defer = {}

local queue, head, tail = {}, 1, 0
local timer

-- Run everything queued so far, in order (also called to keep event order
-- when a worker's own message overtakes the timer).
function defer.run()
  while head <= tail do
    local job = queue[head]
    queue[head] = nil
    head = head + 1
    call_protected("a deferred callback", job)
  end
  head, tail = 1, 0
  defer.waiting = false
end

-- true while jobs are queued (a field: it is read once per message).
defer.waiting = false

function defer.call(fn)
  defer.waiting = true
  tail = tail + 1
  queue[tail] = fn
  if not timer then timer = uv.new_timer() end
  if tail == head then timer:start(0, 0, defer.run) end
end

-- fn() on the loop's next turn, from a timer of its own that does not
-- keep the loop alive: if nothing else runs the loop, fn never runs. Not
-- part of defer.call's queue, and not protected (an error is luv's to
-- report).
function defer.unref_call(fn)
  local t = uv.new_timer()
  t:start(0, 0, function()
    t:close()
    fn()
  end)
  t:unref()
end

return defer
