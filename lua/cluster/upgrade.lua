-- The runner's hot upgrade: a new runner process, started from the code on
-- disk, inherits the listening sockets as systemd would pass them
-- (LISTEN_FDS from fd 3, LISTEN_PID = its pid; share_master uses them for
-- its workers' binds) and reports on a pipe once its workers are ready.
--
-- Old side:  upgrade.start({ command =, sockets =, owned =, timeout = }, cb)
-- New side:  local fd = upgrade.take()  ...  upgrade.ready(fd, on_let_go)

local uv = require("luv")
local core = require("cluster.core")
local compat = require("cluster.compat")
local Emitter = require("cluster.emitter")

local upgrade = {}

-- The fd (in the new runner) of the pipe to the old one.
local ENV = "LUV_CLUSTER_UPGRADE_FD"
upgrade.ENV = ENV
-- Which of the LISTEN_FDS the old runner's master made itself (its own
-- binds, not systemd's sockets): "3,5". share_master reads it.
local OWNED_ENV = "LUV_CLUSTER_OWNED_FDS"
upgrade.OWNED_ENV = OWNED_ENV

local function close(handle)
  if handle and not handle:is_closing() then handle:close() end
end

-- start(opts, cb): spawn opts.command ({ program, args... }) with the fds
-- in opts.sockets as LISTEN_FDS; opts.owned[i] true marks sockets[i] as
-- one the old master made (OWNED_ENV). cb(true, pid) once it says it is ready;
-- cb(false, why) if it exits first or is not ready within opts.timeout ms
-- (it is then sent SIGTERM, SIGKILL 5 s later, and cb waits for its exit).
-- Returns the new process's pid, or nil and why when it cannot start.
function upgrade.start(opts, cb)
  local sockets = opts.sockets or {}
  local n = #sockets
  local env = {}
  for k, v in pairs(uv.os_environ()) do
    if k ~= "LISTEN_FDS" and k ~= "LISTEN_PID" and k ~= "LISTEN_FDNAMES" and k ~= ENV and k ~= OWNED_ENV then
      env[#env + 1] = k .. "=" .. v
    end
  end
  if n > 0 then env[#env + 1] = "LISTEN_FDS=" .. n end
  local owned = {}
  for i = 1, n do
    if opts.owned and opts.owned[i] then owned[#owned + 1] = tostring(3 + i - 1) end
  end
  if #owned > 0 then env[#env + 1] = OWNED_ENV .. "=" .. table.concat(owned, ",") end
  env[#env + 1] = ENV .. "=" .. (3 + n)
  local report = uv.new_pipe(false)
  local stdio = { 0, 1, 2 }
  for _, fd in ipairs(sockets) do stdio[#stdio + 1] = fd end
  stdio[#stdio + 1] = report
  -- A shell sets LISTEN_PID to the pid the program will have, then execs it.
  local args = { "-c", (n > 0 and "LISTEN_PID=$$; export LISTEN_PID; " or "") .. 'exec "$@"', "sh" }
  for _, a in ipairs(opts.command) do args[#args + 1] = a end

  local decided, exited, timer, kill_timer = false, false, nil, nil
  local why
  local handle, pid
  local function decide(ok, detail)
    if decided then return end
    decided = true
    close(timer)
    if ok then
      close(report)
      return cb(true, pid)
    end
    why = detail
    if exited then return cb(false, why) end
    -- Not ready in time: it goes, and the answer waits for its exit.
    uv.kill(pid, "sigterm")
    kill_timer = uv.new_timer()
    kill_timer:start(5000, 0, function()
      close(kill_timer)
      if not exited then uv.kill(pid, "sigkill") end
    end)
  end
  handle, pid = uv.spawn("/bin/sh", { args = args, env = env, stdio = stdio }, function(code, signal)
    exited = true
    close(handle)
    close(report)
    close(kill_timer)
    local how = signal ~= 0 and ("signal " .. signal) or ("code " .. code)
    if not decided then
      decide(false, ("the new runner exited with %s before it was ready"):format(how))
    elseif why then
      cb(false, why)
    end
  end)
  if not handle then
    close(report)
    return nil, "cannot start a new runner: " .. tostring(pid)
  end
  pid = compat.tointeger(pid)
  local buf = ""
  report:read_start(function(err, data)
    if err or not data then return close(report) end
    buf = buf .. data
    if buf:find("ready\n", 1, true) then decide(true) end
  end)
  timer = uv.new_timer()
  timer:start(opts.timeout, 0, function()
    decide(false, ("the new runner was not ready within %d ms"):format(opts.timeout))
  end)
  return pid
end

-- In a runner started by upgrade.start: the fd to report readiness on
-- (close-on-exec, and gone from the environment, so that workers do not
-- inherit it), or nil.
function upgrade.take()
  local fd = compat.tointeger(tonumber(os.getenv(ENV) or ""))
  if os.getenv(ENV) then uv.os_unsetenv(ENV) end
  if not fd or fd < 3 then return nil end
  if not core.set_cloexec(fd) then return nil end
  return fd
end

-- Tell the old runner this one is ready (once). on_let_go(), if given, is
-- called once the old runner has let go: it closes its end of the pipe
-- when it takes the answer (and hands over), or when it exits; never
-- while it means to keep serving (a timeout that fired first). The fd is
-- closed then (at once without on_let_go).
function upgrade.ready(fd, on_let_go)
  local pipe = uv.new_pipe(false)
  if not pipe:open(fd) then
    close(pipe)
    core.close(fd)
    return
  end
  local function let_go()
    close(pipe)
    if on_let_go then Emitter.call_protected("an upgrade callback", on_let_go) end
  end
  pipe:write("ready\n", function(err)
    if err then return let_go() end -- the old runner is gone
    if not on_let_go then return close(pipe) end
    pipe:read_start(function(rerr, data)
      if data and not rerr then return end -- nothing is sent this way
      let_go()
    end)
  end)
end

return upgrade
