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
-- A slot is one place in the pool (1..n); it holds one serving worker at a
-- time. Deaths of a slot's worker are counted there; a reload boots a
-- candidate for the slot before its current worker is let go.

local uv = require("luv")
local cluster = require("cluster")
local core = require("cluster.core")
local Emitter = require("cluster.emitter")
local compat = require("cluster.compat")

local supervise = {}

local DEFAULTS = {
  backoff = { initial = 100, factor = 1.5, max = 10000 },
  crash = { deaths = 5, window = 1000 },
  boot_timeout = 10000,
  heartbeat = { interval = 1000, timeout = 5000 },
  stop_timeout = 10000,
  fd_reserve = 32,
  max_age_jitter = 0.25,
  recycle_interval = 1000,
}

-- File descriptors the master holds per worker: its channel socket, the
-- channel's epoll fd and the process's pidfd (measured: 3), plus its
-- stdout and stderr pipes when silent.
local FDS_PER_WORKER, FDS_PER_SILENT_WORKER = 3, 5

local POLICIES = { rr = true, shared = true, reuseport = true }

-- Settings passed through to cluster.setup for every fork.
local SETUP_KEYS = { "exec", "args", "lua", "luaArgs", "env", "cwd", "silent", "detached", "uid", "gid", "balance" }

local function fail(msg, level)
  error("cluster.supervise: " .. msg, (level or 1) + 1)
end

local function check_ms(name, v, allow_zero)
  if type(v) ~= "number" or v ~= v or v < 0 or v == math.huge or (v == 0 and not allow_zero) then
    fail(("'%s' must be a positive number of milliseconds (got %s)"):format(name, tostring(v)), 3)
  end
  return v
end

-- opts with defaults filled in; raises on a bad option.
local function normalize(opts)
  if type(opts) ~= "table" then fail("options table expected, got " .. type(opts), 2) end
  local o = {}
  o.exec = opts.exec
  if type(o.exec) ~= "string" or o.exec == "" then fail("'exec' (the worker script) must be a non-empty string", 2) end
  o.args = opts.args or {}
  if type(o.args) ~= "table" then fail("'args' must be a list of strings", 2) end
  local n = opts.workers
  if n == nil then n = uv.available_parallelism and uv.available_parallelism() or #uv.cpu_info() end
  if not compat.is_integer(n) or n < 0 then
    fail("'workers' must be a non-negative integer (got " .. tostring(opts.workers) .. ")", 2)
  end
  o.workers = n
  if opts.policy ~= nil and not POLICIES[opts.policy] then
    fail("'policy' must be rr, shared or reuseport (got " .. tostring(opts.policy) .. ")", 2)
  end
  o.policy = opts.policy
  local b = opts.backoff or {}
  o.backoff = {
    initial = check_ms("backoff.initial", b.initial or DEFAULTS.backoff.initial, true),
    factor = b.factor or DEFAULTS.backoff.factor,
    max = check_ms("backoff.max", b.max or DEFAULTS.backoff.max, true),
  }
  if type(o.backoff.factor) ~= "number" or o.backoff.factor < 1 then
    fail("'backoff.factor' must be a number >= 1", 2)
  end
  local c = opts.crash or {}
  o.crash = { deaths = c.deaths or DEFAULTS.crash.deaths,
    window = check_ms("crash.window", c.window or DEFAULTS.crash.window, true) }
  if not compat.is_integer(o.crash.deaths) or o.crash.deaths < 1 then
    fail("'crash.deaths' must be a positive integer", 2)
  end
  o.boot_timeout = check_ms("boot_timeout", opts.boot_timeout or DEFAULTS.boot_timeout)
  o.stop_timeout = check_ms("stop_timeout", opts.stop_timeout or DEFAULTS.stop_timeout, true)
  if opts.heartbeat == false then
    o.heartbeat = false
  else
    local h = opts.heartbeat or {}
    o.heartbeat = {
      interval = check_ms("heartbeat.interval", h.interval or DEFAULTS.heartbeat.interval),
      timeout = check_ms("heartbeat.timeout", h.timeout or DEFAULTS.heartbeat.timeout),
    }
  end
  if opts.max_memory ~= nil and (type(opts.max_memory) ~= "number" or opts.max_memory ~= opts.max_memory
    or opts.max_memory <= 0 or opts.max_memory == math.huge) then
    fail("'max_memory' must be a positive number of bytes (got " .. tostring(opts.max_memory) .. ")", 2)
  end
  o.max_memory = opts.max_memory
  if opts.max_age ~= nil then o.max_age = check_ms("max_age", opts.max_age) end
  o.max_age_jitter = opts.max_age_jitter or DEFAULTS.max_age_jitter
  if type(o.max_age_jitter) ~= "number" or not (o.max_age_jitter >= 0 and o.max_age_jitter <= 1) then
    fail("'max_age_jitter' must be a number from 0 to 1 (got " .. tostring(opts.max_age_jitter) .. ")", 2)
  end
  -- Checked every second, or more often for short ages (the jitter
  -- should not be lost to the check's granularity).
  o.recycle_interval = check_ms("recycle_interval", opts.recycle_interval
    or math.max(50, math.min(DEFAULTS.recycle_interval, (o.max_age or math.huge) / 20)))
  o.fd_reserve = opts.fd_reserve or DEFAULTS.fd_reserve
  if not compat.is_integer(o.fd_reserve) or o.fd_reserve < 0 then
    fail("'fd_reserve' must be a non-negative integer", 2)
  end
  if opts.on_event ~= nil and type(opts.on_event) ~= "function" then fail("'on_event' must be a function", 2) end
  o.on_event = opts.on_event
  if opts.on_start ~= nil and type(opts.on_start) ~= "function" then fail("'on_start' must be a function", 2) end
  o.on_start = opts.on_start
  o.setup = {}
  for _, k in ipairs(SETUP_KEYS) do
    if k ~= "exec" and k ~= "args" and opts[k] ~= nil then o.setup[k] = opts[k] end
  end
  return o
end

-- How many workers the master's fd limit leaves room for: each costs
-- FDS_PER_WORKER, one more is counted for the reload candidate or the fork
-- in progress, and o.fd_reserve stay free for the master's own files,
-- listeners and the connections it is handing over (rr). nil when the
-- limit is unknown or unlimited.
local function worker_capacity(o)
  local soft = core.fd_limit()
  if not soft or soft >= 2 ^ 31 then return nil, soft end
  local per = o.setup.silent and FDS_PER_SILENT_WORKER or FDS_PER_WORKER
  return math.max(0, math.floor((soft - o.fd_reserve) / per) - 1), soft
end

local function capacity_error(o, n)
  local cap, soft = worker_capacity(o)
  if not cap or n <= cap then return nil end
  return ("%d workers need more file descriptors than the limit of %d (ulimit -n) leaves: room for %d;"
    .. " raise the limit or run fewer workers"):format(n, soft, cap)
end

-- Resident set size of a process in bytes, or nil.
local function rss_of(pid)
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

local Supervisor = {}
for k, v in pairs(Emitter) do Supervisor[k] = v end
Supervisor.__index = Supervisor

-- A one-shot timer; returns the handle (closed when it fires or by stop_timer).
local function after(ms, fn)
  local t = uv.new_timer()
  t:start(math.max(0, math.floor(ms + 0.5)), 0, function()
    t:close()
    fn()
  end)
  return t
end

local function stop_timer(t)
  if t and not t:is_closing() then t:close() end
end

-- Verdicts (hung? not ready? still running?) are given after the loop's
-- next poll phase, not in the timer callback that asks for them: timers run
-- before I/O, so when this process was late (busy, descheduled), the
-- answer that clears a worker (a pong, 'listening', its exit) may be
-- sitting unread. An idle handle keeps that poll from blocking; the check
-- handle runs right after it.
local verdicts = {}
local verdict_check, verdict_idle
local function run_verdicts()
  verdict_check:stop()
  verdict_idle:stop()
  local list = verdicts
  verdicts = {}
  for _, fn in ipairs(list) do Emitter.call_protected("a supervisor verdict", fn) end
end
local function after_io(fn)
  verdicts[#verdicts + 1] = fn
  if not verdict_check then
    verdict_check, verdict_idle = uv.new_check(), uv.new_idle()
  end
  if #verdicts == 1 then
    verdict_check:start(run_verdicts)
    verdict_idle:start(function() end)
  end
end

-- Whether a worker's process has ended, though its 'exit' (emitted on a
-- later loop turn) has not reached us yet. (Worker._exited is set by the
-- master role when it reaps the process.)
local function ended(rec)
  return rec.exited or rec.worker._exited == true
end

function supervise.start(opts)
  local o = normalize(opts)
  local too_many = capacity_error(o, o.workers)
  if too_many then fail(too_many, 2) end
  local sv = Emitter.new(setmetatable({}, Supervisor))
  sv.options = o
  sv.slots = {}      -- index -> slot
  sv.live = {}       -- rec -> true, every worker process of ours not yet exited
  sv.state = "running"
  sv.reloads = 0     -- completed reloads
  local reload_queue = {} -- pending reload requests: { cbs = {...} }
  local reloading = nil   -- the reload in progress
  local stop_cbs = {}
  local hb_timer, hb_seq = nil, 0
  local recycle_timer

  local function event(name, fields)
    fields = fields or {}
    fields.event = name
    fields.time = uv.now()
    if o.on_event then Emitter.call_protected("an on_event callback", o.on_event, fields) end
    sv:emit(name, fields)
    sv:emit("*", fields)
    return fields
  end
  sv._event = event

  local function ev_of(rec, extra)
    local t = extra or {}
    t.slot, t.id, t.pid = rec.slot.index, rec.worker.id, rec.worker.pid
    return t
  end

  local function live_count()
    local n = 0
    for _ in pairs(sv.live) do n = n + 1 end
    return n
  end

  local spawn, retire, schedule_respawn, run_reload, check_stopped

  -- Readiness: the first 'listening' or an explicit cluster.ready().
  local function became_ready(rec)
    if rec.ready or rec.exited then return end
    rec.ready = true
    rec.ready_at = uv.now()
    rec.last_beat = rec.ready_at
    stop_timer(rec.boot_timer)
    rec.boot_timer = nil
    event("ready", ev_of(rec, { ms = rec.ready_at - rec.started }))
    if rec.on_ready then
      local cb = rec.on_ready
      rec.on_ready = nil
      cb(true)
    elseif rec.slot.worker == rec then
      rec.slot.state = "ready"
    end
    -- Draining or stopping meanwhile: this one is not wanted any more.
    if sv.state ~= "running" then retire(rec, "stop") end
  end

  local function on_exit(rec, code, signal)
    rec.exited = true
    sv.live[rec] = nil
    stop_timer(rec.boot_timer)
    stop_timer(rec.drain_timer)
    local slot = rec.slot
    local uptime = uv.now() - rec.started
    local expected = rec.retiring ~= nil
    event("exit", ev_of(rec, { code = code, signal = signal, uptime = uptime, expected = expected,
      reason = rec.hung and "hang" or rec.boot_failed and "boot_timeout" or rec.retiring or nil }))
    if rec.on_ready then
      -- A reload candidate died before it was ready.
      local cb = rec.on_ready
      rec.on_ready = nil
      cb(false, rec.boot_failed and "boot timeout" or
        ("exited before ready (%s)"):format(signal and ("signal " .. signal) or ("code " .. tostring(code))))
    elseif slot.worker == rec then
      slot.worker = nil
      if sv.state == "running" and not slot.removed then
        -- Died on its own (or hung, or missed its boot): replace it.
        local quick = not rec.ready or uptime < o.crash.window
        if quick then
          slot.deaths = slot.deaths + 1
        else
          slot.deaths, slot.delay = 0, o.backoff.initial
        end
        if slot.deaths >= o.crash.deaths then
          slot.state = "errored"
          event("errored", { slot = slot.index, deaths = slot.deaths })
          if sv:errored_all() then event("all_errored", { workers = #sv.slots }) end
        elseif not slot.candidate then
          schedule_respawn(slot, quick)
        else
          slot.state = "starting"
        end
      end
    end
    check_stopped()
  end

  -- Fork a worker for `slot`; rec.on_ready (for reload candidates) gets
  -- (true) once it is ready or (false, why) if it fails first.
  function spawn(slot, reason, on_ready)
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
      event("spawn_error", { slot = slot.index, error = err, reason = reason })
      return nil, err
    end
    local rec = { worker = worker, slot = slot, started = uv.now(), reason = reason, on_ready = on_ready }
    -- Its own age limit, drawn in [max_age, max_age * (1 + jitter)]: workers
    -- started together do not all reach it together.
    if o.max_age then rec.max_age = o.max_age * (1 + o.max_age_jitter * math.random()) end
    sv.live[rec] = true
    if reason == "restart" then slot.restarts = slot.restarts + 1 end
    event("spawn", ev_of(rec, { reason = reason }))
    worker:on("online", function() event("online", ev_of(rec)) end)
    worker:on("listening", function(address)
      event("listening", ev_of(rec, { address = address_text(address) }))
      became_ready(rec)
    end)
    worker:on("ready", function() became_ready(rec) end)
    worker:on("heartbeat", function()
      rec.last_beat = uv.now()
      rec.ping_since = nil
    end)
    worker:on("exit", function(code, signal) on_exit(rec, code, signal) end)
    worker:on("error", function(err) event("worker_error", ev_of(rec, { error = tostring(err) })) end)
    rec.boot_timer = after(o.boot_timeout, function()
      rec.boot_timer = nil
      after_io(function()
        if rec.ready or ended(rec) or rec.retiring then return end
        rec.boot_failed = true
        event("boot_timeout", ev_of(rec, { ms = o.boot_timeout }))
        worker:kill("SIGKILL")
      end)
    end)
    return rec
  end

  local function start_slot(slot, reason)
    slot.timer = nil
    if sv.state ~= "running" or slot.removed or slot.worker or slot.candidate then return end
    slot.state = "starting"
    local rec = spawn(slot, reason)
    if rec then
      slot.worker = rec
    else
      -- fork itself failed: a quick death as far as the guard is concerned.
      slot.deaths = slot.deaths + 1
      if slot.deaths >= o.crash.deaths then
        slot.state = "errored"
        event("errored", { slot = slot.index, deaths = slot.deaths })
        if sv:errored_all() then event("all_errored", { workers = #sv.slots }) end
      else
        schedule_respawn(slot, true)
      end
    end
  end

  function schedule_respawn(slot, quick)
    stop_timer(slot.timer)
    local delay = 0
    if quick then
      delay = slot.delay
      slot.delay = math.min(slot.delay * o.backoff.factor, o.backoff.max)
    end
    slot.state = "backoff"
    event("backoff", { slot = slot.index, delay = math.floor(delay + 0.5), deaths = slot.deaths })
    slot.timer = after(delay, function() start_slot(slot, "restart") end)
  end

  -- Let a worker go: disconnect (its servers close, it gets no new
  -- connection), then SIGKILL after stop_timeout if it is still running.
  function retire(rec, reason)
    if rec.retiring or rec.exited then return end
    rec.retiring = reason
    if rec.slot.worker == rec then rec.slot.worker = nil end
    stop_timer(rec.boot_timer)
    rec.boot_timer = nil
    event("draining", ev_of(rec, { reason = reason }))
    rec.worker:disconnect()
    rec.drain_timer = after(o.stop_timeout, function()
      rec.drain_timer = nil
      after_io(function()
        if ended(rec) or rec.sigkilled then return end
        rec.sigkilled = true
        event("kill", ev_of(rec, { reason = reason, signal = "SIGKILL" }))
        rec.worker:kill("SIGKILL")
      end)
    end)
  end

  local function new_slot()
    local slot = { index = #sv.slots + 1, deaths = 0, delay = o.backoff.initial, restarts = 0, state = "starting" }
    sv.slots[slot.index] = slot
    return slot
  end

  -- Heartbeat: ping every ready worker; one silent for longer than the
  -- timeout is stuck (its loop no longer runs) and is killed.
  -- A worker is hung when a ping it was sent has gone unanswered for
  -- longer than the timeout (rec.ping_since: when the oldest unanswered
  -- ping went out); a late master does not make its workers look hung.
  local function heartbeat()
    local now = uv.now()
    hb_seq = hb_seq + 1
    local suspects = {}
    for rec in pairs(sv.live) do
      if rec.ready and not rec.retiring and not rec.hung and not ended(rec) then
        if rec.ping_since and now - rec.ping_since > o.heartbeat.timeout then
          suspects[#suspects + 1] = rec
        else
          rec.ping_since = rec.ping_since or now
          rec.worker:ping(hb_seq)
        end
      end
    end
    if #suspects == 0 then return end
    after_io(function()
      local t = uv.now()
      for _, rec in ipairs(suspects) do
        if not rec.retiring and not rec.hung and not ended(rec) and rec.ping_since
          and t - rec.ping_since > o.heartbeat.timeout then
          rec.hung = true
          event("hang", ev_of(rec, { silent = t - rec.ping_since }))
          rec.worker:kill("SIGKILL")
        end
      end
    end)
  end

  -- Rolling reload: one slot at a time, the candidate must be ready
  -- before the slot's current worker is let go. A queued request is either
  -- a reload of every slot or (r.rec) the replacement of one worker
  -- (sv:replace, the recycling check), which takes the same step for its
  -- slot alone; both run one at a time, in the order asked.
  function run_reload()
    if reloading or #reload_queue == 0 or sv.state ~= "running" then return end
    reloading = table.remove(reload_queue, 1)
    local r = reloading
    local target = r.rec
    if target and (target.slot.worker ~= target or target.retiring or ended(target) or target.slot.removed) then
      -- Gone meanwhile (died, reloaded, scaled away): nothing to replace.
      reloading = nil
      for _, cb in ipairs(r.cbs) do Emitter.call_protected("a replace callback", cb, false, "gone") end
      return run_reload()
    end
    local spawn_reason = target and "recycle" or "reload"
    if not target then event("reload_start", { workers = #sv.slots }) end
    local function finish(ok, err, slot)
      reloading = nil
      if target then target.recycling = nil end
      if ok and not target then
        sv.reloads = sv.reloads + 1
        event("reload_done", { workers = #sv.slots, reloads = sv.reloads })
      elseif not ok then
        if target then
          -- (A stop ends it without a word: the worker drains anyway.)
          if sv.state == "running" then event("recycle_abort", ev_of(target, { reason = r.reason, error = err })) end
        else
          event("reload_abort", { slot = slot, error = err })
        end
        -- Slots whose worker died meanwhile, waiting on the candidate.
        if sv.state == "running" then
          for _, s in ipairs(sv.slots) do
            if not s.removed and not s.worker and not s.candidate and not s.timer and s.state ~= "errored" then
              schedule_respawn(s, true)
            end
          end
        end
      end
      for _, cb in ipairs(r.cbs) do Emitter.call_protected("a reload callback", cb, ok, err) end
      run_reload()
    end
    r.abort = function(why) finish(false, why) end
    local i = 0
    local function step()
      if sv.state ~= "running" then return finish(false, "stopped") end
      local slot
      if target then
        if i > 0 then return finish(true) end
        i, slot = 1, target.slot
      else
        i = i + 1
        slot = sv.slots[i]
        while slot and slot.removed do i = i + 1; slot = sv.slots[i] end
        if not slot then return finish(true) end
      end
      stop_timer(slot.timer)
      slot.timer = nil
      local rec, err
      rec, err = spawn(slot, spawn_reason, function(ok, why)
        slot.candidate = nil
        r.candidate = nil
        if not ok then
          if rec and not rec.exited then rec.worker:kill("SIGKILL") end
          return finish(false, why, slot.index)
        end
        local old = slot.worker
        slot.worker = rec
        slot.state, slot.deaths, slot.delay = "ready", 0, o.backoff.initial
        if old then retire(old, spawn_reason) end
        if slot.removed or sv.state ~= "running" then retire(rec, "scale") end
        step()
      end)
      if not rec then return finish(false, err, slot.index) end
      slot.candidate = rec
      r.candidate = rec
    end
    step()
  end

  -- Recycling: a ready worker over max_memory (RSS) or past its own age
  -- limit is replaced by sv:replace.
  local function recycle_check()
    local now = uv.now()
    for _, slot in ipairs(sv.slots) do
      local rec = slot.worker
      if rec and rec.ready and not slot.removed and not rec.retiring and not rec.recycling and not ended(rec) then
        local rss = o.max_memory and rss_of(rec.worker.pid)
        local age = now - rec.started
        if rss and rss > o.max_memory then
          sv:replace(slot.index, "memory", { rss = rss, limit = o.max_memory })
        elseif rec.max_age and age >= rec.max_age then
          sv:replace(slot.index, "age", { age = age, limit = math.floor(rec.max_age + 0.5) })
        end
      end
    end
  end

  function check_stopped()
    if sv.state ~= "stopping" or next(sv.live) ~= nil then return end
    sv.state = "stopped"
    stop_timer(hb_timer)
    stop_timer(recycle_timer)
    for _, slot in ipairs(sv.slots) do stop_timer(slot.timer) end
    local killed = sv._killed
    event("stopped", { killed = killed, clean = killed == 0 })
    local cbs = stop_cbs
    stop_cbs = {}
    for _, cb in ipairs(cbs) do Emitter.call_protected("a stop callback", cb, killed == 0, { killed = killed }) end
  end

  -- Public methods -------------------------------------------------------

  function sv:reload(cb)
    if cb ~= nil and type(cb) ~= "function" then fail("reload: callback must be a function", 2) end
    if self.state ~= "running" then
      if cb then after(0, function() cb(false, "stopped") end) end
      return false
    end
    -- One reload runs; requests made meanwhile share the next one.
    local pending
    for _, q in ipairs(reload_queue) do
      if not q.rec then pending = q; break end
    end
    if not pending then
      pending = { cbs = {} }
      reload_queue[#reload_queue + 1] = pending
    end
    if cb then pending.cbs[#pending.cbs + 1] = cb end
    event("reload_request", { queued = reloading ~= nil })
    run_reload()
    return true
  end

  -- replace(slot, [reason], [fields], [cb]): replace the worker serving
  -- `slot` by the step a reload takes (a new worker ready first, then the
  -- old one drains), queued behind a running reload. Emits 'recycle'
  -- (with reason and fields) now; cb(ok, err) when done. Returns true, or
  -- nil and why when there is nothing to replace.
  function sv:replace(index, reason, fields, cb)
    if type(reason) == "function" then reason, fields, cb = nil, nil, reason end
    if type(fields) == "function" then fields, cb = nil, fields end
    if not compat.is_integer(index) then fail("replace: slot must be an integer (got " .. tostring(index) .. ")", 2) end
    if reason ~= nil and type(reason) ~= "string" then fail("replace: reason must be a string", 2) end
    if fields ~= nil and type(fields) ~= "table" then fail("replace: fields must be a table", 2) end
    if cb ~= nil and type(cb) ~= "function" then fail("replace: callback must be a function", 2) end
    if self.state ~= "running" then return nil, "not running" end
    local slot = self.slots[index]
    local rec = slot and not slot.removed and slot.worker
    if not rec or rec.retiring or ended(rec) then return nil, "no worker serving slot " .. tostring(index) end
    if rec.recycling then
      -- Already queued: share that request.
      for _, q in ipairs(reload_queue) do
        if q.rec == rec and cb then q.cbs[#q.cbs + 1] = cb end
      end
      return true
    end
    reason = reason or "replace"
    rec.recycling = reason
    local ev = ev_of(rec, {})
    for k, v in pairs(fields or {}) do ev[k] = v end
    ev.reason, ev.age = reason, ev.age or (uv.now() - rec.started)
    event("recycle", ev)
    reload_queue[#reload_queue + 1] = { rec = rec, reason = reason, cbs = { cb } }
    run_reload()
    return true
  end

  -- stop([opts], [cb]): graceful unless opts.immediate; cb(clean, {killed=n}).
  function sv:stop(a, b)
    local sopts, cb = a, b
    if type(a) == "function" then sopts, cb = nil, a end
    sopts = sopts or {}
    if cb then stop_cbs[#stop_cbs + 1] = cb end
    if self.state == "stopped" then
      if cb then after(0, function() cb(self._killed == 0, { killed = self._killed }) end) end
      return self
    end
    if self.state == "running" then
      self.state = "stopping"
      self._killed = 0
      stop_timer(hb_timer)
      stop_timer(recycle_timer)
      for _, slot in ipairs(self.slots) do
        stop_timer(slot.timer)
        slot.timer = nil
      end
      for _, r in ipairs(reload_queue) do
        for _, rcb in ipairs(r.cbs) do Emitter.call_protected("a reload callback", rcb, false, "stopped") end
      end
      reload_queue = {}
      event("stopping", { graceful = not sopts.immediate, workers = live_count(), timeout = o.stop_timeout })
      if reloading and reloading.candidate then
        local cand = reloading.candidate
        local cb_r = cand.on_ready
        cand.on_ready = nil
        if cb_r then cb_r(false, "stopped") end
      end
      for rec in pairs(self.live) do
        if not rec.retiring then
          retire(rec, "stop")
        end
        -- The stop timeout replaces a reload's or scale's own.
        stop_timer(rec.drain_timer)
        rec.drain_timer = after(o.stop_timeout, function()
          rec.drain_timer = nil
          after_io(function()
            if ended(rec) or rec.sigkilled then return end
            rec.sigkilled = true
            self._killed = self._killed + 1
            event("kill", ev_of(rec, { reason = "stop_timeout", signal = "SIGKILL" }))
            rec.worker:kill("SIGKILL")
          end)
        end)
      end
    end
    if sopts.immediate then
      for rec in pairs(self.live) do
        if not ended(rec) and not rec.sigkilled then
          rec.sigkilled = true
          stop_timer(rec.drain_timer)
          self._killed = self._killed + 1
          event("kill", ev_of(rec, { reason = "immediate", signal = "SIGKILL" }))
          rec.worker:kill("SIGKILL")
        end
      end
    end
    if next(self.live) == nil then after(0, check_stopped) end
    return self
  end

  -- Add a slot; nil, why when stopping or the fd limit has no room.
  function sv:add()
    if self.state ~= "running" then return nil, "not running" end
    local refused = capacity_error(o, self:size() + 1)
    if refused then
      event("scale_refused", { workers = self:size(), error = refused })
      return nil, refused
    end
    local slot = new_slot()
    event("scale", { workers = self:size(), change = 1 })
    start_slot(slot, "scale")
    return slot.index
  end

  -- Remove the newest slot; its worker leaves gracefully.
  function sv:remove()
    if self.state ~= "running" then return nil end
    local slot
    for i = #self.slots, 1, -1 do
      if not self.slots[i].removed then slot = self.slots[i]; break end
    end
    if not slot then return nil end
    slot.removed = true
    slot.state = "removed"
    stop_timer(slot.timer)
    slot.timer = nil
    event("scale", { workers = self:size(), change = -1 })
    -- A candidate of this slot is retired by the reload that finishes it.
    if slot.worker then retire(slot.worker, "scale") end
    -- Trim removed slots off the end so indexes stay dense for adds.
    while #self.slots > 0 and self.slots[#self.slots].removed and not self.slots[#self.slots].candidate do
      self.slots[#self.slots] = nil
    end
    return slot.index
  end

  function sv:size()
    local n = 0
    for _, slot in ipairs(self.slots) do if not slot.removed then n = n + 1 end end
    return n
  end

  function sv:scale(n)
    if not compat.is_integer(n) or n < 0 then fail("scale: a non-negative integer expected", 2) end
    while self:size() < n do
      if not self:add() then break end
    end
    while self:size() > n do self:remove() end
    return self
  end

  function sv:errored_all()
    local any = false
    for _, slot in ipairs(self.slots) do
      if not slot.removed then
        if slot.state ~= "errored" then return false end
        any = true
      end
    end
    return any
  end

  -- One row per live worker process (serving, booting or draining), and
  -- one per slot without a worker (backoff, errored).
  function sv:stats()
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
        rss = rss_of(w.pid),
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

  -- The worker serving each slot (for tests and tools).
  function sv:workers()
    local list = {}
    for _, slot in ipairs(self.slots) do
      if slot.worker and not slot.removed then list[#list + 1] = slot.worker.worker end
    end
    return list
  end

  if o.heartbeat then
    hb_timer = uv.new_timer()
    hb_timer:start(o.heartbeat.interval, o.heartbeat.interval, heartbeat)
  end
  if o.max_memory or o.max_age then
    recycle_timer = uv.new_timer()
    recycle_timer:start(o.recycle_interval, o.recycle_interval, function()
      Emitter.call_protected("the recycling check", recycle_check)
    end)
  end
  for _ = 1, o.workers do new_slot() end
  if o.policy then cluster.schedulingPolicy = o.policy end
  if o.on_start then
    -- Supervision is set up (the slots exist, sv:on works) and nothing
    -- has forked yet. An error raised here stops the supervisor before
    -- any worker starts (and kills any the callback started), then
    -- propagates out of start.
    local ok, err = pcall(o.on_start, sv)
    if not ok then
      sv.state, sv._killed = "stopped", 0
      stop_timer(hb_timer)
      stop_timer(recycle_timer)
      for _, slot in ipairs(sv.slots) do stop_timer(slot.timer) end
      for rec in pairs(sv.live) do
        stop_timer(rec.boot_timer)
        rec.worker:kill("SIGKILL")
      end
      error(err, 0)
    end
  end
  for _, slot in ipairs(sv.slots) do start_slot(slot, "start") end
  return sv
end

supervise.address_text = address_text
supervise.DEFAULTS = DEFAULTS

return supervise
