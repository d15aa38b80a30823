-- The runner under systemd: sd_notify states on NOTIFY_SOCKET, and
-- listening sockets passed in with LISTEN_FDS/LISTEN_PID.
local helper = require("helper")
local uv = require("luv")
local core = require("cluster.core")

local BIN = uv.cwd() .. "/bin/luv-cluster"
local SERVER = helper.fixture("sv_server")

-- Start the runner with extra environment and, optionally, fd 3; lines of
-- its stdout are collected. A shell sets LISTEN_PID to the runner's own pid.
local function start(args, env, fd3)
  local r = { lines = {} }
  local out = uv.new_pipe(false)
  local cmd = "exec " .. core.exe_path() .. " " .. BIN
  for _, a in ipairs(args) do cmd = cmd .. " '" .. a .. "'" end
  if fd3 then cmd = "LISTEN_PID=$$ LISTEN_FDS=1 " .. cmd end
  local envlist = { helper.path_var .. "=" .. package.path, helper.cpath_var .. "=" .. package.cpath }
  for k, v in pairs(uv.os_environ()) do
    if not k:match("^LUA_C?PATH") then envlist[#envlist + 1] = k .. "=" .. v end
  end
  for _, kv in ipairs(env) do envlist[#envlist + 1] = kv end
  local buf = ""
  r.handle, r.pid = uv.spawn("/bin/sh", { args = { "-c", cmd }, env = envlist, stdio = { nil, out, 2, fd3 } },
    function(code) r.code, r.exited = code, true; r.handle:close() end)
  assert(r.handle, r.pid)
  out:read_start(function(_, data)
    if not data then
      out:close()
      r.eof = true
      return
    end
    buf = buf .. data
    for line in buf:gmatch("([^\n]*)\n") do r.lines[#r.lines + 1] = line end
    buf = buf:match("[^\n]*$")
  end)
  return r
end

-- Lines of its stdout that match (r.lines, as a runner_util runner's).
local count = dofile(helper.fixture("runner_util")).count

local function stop(r)
  if not r.exited then uv.kill(r.pid, "sigterm") end
  assert.is_true(helper.wait(function() return r.exited and r.eof end, 5000), table.concat(r.lines, "\n"))
end

describe("the runner under systemd", function()
  local tmp
  before_each(function() tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-systemd-XXXXXX")) end)
  after_each(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("sends READY=1 once the workers are ready, RELOADING=1/READY=1 around a reload, STOPPING=1", function()
    local path = tmp .. "/notify"
    local fd = assert(core.listen_socket({ type = "unixgram", path = path }))
    local sock = uv.new_pipe(false)
    assert(sock:open(fd))
    local states = {}
    sock:read_start(function(_, data) if data then states[#states + 1] = data end end)
    local r = start({ "-w", "2", SERVER, "0" }, { "NOTIFY_SOCKET=" .. path })
    finally(function() if not r.exited then uv.kill(r.pid, "sigkill") end helper.close(sock) end)
    assert.is_true(helper.wait(function() return #states >= 1 end, 5000), table.concat(r.lines, "\n"))
    assert.equal("READY=1\nMAINPID=" .. r.pid, states[1])
    -- Its lines come on another channel: both workers were ready.
    assert.is_true(helper.wait(function() return count(r, "ready after") == 2 end, 2000))
    uv.kill(r.pid, "sighup")
    assert.is_true(helper.wait(function() return #states >= 3 end, 5000))
    assert.same({ "RELOADING=1", "READY=1" }, { states[2], states[3] })
    stop(r)
    assert.is_true(helper.wait(function() return #states >= 4 end, 2000))
    assert.equal("STOPPING=1", states[4])
  end)

  it("serves a port from a socket passed in LISTEN_FDS instead of binding it", function()
    -- This process keeps its listening socket open: a master that bound the
    -- port itself would get EADDRINUSE and no worker would become ready.
    local fd, info = assert(core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 0 }))
    local r = start({ "-w", "2", SERVER, tostring(info.port) }, {}, fd)
    finally(function() if not r.exited then uv.kill(r.pid, "sigkill") end core.close(fd) end)
    assert.is_true(helper.wait(function() return count(r, "ready after") == 2 end, 5000), table.concat(r.lines, "\n"))
    local answer
    local c = uv.new_tcp()
    c:connect("127.0.0.1", info.port, function(err)
      if err then answer = err return end
      c:read_start(function(_, data) answer = data or "EOF" end)
      c:write("hello\n")
    end)
    local ok = helper.wait(function() return answer ~= nil end, 3000)
    helper.close(c)
    stop(r)
    assert.is_true(ok)
    assert.matches("^%d+ v1\n$", answer)
  end)
end)

-- The watchdog: WATCHDOG=1 every WATCHDOG_USEC / 2 when WATCHDOG_PID is
-- unset or the runner's pid, none when it names another process.
describe("the runner's systemd watchdog", function()
  local tmp
  before_each(function() tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-watchdog-XXXXXX")) end)
  after_each(function() os.execute("rm -rf '" .. tmp .. "'") end)

  -- Runs the runner with env until its first reload is done and until()
  -- holds (given the states so far); the states it sent.
  local function watchdogs(states)
    local n = 0
    for _, s in ipairs(states) do if s == "WATCHDOG=1" then n = n + 1 end end
    return n
  end

  local function states_through_a_reload(env, until_)
    local path = tmp .. "/notify"
    local fd = assert(core.listen_socket({ type = "unixgram", path = path }))
    local sock = uv.new_pipe(false)
    assert(sock:open(fd))
    local states = {}
    sock:read_start(function(_, data) if data then states[#states + 1] = data end end)
    local all = { "NOTIFY_SOCKET=" .. path }
    for _, kv in ipairs(env) do all[#all + 1] = kv end
    local r = start({ "-w", "1", SERVER, "0" }, all)
    finally(function() if not r.exited then uv.kill(r.pid, "sigkill") end helper.close(sock) end)
    local function has(state, from)
      for i = from or 1, #states do if states[i]:find(state, 1, true) then return i end end
    end
    assert.is_true(helper.wait(function() return has("READY=1") ~= nil end, 5000), table.concat(r.lines, "\n"))
    uv.kill(r.pid, "sighup")
    assert.is_true(helper.wait(function()
      local reloading = has("RELOADING=1")
      return reloading and has("READY=1", reloading) ~= nil and (not until_ or until_(states))
    end, 5000), table.concat(states, " | "))
    stop(r)
    return states, r
  end


  it("sends WATCHDOG=1 every WATCHDOG_USEC / 2", function()
    -- 40 ms: one every 20 ms, from the start to the stop.
    local states = states_through_a_reload({ "WATCHDOG_USEC=40000" }, function(st) return watchdogs(st) >= 5 end)
    assert.equal("WATCHDOG=1", states[1])
  end)

  it("sends none when WATCHDOG_PID names another process", function()
    local states = states_through_a_reload({ "WATCHDOG_USEC=40000", "WATCHDOG_PID=1" })
    assert.equal(0, watchdogs(states), table.concat(states, " | "))
  end)
end)
