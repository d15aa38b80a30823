-- The pool: slots and the worker processes that serve them.
--
-- A slot is one place in the pool (1..n); it holds one serving worker at a
-- time (slot.worker) and, during a rolling step, the candidate booting to
-- take its place (slot.candidate). Each worker process has a record (rec)
-- that says how far it got: ready, retiring (let go, draining), exited.
-- Deaths are counted per slot: a worker that dies before it is ready or
-- within crash.window is a quick death and is respawned after a growing
-- delay (backoff); crash.deaths quick deaths in a row error the slot (the
-- crash-loop guard).
--
-- The pool forks, watches and lets go; when to replace a worker (rolling
-- steps), when one is hung (heartbeat) and when the pool stops belong to
-- the other parts, which use the functions below.

local uv = require("luv")
local cluster = require("cluster")
local timers = require("cluster.supervise.timers")

local Pool = {}
Pool.__index = Pool

-- sv: the supervisor (its state says whether it is running), o: its
-- options, event(name, fields): emits a supervisor event.
function Pool.new(sv, o, event)
  return setmetatable({
    sv = sv, o = o, event = event,
    slots = {},       -- index -> slot
    live = {},        -- rec -> true: every worker process of ours not yet exited
    on_empty = nil,   -- fn(), called when the last live worker has exited
  }, Pool)
end

-- An event's fields about a worker.
function Pool.ev_of(rec, extra)
  local t = extra or {}
  t.slot, t.id, t.pid = rec.slot.index, rec.worker.id, rec.worker.pid
  return t
end
local ev_of = Pool.ev_of

-- Whether a worker's process has ended, though its 'exit' (emitted on a
-- later loop turn) has not reached us yet. (Worker._exited is set by the
-- master role when it reaps the process.)
function Pool.ended(rec)
  return rec.exited or rec.worker._exited == true
end
local ended = Pool.ended

-- Resident set size of a process in bytes, or nil.
function Pool.rss_of(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local kb = text:match("VmRSS:%s*(%d+)")
  return kb and tonumber(kb) * 1024 or nil
end

local function address_text(a)
  if type(a) ~= "table" then return tostring(a) end
  if a.port == nil then return tostring(a.address) end
  if a.family == "inet6" then return ("[%s]:%d"):format(a.address, a.port) end
  return ("%s:%d"):format(tostring(a.address), a.port)
end
Pool.address_text = address_text

local function running(self)
  return self.sv.state == "running"
end

-- Slots -------------------------------------------------------------------

function Pool:new_slot()
  local slot = { index = #self.slots + 1, deaths = 0, delay = self.o.backoff.initial, restarts = 0,
    state = "starting" }
  self.slots[slot.index] = slot
  return slot
end

-- The first slot after index i that is still in the pool: index, slot.
function Pool:next_slot(i)
  i = i + 1
  while self.slots[i] and self.slots[i].removed do i = i + 1 end
  return i, self.slots[i]
end

function Pool:size()
  local n = 0
  for _, slot in ipairs(self.slots) do if not slot.removed then n = n + 1 end end
  return n
end

function Pool:errored_all()
  local any = false
  for _, slot in ipairs(self.slots) do
    if not slot.removed then
      if slot.state ~= "errored" then return false end
      any = true
    end
  end
  return any
end

-- Too many quick deaths in a row: the slot is left empty.
local function mark_errored(self, slot)
  slot.state = "errored"
  self.event("errored", { slot = slot.index, deaths = slot.deaths })
  if self:errored_all() then self.event("all_errored", { workers = #self.slots }) end
end

-- Fork the serving worker of an empty slot.
function Pool:start_slot(slot, reason)
  slot.timer = nil
  if not running(self) or slot.removed or slot.worker or slot.candidate then return end
  slot.state = "starting"
  local rec = self:spawn(slot, reason)
  if rec then
    slot.worker = rec
  else
    -- fork itself failed: a quick death as far as the guard is concerned.
    slot.deaths = slot.deaths + 1
    if slot.deaths >= self.o.crash.deaths then
      mark_errored(self, slot)
    else
      self:schedule_respawn(slot, true)
    end
  end
end

-- Start `slot`'s worker again after its backoff delay (none after a worker
-- that lived long).
function Pool:schedule_respawn(slot, quick)
  timers.cancel(slot.timer)
  local delay = 0
  if quick then
    delay = slot.delay
    slot.delay = math.min(slot.delay * self.o.backoff.factor, self.o.backoff.max)
  end
  slot.state = "backoff"
  self.event("backoff", { slot = slot.index, delay = math.floor(delay + 0.5), deaths = slot.deaths })
  slot.timer = timers.after(delay, function() self:start_slot(slot, "restart") end)
end

-- After a rolling step failed: slots whose worker died while they waited
-- on that step's candidate are started again.
function Pool:respawn_vacant()
  if not running(self) then return end
  for _, s in ipairs(self.slots) do
    if not s.removed and not s.worker and not s.candidate and not s.timer and s.state ~= "errored" then
      self:schedule_respawn(s, true)
    end
  end
end

-- A new slot ('scale' event) and its worker.
function Pool:add_slot()
  local slot = self:new_slot()
  self.event("scale", { workers = self:size(), change = 1 })
  self:start_slot(slot, "scale")
  return slot
end

-- Take the newest slot out of the pool ('scale' event); its worker is let
-- go. (A candidate booting for it is retired by the rolling step that
-- promotes it.) Returns the slot, or nil when there is none.
function Pool:remove_slot()
  local slots, slot = self.slots, nil
  for i = #slots, 1, -1 do
    if not slots[i].removed then slot = slots[i]; break end
  end
  if not slot then return nil end
  slot.removed = true
  slot.state = "removed"
  timers.cancel(slot.timer)
  slot.timer = nil
  self.event("scale", { workers = self:size(), change = -1 })
  if slot.worker then self:retire(slot.worker, "scale") end
  -- Trim removed slots off the end so indexes stay dense for adds.
  while #slots > 0 and slots[#slots].removed and not slots[#slots].candidate do
    slots[#slots] = nil
  end
  return slot
end

-- Every slot's pending respawn is cancelled (the pool is stopping).
function Pool:cancel_respawns()
  for _, slot in ipairs(self.slots) do
    timers.cancel(slot.timer)
    slot.timer = nil
  end
end

-- Worker processes -------------------------------------------------------

-- Readiness: the first 'listening' or an explicit cluster.ready().
local function became_ready(self, rec)
  if rec.ready or rec.exited then return end
  rec.ready = true
  rec.ready_at = uv.now()
  rec.last_beat = rec.ready_at
  timers.cancel(rec.boot_timer)
  rec.boot_timer = nil
  self.event("ready", ev_of(rec, { ms = rec.ready_at - rec.started }))
  if rec.on_ready then
    local cb = rec.on_ready
    rec.on_ready = nil
    cb(true)
  elseif rec.slot.worker == rec then
    rec.slot.state = "ready"
  end
  -- Draining or stopping meanwhile: this one is not wanted any more.
  if not running(self) then self:retire(rec, "stop") end
end

local function on_exit(self, rec, code, signal)
  rec.exited = true
  self.live[rec] = nil
  timers.cancel(rec.boot_timer)
  timers.cancel(rec.drain_timer)
  local slot = rec.slot
  local uptime = uv.now() - rec.started
  self.event("exit", ev_of(rec, { code = code, signal = signal, uptime = uptime, expected = rec.retiring ~= nil,
    reason = rec.end_reason or rec.retiring or nil }))
  if rec.on_ready then
    -- A candidate died before it was ready.
    local cb = rec.on_ready
    rec.on_ready = nil
    cb(false, rec.end_reason == "boot_timeout" and "boot timeout" or
      ("exited before ready (%s)"):format(signal and ("signal " .. signal) or ("code " .. tostring(code))))
  elseif slot.worker == rec then
    slot.worker = nil
    if running(self) and not slot.removed then
      -- Died on its own (or hung, or missed its boot): replace it.
      local quick = not rec.ready or uptime < self.o.crash.window
      if quick then
        slot.deaths = slot.deaths + 1
      else
        slot.deaths, slot.delay = 0, self.o.backoff.initial
      end
      if slot.deaths >= self.o.crash.deaths then
        mark_errored(self, slot)
      elseif not slot.candidate then
        self:schedule_respawn(slot, quick)
      else
        -- A rolling step is booting this slot's next worker: it takes over.
        slot.state = "starting"
      end
    end
  end
  if next(self.live) == nil and self.on_empty then self.on_empty() end
end

-- Fork a worker for `slot`; returns its record, or nil and why. on_ready,
-- for a candidate, gets (true) once it is ready or (false, why) if it ends
-- first.
function Pool:spawn(slot, reason, on_ready)
  local o = self.o
  local s = { exec = o.exec, args = o.args }
  for k, v in pairs(o.setup) do s[k] = v end
  for _, k in ipairs({ "uid", "gid", "cwd", "lua" }) do if s[k] == nil then s[k] = false end end
  if s.silent == nil then s.silent = false end
  if s.env == nil then s.env = {} end
  if s.luaArgs == nil then s.luaArgs = {} end
  if o.policy then cluster.schedulingPolicy = o.policy end
  local ok, worker = pcall(function()
    cluster.setup(s)
    return cluster.fork()
  end)
  if not ok then
    local err = tostring(worker):gsub("^.-cluster%.fork: ", "")
    self.event("spawn_error", { slot = slot.index, error = err, reason = reason })
    return nil, err
  end
  local rec = { worker = worker, slot = slot, started = uv.now(), reason = reason, on_ready = on_ready }
  -- Its own age limit, drawn in [max_age, max_age * (1 + jitter)]: workers
  -- started together do not all reach it together.
  if o.max_age then rec.max_age = o.max_age * (1 + o.max_age_jitter * math.random()) end
  self.live[rec] = true
  if reason == "restart" then slot.restarts = slot.restarts + 1 end
  self.event("spawn", ev_of(rec, { reason = reason }))
  worker:on("online", function() self.event("online", ev_of(rec)) end)
  worker:on("listening", function(address)
    self.event("listening", ev_of(rec, { address = address_text(address) }))
    became_ready(self, rec)
  end)
  worker:on("ready", function() became_ready(self, rec) end)
  worker:on("heartbeat", function() rec.last_beat = uv.now() end)
  worker:on("exit", function(code, signal) on_exit(self, rec, code, signal) end)
  worker:on("error", function(err) self.event("worker_error", ev_of(rec, { error = tostring(err) })) end)
  rec.boot_timer = timers.after(o.boot_timeout, function()
    rec.boot_timer = nil
    timers.after_io(function()
      if rec.ready or ended(rec) or rec.retiring then return end
      self.event("boot_timeout", ev_of(rec, { ms = o.boot_timeout }))
      self:end_worker(rec, "boot_timeout")
    end)
  end)
  return rec
end

-- Boot a candidate to take `slot` over (a rolling step); cb(ok, why) as
-- for spawn's on_ready. A candidate that fails is killed. Returns its
-- record, or nil and why.
function Pool:boot_candidate(slot, reason, cb)
  timers.cancel(slot.timer)
  slot.timer = nil
  local rec
  local err
  rec, err = self:spawn(slot, reason, function(ok, why)
    slot.candidate = nil
    if not ok and rec and not rec.exited then rec.worker:kill("SIGKILL") end
    cb(ok, why)
  end)
  if rec then slot.candidate = rec end
  return rec, err
end

-- A candidate not ready yet gives up: its cb gets (false, why).
function Pool:abandon_candidate(rec, why)
  local cb = rec.on_ready
  rec.on_ready = nil
  if cb then cb(false, why) end
end

-- A ready candidate becomes its slot's worker; the worker it replaces is
-- retired with `reason`.
function Pool:promote(rec, reason)
  local slot = rec.slot
  local old = slot.worker
  slot.worker = rec
  slot.state, slot.deaths, slot.delay = "ready", 0, self.o.backoff.initial
  if old then self:retire(old, reason) end
  if slot.removed or not running(self) then self:retire(rec, "scale") end
end

-- Whether rec still serves its slot (not replaced, let go or ended).
function Pool:serves(rec)
  return rec.slot.worker == rec and not rec.retiring and not ended(rec) and not rec.slot.removed
end

-- SIGKILL rec `ms` from now unless it has ended by then ('kill' event with
-- `reason`); replaces an earlier deadline. on_kill(rec) if it is killed.
function Pool:deadline(rec, ms, reason, on_kill)
  timers.cancel(rec.drain_timer)
  rec.drain_timer = timers.after(ms, function()
    rec.drain_timer = nil
    timers.after_io(function() self:kill(rec, reason, on_kill) end)
  end)
end

-- SIGKILL rec now ('kill' event with `reason`), unless it has ended or was
-- killed already; on_kill(rec) if it is killed.
function Pool:kill(rec, reason, on_kill)
  if ended(rec) or rec.sigkilled then return end
  rec.sigkilled = true
  timers.cancel(rec.drain_timer)
  rec.drain_timer = nil
  if on_kill then on_kill(rec) end
  self.event("kill", ev_of(rec, { reason = reason, signal = "SIGKILL" }))
  rec.worker:kill("SIGKILL")
end

-- SIGKILL a worker that failed (`why`: "hang", "boot_timeout"); its exit
-- event carries that reason.
function Pool:end_worker(rec, why)
  rec.end_reason = why
  timers.cancel(rec.boot_timer)
  rec.boot_timer = nil
  rec.worker:kill("SIGKILL")
end

-- Let a worker go: disconnect (its servers close, it gets no new
-- connection), then SIGKILL after stop_timeout if it is still running.
function Pool:retire(rec, reason)
  if rec.retiring or rec.exited then return end
  rec.retiring = reason
  if rec.slot.worker == rec then rec.slot.worker = nil end
  timers.cancel(rec.boot_timer)
  rec.boot_timer = nil
  self.event("draining", ev_of(rec, { reason = reason }))
  rec.worker:disconnect()
  self:deadline(rec, self.o.stop_timeout, reason)
end

-- Every live worker's record.
function Pool:live_list()
  local list = {}
  for rec in pairs(self.live) do list[#list + 1] = rec end
  return list
end

function Pool:live_count()
  local n = 0
  for _ in pairs(self.live) do n = n + 1 end
  return n
end

-- Workers that answer pings: ready, not let go, not failed.
function Pool:ready_list()
  local list = {}
  for rec in pairs(self.live) do
    if rec.ready and not rec.retiring and not rec.end_reason and not ended(rec) then list[#list + 1] = rec end
  end
  return list
end

-- The record of each slot's serving worker, in slot order.
function Pool:serving_list()
  local list = {}
  for _, slot in ipairs(self.slots) do
    if slot.worker and self:serves(slot.worker) then list[#list + 1] = slot.worker end
  end
  return list
end

-- The serving worker of each slot that has one, in slot order.
function Pool:workers()
  local list = {}
  for _, slot in ipairs(self.slots) do
    if slot.worker and not slot.removed then list[#list + 1] = slot.worker.worker end
  end
  return list
end

-- One row per live worker process (serving, booting or draining), and one
-- per slot without a worker (backoff, errored).
function Pool:stats()
  local now = uv.now()
  local rows, seen = {}, {}
  local function row(rec, slot)
    local w = rec.worker
    seen[rec] = true
    return {
      slot = slot.index, id = w.id, pid = w.pid, age = now - rec.started,
      restarts = slot.restarts,
      state = rec.retiring and "draining" or rec.ready and "ready" or "starting",
      worker_state = w.state,
      last_heartbeat = rec.last_beat and (now - rec.last_beat) or nil,
      rss = Pool.rss_of(w.pid),
    }
  end
  for _, slot in ipairs(self.slots) do
    if slot.worker then
      rows[#rows + 1] = row(slot.worker, slot)
    elseif not slot.removed then
      rows[#rows + 1] = { slot = slot.index, restarts = slot.restarts, state = slot.state, deaths = slot.deaths }
    end
    if slot.candidate then rows[#rows + 1] = row(slot.candidate, slot) end
  end
  local extra = {}
  for rec in pairs(self.live) do
    if not seen[rec] then extra[#extra + 1] = row(rec, rec.slot) end
  end
  table.sort(extra, function(a, b) return a.id < b.id end)
  for _, r in ipairs(extra) do rows[#rows + 1] = r end
  return rows
end

return Pool
