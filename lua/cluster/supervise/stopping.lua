-- Stopping: every worker is let go and SIGKILLed if it is still running
-- stop_timeout ms later (at once when immediate); the supervisor is
-- stopped once the last one has exited. Owns the supervisor's state
-- ("running" -> "stopping" -> "stopped"), the stop callbacks and the count
-- of workers it had to kill.

local Emitter = require("cluster.emitter")
local timers = require("cluster.supervise.timers")

local Stopping = {}
Stopping.__index = Stopping

-- quiet(): ends everything that would start or judge workers (heartbeat,
-- recycling, respawns, rolling steps), given why ("stopped").
function Stopping.new(sv, pool, event, quiet)
  local self = setmetatable({ sv = sv, pool = pool, event = event, quiet = quiet, cbs = {}, killed = 0 }, Stopping)
  sv.state = "running"
  pool.on_empty = function() self:check() end
  return self
end

-- stop(immediate, cb): graceful unless immediate; a second call escalates.
-- cb(clean, { killed = n }) once every worker has exited.
function Stopping:stop(immediate, cb)
  local sv, pool = self.sv, self.pool
  if cb then self.cbs[#self.cbs + 1] = cb end
  if sv.state == "stopped" then
    if cb then timers.after(0, function() cb(self.killed == 0, { killed = self.killed }) end) end
    return
  end
  local function count() self.killed = self.killed + 1 end
  if sv.state == "running" then
    sv.state = "stopping"
    self.killed = 0
    self.event("stopping", { graceful = not immediate, workers = pool:live_count(), timeout = pool.o.stop_timeout })
    self.quiet("stopped")
    for _, rec in ipairs(pool:live_list()) do
      pool:retire(rec, "stop")
      -- The stop timeout replaces a reload's or scale's own.
      pool:deadline(rec, pool.o.stop_timeout, "stop_timeout", count)
    end
  end
  if immediate then
    for _, rec in ipairs(pool:live_list()) do pool:kill(rec, "immediate", count) end
  end
  if next(pool.live) == nil then timers.after(0, function() self:check() end) end
end

-- Stopped once stopping and no worker is left.
function Stopping:check()
  if self.sv.state ~= "stopping" or next(self.pool.live) ~= nil then return end
  self.sv.state = "stopped"
  local killed = self.killed
  self.event("stopped", { killed = killed, clean = killed == 0 })
  local cbs = self.cbs
  self.cbs = {}
  for _, cb in ipairs(cbs) do Emitter.call_protected("a stop callback", cb, killed == 0, { killed = killed }) end
end

-- Stopped at once, without events: the start failed. Any worker started
-- is killed.
function Stopping:abort()
  self.sv.state = "stopped"
  self.quiet("stopped")
  for _, rec in ipairs(self.pool:live_list()) do self.pool:end_worker(rec, "start_failed") end
end

return Stopping
