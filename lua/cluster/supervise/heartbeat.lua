-- Heartbeat: every interval, each ready worker is pinged; a worker whose
-- oldest unanswered ping is older than the timeout is stuck (its loop no
-- longer runs) and is killed ('hang'). The verdict waits for the loop to
-- read what has arrived, so a late master does not make its workers look
-- hung.

local uv = require("luv")
local timers = require("cluster.supervise.timers")

local Heartbeat = {}
Heartbeat.__index = Heartbeat

-- pool: the supervisor's pool; opts: { interval =, timeout = } (ms);
-- event(name, fields) emits a supervisor event.
function Heartbeat.start(pool, opts, event)
  local self = setmetatable({
    pool = pool, opts = opts, event = event, seq = 0,
    since = setmetatable({}, { __mode = "k" }),   -- rec -> when its oldest unanswered ping went out
    watched = setmetatable({}, { __mode = "k" }), -- rec -> true once its answers are listened to
  }, Heartbeat)
  self.timer = uv.new_timer()
  self.timer:start(opts.interval, opts.interval, function() self:tick() end)
  return self
end

-- Any answer clears the worker's unanswered pings.
function Heartbeat:watch(rec)
  if self.watched[rec] then return end
  self.watched[rec] = true
  rec.worker:on("heartbeat", function() self.since[rec] = nil end)
end

function Heartbeat:tick()
  local now = uv.now()
  self.seq = self.seq + 1
  local suspects = {}
  for _, rec in ipairs(self.pool:ready_list()) do
    self:watch(rec)
    local since = self.since[rec]
    if since and now - since > self.opts.timeout then
      suspects[#suspects + 1] = rec
    else
      self.since[rec] = since or now
      rec.worker:ping(self.seq)
    end
  end
  if #suspects == 0 then return end
  timers.after_io(function()
    local t = uv.now()
    for _, rec in ipairs(suspects) do
      local since = self.since[rec]
      if not rec.retiring and not rec.end_reason and not self.pool.ended(rec) and since
        and t - since > self.opts.timeout then
        self.event("hang", self.pool.ev_of(rec, { silent = t - since }))
        self.pool:end_worker(rec, "hang")
      end
    end
  end)
end

function Heartbeat:stop()
  timers.cancel(self.timer)
end

return Heartbeat
