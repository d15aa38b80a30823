-- Supervision of a pool of workers: respawn with backoff and a crash-loop
-- guard, readiness with a boot timeout, serialized rolling reloads that
-- abort on a failed boot, graceful stop with a timeout, heartbeat hang
-- detection, scaling and stats. The runner (bin/luv-cluster) is a thin
-- command line around it.
--
--   local supervise = require("cluster.supervise")
--   local sv = supervise.start{ workers = 4, exec = "server.lua" }
--   sv:on("ready", function(ev) print(ev.id, ev.pid) end)
--   sv:reload(function(ok, err) end)
--   sv:stop(function(clean, info) end)
--
-- Every event is a table { event = name, slot =, id =, pid =, ... }, given
-- to sv:on(name, fn) listeners, to sv:on("*", fn) and to opts.on_event.
--
-- opts.on_start(sv), when given, is called once inside start, after the
-- supervisor is set up and before the first worker forks: the place to
-- add listeners (sv:on, cluster:on) that must see every worker. An error
-- it raises propagates out of start, with no worker left running.
--
-- The work is split into parts, each with its own state, in
-- lua/cluster/supervise/: options (defaults and checks), pool (slots, the
-- worker processes, respawn and the crash-loop guard), rolling (reloads and
-- replacements, one step at a time), heartbeat (hang detection), recycle
-- (memory and age limits) and stopping (the graceful stop). This file
-- wires them together and holds the public methods.

local uv = require("luv")
local cluster = require("cluster")
local Emitter = require("cluster.emitter")
local compat = require("cluster.compat")
local options = require("cluster.supervise.options")
local timers = require("cluster.supervise.timers")
local Pool = require("cluster.supervise.pool")
local Rolling = require("cluster.supervise.rolling")
local Heartbeat = require("cluster.supervise.heartbeat")
local Recycle = require("cluster.supervise.recycle")
local Stopping = require("cluster.supervise.stopping")

local supervise = {}
local fail = options.fail

local Supervisor = {}
for k, v in pairs(Emitter) do Supervisor[k] = v end
Supervisor.__index = Supervisor

function supervise.start(opts)
  local o = options.normalize(opts)
  local too_many = options.capacity_error(o, o.workers)
  if too_many then fail(too_many, 2) end
  local sv = Emitter.new(setmetatable({}, Supervisor))
  sv.options = o
  sv.reloads = 0     -- completed reloads

  local function event(name, fields)
    fields = fields or {}
    fields.event = name
    fields.time = uv.now()
    if o.on_event then Emitter.call_protected("an on_event callback", o.on_event, fields) end
    sv:emit(name, fields)
    sv:emit("*", fields)
    return fields
  end

  local pool = Pool.new(sv, o, event)
  local rolling = Rolling.new(sv, pool, event)
  local heartbeat = o.heartbeat and Heartbeat.start(pool, o.heartbeat, event)
  local recycle = (o.max_memory or o.max_age) and Recycle.start(pool, o, function(index, reason, fields)
    sv:replace(index, reason, fields)
  end)
  local stopping = Stopping.new(sv, pool, event, function(why)
    if heartbeat then heartbeat:stop() end
    if recycle then recycle:stop() end
    pool:cancel_respawns()
    rolling:cancel(why)
  end)
  sv._pool, sv._rolling, sv._stopping, sv._event = pool, rolling, stopping, event

  for _ = 1, o.workers do pool:new_slot() end
  if o.policy then cluster.schedulingPolicy = o.policy end
  if o.on_start then
    -- Supervision is set up (the slots exist, sv:on works) and nothing
    -- has forked yet. An error raised here stops the supervisor before
    -- any worker starts (and kills any the callback started), then
    -- propagates out of start.
    local ok, err = pcall(o.on_start, sv)
    if not ok then
      stopping:abort()
      error(err, 0)
    end
  end
  for _, slot in ipairs(pool.slots) do pool:start_slot(slot, "start") end
  return sv
end

-- Public methods ---------------------------------------------------------

function Supervisor:reload(cb)
  if cb ~= nil and type(cb) ~= "function" then fail("reload: callback must be a function", 2) end
  if self.state ~= "running" then
    if cb then timers.after(0, function() cb(false, "stopped") end) end
    return false
  end
  self._rolling:reload(cb)
  return true
end

-- replace(slot, [reason], [fields], [cb]): replace the worker serving
-- `slot` by the step a reload takes (a new worker ready first, then the
-- old one drains), queued behind a running reload. Emits 'recycle'
-- (with reason and fields) now; cb(ok, err) when done. Returns true, or
-- nil and why when there is nothing to replace.
function Supervisor:replace(index, reason, fields, cb)
  if type(reason) == "function" then reason, fields, cb = nil, nil, reason end
  if type(fields) == "function" then fields, cb = nil, fields end
  if not compat.is_integer(index) then fail("replace: slot must be an integer (got " .. tostring(index) .. ")", 2) end
  if reason ~= nil and type(reason) ~= "string" then fail("replace: reason must be a string", 2) end
  if fields ~= nil and type(fields) ~= "table" then fail("replace: fields must be a table", 2) end
  if cb ~= nil and type(cb) ~= "function" then fail("replace: callback must be a function", 2) end
  if self.state ~= "running" then return nil, "not running" end
  local slot = self._pool.slots[index]
  local rec = slot and slot.worker
  if not rec or not self._pool:serves(rec) then return nil, "no worker serving slot " .. tostring(index) end
  self._rolling:replace(rec, reason or "replace", fields, cb)
  return true
end

-- stop([opts], [cb]): graceful unless opts.immediate; cb(clean, {killed=n}).
function Supervisor:stop(a, b)
  local sopts, cb = a, b
  if type(a) == "function" then sopts, cb = nil, a end
  self._stopping:stop((sopts or {}).immediate, cb)
  return self
end

-- Add a slot; nil, why when stopping or the fd limit has no room.
function Supervisor:add()
  if self.state ~= "running" then return nil, "not running" end
  local refused = options.capacity_error(self.options, self:size() + 1)
  if refused then
    self._event("scale_refused", { workers = self:size(), error = refused })
    return nil, refused
  end
  return self._pool:add_slot().index
end

-- Remove the newest slot; its worker leaves gracefully.
function Supervisor:remove()
  if self.state ~= "running" then return nil end
  local slot = self._pool:remove_slot()
  return slot and slot.index
end

function Supervisor:size()
  return self._pool:size()
end

function Supervisor:scale(n)
  if not compat.is_integer(n) or n < 0 then fail("scale: a non-negative integer expected", 2) end
  while self:size() < n do
    if not self:add() then break end
  end
  while self:size() > n do self:remove() end
  return self
end

function Supervisor:errored_all()
  return self._pool:errored_all()
end

-- One row per live worker process (serving, booting or draining), and
-- one per slot without a worker (backoff, errored).
function Supervisor:stats()
  return self._pool:stats()
end

-- The worker serving each slot (for tests and tools).
function Supervisor:workers()
  return self._pool:workers()
end

supervise.address_text = Pool.address_text
supervise.DEFAULTS = options.DEFAULTS

return supervise
