-- The supervisor's options: defaults, checks (a bad option raises, naming
-- it), and how many workers the fd limit leaves room for.

local uv = require("luv")
local core = require("cluster.core")
local compat = require("cluster.compat")

local options = {}

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
function options.normalize(opts)
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

function options.capacity_error(o, n)
  local cap, soft = worker_capacity(o)
  if not cap or n <= cap then return nil end
  return ("%d workers need more file descriptors than the limit of %d (ulimit -n) leaves: room for %d;"
    .. " raise the limit or run fewer workers"):format(n, soft, cap)
end

options.DEFAULTS = DEFAULTS
options.fail = fail

return options
