-- Recycling: every interval, a serving worker over max_memory (RSS) or
-- past its own age limit (rec.max_age, drawn with jitter at its fork) is
-- replaced by replace(slot, reason, fields): the supervisor's rolling step,
-- which shares a request already queued for the same worker.

local uv = require("luv")
local Emitter = require("cluster.emitter")
local timers = require("cluster.supervise.timers")

local Recycle = {}
Recycle.__index = Recycle

-- opts: the supervisor's options (max_memory, recycle_interval);
-- replace(slot_index, reason, fields).
function Recycle.start(pool, opts, replace)
  local self = setmetatable({ pool = pool, opts = opts, replace = replace }, Recycle)
  self.timer = uv.new_timer()
  self.timer:start(opts.recycle_interval, opts.recycle_interval, function()
    Emitter.call_protected("the recycling check", self.check, self)
  end)
  return self
end

function Recycle:check()
  local now = uv.now()
  for _, rec in ipairs(self.pool:serving_list()) do
    if rec.ready then
      local rss = self.opts.max_memory and self.pool.rss_of(rec.worker.pid)
      local age = now - rec.started
      if rss and rss > self.opts.max_memory then
        self.replace(rec.slot.index, "memory", { rss = rss, limit = self.opts.max_memory })
      elseif rec.max_age and age >= rec.max_age then
        self.replace(rec.slot.index, "age", { age = age, limit = math.floor(rec.max_age + 0.5) })
      end
    end
  end
end

function Recycle:stop()
  timers.cancel(self.timer)
end

return Recycle
