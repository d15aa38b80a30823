-- Rolling steps: a worker is replaced by booting a candidate for its slot
-- and letting the old one go only once the candidate is ready. A request is
-- either a reload (a step for every slot, in order) or the replacement of
-- one worker (sv:replace, recycling). Requests run one at a time, in the
-- order asked; a candidate that fails aborts its request and the old
-- workers keep serving.

local uv = require("luv")
local Emitter = require("cluster.emitter")

local Rolling = {}
Rolling.__index = Rolling

-- sv: the supervisor (its state and reload count), pool: its pool,
-- event(name, fields) emits a supervisor event.
function Rolling.new(sv, pool, event)
  return setmetatable({
    sv = sv, pool = pool, event = event,
    queue = {},       -- requests waiting: { cbs = {...} } or { rec =, reason =, cbs = {...} }
    current = nil,    -- the request running; .candidate is the worker it boots
    replacing = {},   -- rec -> its replacement request, queued or running
  }, Rolling)
end

local function running(self)
  return self.sv.state == "running"
end

local function call_all(cbs, what, ...)
  for _, cb in ipairs(cbs) do Emitter.call_protected(what, cb, ...) end
end

-- A reload of every slot. Requests made while one waits share it; cb(ok,
-- err) when it is done. Returns false when the supervisor is not running.
function Rolling:reload(cb)
  local pending
  for _, q in ipairs(self.queue) do
    if not q.rec then pending = q; break end
  end
  if not pending then
    pending = { cbs = {} }
    self.queue[#self.queue + 1] = pending
  end
  if cb then pending.cbs[#pending.cbs + 1] = cb end
  self.event("reload_request", { queued = self.current ~= nil })
  self:run()
end

-- The replacement of `rec` (the worker serving its slot), emitting
-- 'recycle' with `reason` and `fields`; a second request for the same
-- worker shares the first.
function Rolling:replace(rec, reason, fields, cb)
  local shared = self.replacing[rec]
  if shared then
    if cb then shared.cbs[#shared.cbs + 1] = cb end
    return
  end
  local ev = self.pool.ev_of(rec, {})
  for k, v in pairs(fields or {}) do ev[k] = v end
  ev.reason, ev.age = reason, ev.age or (uv.now() - rec.started)
  self.event("recycle", ev)
  local r = { rec = rec, reason = reason, cbs = { cb } }
  self.replacing[rec] = r
  self.queue[#self.queue + 1] = r
  self:run()
end

-- The supervisor stops: queued requests get (false, why); the running
-- one's candidate gives up, which ends that request the same way.
function Rolling:cancel(why)
  local queue = self.queue
  self.queue = {}
  for _, r in ipairs(queue) do
    if r.rec then self.replacing[r.rec] = nil end
    call_all(r.cbs, "a reload callback", false, why)
  end
  if self.current and self.current.candidate then
    self.pool:abandon_candidate(self.current.candidate, why)
  end
end

-- Start the next request unless one runs.
function Rolling:run()
  if self.current or #self.queue == 0 or not running(self) then return end
  local r = table.remove(self.queue, 1)
  self.current = r
  local pool, target = self.pool, r.rec
  if target and not pool:serves(target) then
    -- Gone meanwhile (died, reloaded, scaled away): nothing to replace.
    self.current, self.replacing[target] = nil, nil
    call_all(r.cbs, "a replace callback", false, "gone")
    return self:run()
  end
  local spawn_reason = target and "recycle" or "reload"
  if not target then self.event("reload_start", { workers = #pool.slots }) end

  local function finish(ok, err, slot_index)
    self.current = nil
    if target then self.replacing[target] = nil end
    if ok and not target then
      self.sv.reloads = self.sv.reloads + 1
      self.event("reload_done", { workers = #pool.slots, reloads = self.sv.reloads })
    elseif not ok then
      if target then
        -- (A stop ends it without a word: the worker drains anyway.)
        if running(self) then
          self.event("recycle_abort", pool.ev_of(target, { reason = r.reason, error = err }))
        end
      else
        self.event("reload_abort", { slot = slot_index, error = err })
      end
      pool:respawn_vacant()
    end
    call_all(r.cbs, "a reload callback", ok, err)
    self:run()
  end

  local i = 0
  local function step()
    if not running(self) then return finish(false, "stopped") end
    local slot
    if target then
      if i > 0 then return finish(true) end
      i, slot = 1, target.slot
    else
      i, slot = pool:next_slot(i)
      if not slot then return finish(true) end
    end
    local rec, err
    rec, err = pool:boot_candidate(slot, spawn_reason, function(ok, why)
      r.candidate = nil
      if not ok then return finish(false, why, slot.index) end
      pool:promote(rec, spawn_reason)
      step()
    end)
    if not rec then return finish(false, err, slot.index) end
    r.candidate = rec
  end
  step()
end

return Rolling
