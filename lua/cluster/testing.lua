-- cluster.testing: helpers for testing a clustered app from busted (or any
-- other Lua test framework) without blocking the loop its master needs.
--
--   local testing = require("cluster.testing")
--   local app = testing.spawn("server.lua", { port }, { runner = { "-w", "2" } })
--   local port = assert(app:wait_listening())
--   local status, headers, body = assert(testing.http_get(port, "/"))
--   assert(app:stop() == 0)
--
-- The rules, for every function here (docs/testing.md is the reference):
-- a wait runs this process's luv loop until its condition holds or its
-- timeout (milliseconds, default 5000) passes, and leaves no handle of its
-- own behind; a wait that times out returns false or nil and a message, so
-- `assert(...)` reports why; a bad argument raises an error naming it. A
-- wait cannot run inside a luv callback (the loop is running there
-- already): it raises if called there. Requiring this module starts
-- nothing and does not load `cluster`.

local uv = require("luv")
local core = require("cluster.core")
local compat = require("cluster.compat")

local testing = {}

testing.DEFAULT_TIMEOUT = 5000

-- How often a wait wakes up when nothing happens in the loop, for
-- conditions outside it (another process printing or ending).
local POLL_MS = 5
-- /proc scans (wait_listening) cost more: at most this often.
local SCAN_MS = 50

---------------------------------------------------------------------------
-- Argument checks

local function bad(fname, name, what, level)
  error(("bad argument '%s' to testing.%s (%s)"):format(name, fname, what), level + 1)
end

local function check_timeout(fname, timeout, level)
  if timeout == nil then return testing.DEFAULT_TIMEOUT end
  if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
    bad(fname, "timeout", "milliseconds >= 0 expected, got " .. tostring(timeout), level + 1)
  end
  return timeout
end

-- A timeout for a message ("%d" refuses a float on 5.3+).
local function ms(t)
  if t % 1 == 0 and t < 2 ^ 53 then return ("%d"):format(t) end
  return tostring(t)
end

local function check_type(fname, name, value, expected, level)
  if type(value) ~= expected then
    bad(fname, name, expected .. " expected, got " .. type(value), level + 1)
  end
end

-- A wait runs the loop: not from inside it (luv 1.44 would nest uv_run,
-- which libuv does not support).
local function check_outside_loop(fname, level)
  if uv.loop_mode and uv.loop_mode() ~= nil then
    error(("testing.%s: called inside a luv callback, where the loop is running already; "
      .. "call it from the test's own code"):format(fname), level + 1)
  end
end

---------------------------------------------------------------------------
-- Running the loop

-- Run the loop until cond() is true or timeout_ms has passed. Returns
-- true, or false on timeout; an error raised by cond is raised again here
-- (outside the loop's callbacks). Creates one timer and one prepare
-- handle and closes both before it returns.
local function run_until(cond, timeout_ms)
  if cond() then return true end
  local timer, prepare = uv.new_timer(), uv.new_prepare()
  local met, failed, err = false, false, nil
  uv.update_time()
  local deadline = uv.now() + timeout_ms
  -- prepare runs before the loop would block: after timers, deferred
  -- events and the previous turn's I/O alike.
  prepare:start(function()
    local ok, res = pcall(cond)
    if not ok then
      failed, err = true, res
      uv.stop()
    elseif res then
      met = true
      uv.stop()
    end
  end)
  -- The timer ends the wait at the deadline and, meanwhile, wakes the
  -- loop every few ms so prepare looks at cond again.
  timer:start(math.min(POLL_MS, math.floor(timeout_ms)), POLL_MS, function()
    if uv.now() >= deadline then uv.stop() end
  end)
  -- uv.stop() from someone else's callback ends uv.run early: run again.
  repeat
    uv.run("default")
  until met or failed or uv.now() >= deadline
  timer:close()
  prepare:close()
  uv.run("nowait") -- the two closes finish in this turn
  if failed then error(err, 0) end
  return met or (cond() and true) or false
end

-- Close a handle; outside the loop, let the close finish now (a close
-- still pending when the Lua state is torn down crashes luv 1.44 at exit).
local function close_handle(handle)
  if handle:is_closing() then return end
  handle:close()
  if not (uv.loop_mode and uv.loop_mode()) then uv.run("nowait") end
end

function testing.wait(cond, timeout)
  check_type("wait", "cond", cond, "function", 2)
  timeout = check_timeout("wait", timeout, 2)
  check_outside_loop("wait", 2)
  if run_until(cond, timeout) then return true end
  return false, ("testing.wait: condition not met within %s ms"):format(ms(timeout))
end

function testing.wait_event(emitter, name, timeout)
  if type(emitter) ~= "table" or type(emitter.once) ~= "function" or type(emitter.off) ~= "function" then
    bad("wait_event", "emitter", "an emitter with :once and :off expected, got " .. type(emitter), 2)
  end
  check_type("wait_event", "name", name, "string", 2)
  timeout = check_timeout("wait_event", timeout, 2)
  check_outside_loop("wait_event", 2)
  local got
  local function on_event(...) got = compat.pack(...) end
  emitter:once(name, on_event)
  local ok, err = pcall(run_until, function() return got ~= nil end, timeout)
  if not got then emitter:off(name, on_event) end
  if not ok then error(err, 0) end
  if not got then return false, ("testing.wait_event: no '%s' event within %s ms"):format(name, ms(timeout)) end
  return true, compat.unpack(got, 1, got.n)
end

function testing.free_port(host)
  if host == nil then host = "127.0.0.1" end
  check_type("free_port", "host", host, "string", 2)
  local tcp = uv.new_tcp()
  -- luv raises for a host that is not an IP address.
  local called, ok, err = pcall(tcp.bind, tcp, host, 0)
  local addr = called and ok and tcp:getsockname()
  close_handle(tcp)
  if not called then bad("free_port", "host", "an IP address expected, got " .. ("%q"):format(host), 2) end
  if not ok then return nil, ("testing.free_port: cannot bind %s: %s"):format(host, tostring(err)) end
  if not addr then return nil, "testing.free_port: getsockname failed" end
  return addr.port
end

---------------------------------------------------------------------------
-- HTTP GET over luv

-- Parse a response from what was read so far. Returns status, headers,
-- body once it is complete; nil while more is needed; false, err when it
-- is malformed or the peer closed (eof) too early.
local function parse_response(data, eof)
  local head_end = data:find("\r\n\r\n", 1, true)
  if not head_end then
    if eof then
      return false, data == "" and "connection closed without a response"
        or "connection closed inside the response's headers"
    end
    return nil
  end
  local head = data:sub(1, head_end + 1)
  local status = head:match("^HTTP/%d%.%d (%d%d%d)")
  if not status then
    return false, ("not an HTTP response: %q"):format(head:match("^[^\r\n]*"):sub(1, 80))
  end
  status = tonumber(status)
  local body = data:sub(head_end + 4)
  -- An interim response (100 Continue) comes before the real one.
  if status < 200 then return parse_response(body, eof) end
  local headers = {}
  for line in head:gmatch("\r\n([^\r\n]+)") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then
      k = k:lower()
      headers[k] = headers[k] and headers[k] .. ", " .. v or v
    end
  end
  if status == 204 or status == 304 then return status, headers, "" end
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    local parts, pos = {}, 1
    while true do
      local line_end = body:find("\r\n", pos, true)
      if not line_end then break end
      local size = tonumber(body:sub(pos, line_end - 1):match("^%s*(%x+)"), 16)
      if not size then return false, "malformed chunked body" end
      if size == 0 then
        -- Optional trailer fields, then an empty line.
        local rest = body:sub(line_end + 2)
        if rest:sub(1, 2) == "\r\n" or rest:find("\r\n\r\n", 1, true) then
          return status, headers, table.concat(parts)
        end
        break
      end
      if #body < line_end + 1 + size + 2 then break end
      parts[#parts + 1] = body:sub(line_end + 2, line_end + 1 + size)
      pos = line_end + 2 + size + 2
    end
    if eof then return false, "connection closed inside a chunked body" end
    return nil
  end
  local length = headers["content-length"]
  if length then
    local n = tonumber(length:match("^%d+$"))
    if not n then return false, ("malformed Content-Length %q"):format(length) end
    if #body >= n then return status, headers, body:sub(1, n) end
    if eof then return false, ("connection closed after %d of %d body bytes"):format(#body, n) end
    return nil
  end
  if eof then return status, headers, body end
  return nil
end

-- target (port or URL), path, timeout -> host, port, path, Host header, url
local function parse_target(target, path)
  local host, port, authority
  if type(target) == "number" then
    port = compat.tointeger(target)
    if not port or port < 1 or port > 65535 then
      bad("http_get", "target", "a port from 1 to 65535 expected, got " .. tostring(target), 3)
    end
    if path == nil then path = "/" end
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
      bad("http_get", "path", "a string starting with '/' expected, got " .. tostring(path), 3)
    end
    host = "127.0.0.1"
    authority = host .. ":" .. port
  elseif type(target) == "string" then
    if path ~= nil then bad("http_get", "path", "give the path in the URL", 3) end
    local rest
    authority, rest = target:match("^http://([^/?#]+)(.*)$")
    if not authority then
      bad("http_get", "target", "a port or an http:// URL expected, got " .. ("%q"):format(target), 3)
    end
    local p
    host, p = authority:match("^%[(.+)%]:?(%d*)$")
    if not host then host, p = authority:match("^([^:]+):?(%d*)$") end
    port = p == "" and 80 or tonumber(p)
    if not host or not port or port < 1 or port > 65535 then
      bad("http_get", "target", ("bad host or port in %q"):format(target), 3)
    end
    path = rest:gsub("#.*$", "")
    if path == "" then path = "/" elseif path:sub(1, 1) == "?" then path = "/" .. path end
  else
    bad("http_get", "target", "a port or an http:// URL expected, got " .. type(target), 3)
  end
  return host, port, path, authority, "http://" .. authority .. path
end

function testing.http_get(target, path, timeout)
  if type(path) == "number" and timeout == nil then path, timeout = nil, path end
  local host, port, req_path, authority, url = parse_target(target, path)
  timeout = check_timeout("http_get", timeout, 2)
  check_outside_loop("http_get", 2)

  local tcp = uv.new_tcp()
  local result -- { err } or { status, headers, body }
  local dns_req
  local function finish(r)
    if result then return end
    result = r
    if not tcp:is_closing() then tcp:close() end
  end
  -- Nothing raises inside a luv callback: an unexpected error ends the
  -- request with it.
  local function protect(fn)
    return function(...)
      if result then return end
      local ok, err = pcall(fn, ...)
      if not ok then finish({ err = "internal error: " .. tostring(err) }) end
    end
  end

  local received = {}
  local function on_read(err, chunk)
    if err then return finish({ err = "read: " .. tostring(err) }) end
    if chunk then received[#received + 1] = chunk end
    local data = table.concat(received)
    received = { data }
    local status, headers, body = parse_response(data, chunk == nil)
    if status then return finish({ status, headers, body }) end
    if status == false then return finish({ err = headers }) end
  end

  local function on_connect(err)
    if err then return finish({ err = tostring(err) }) end
    tcp:write(("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cluster.testing\r\nAccept: */*\r\n"
      .. "Connection: close\r\n\r\n"):format(req_path, authority))
    tcp:read_start(protect(on_read))
  end

  local function connect(ip)
    local ok, err = tcp:connect(ip, port, protect(on_connect))
    if not ok then finish({ err = tostring(err) }) end
  end

  if host:match("^%d+%.%d+%.%d+%.%d+$") or host:find(":", 1, true) then
    connect(host)
  else
    dns_req = uv.getaddrinfo(host, tostring(port), { socktype = "stream" }, protect(function(err, res)
      if err or not res or not res[1] then
        return finish({ err = ("cannot resolve %s: %s"):format(host, tostring(err or "no address")) })
      end
      connect(res[1].addr)
    end))
  end

  local ok, err = pcall(run_until, function() return result ~= nil end, timeout)
  if not result then
    finish({ err = ("no complete response within %s ms"):format(ms(timeout)) })
    if dns_req then uv.cancel(dns_req) end
  end
  close_handle(tcp)
  if not ok then error(err, 0) end
  if result.err then return nil, ("GET %s: %s"):format(url, result.err) end
  return result[1], result[2], result[3]
end

---------------------------------------------------------------------------
-- Processes

local Process = {}
Process.__index = Process

-- Processes started here that have not exited yet. Those still running
-- when this Lua state closes (the test run ends, or a script raised
-- before it stopped them) are killed with SIGKILL: a safety net, not a
-- substitute for proc:stop(). (Lua 5.1's os.exit does not close the
-- state: not after that.)
local live = {}
local kill = core.kill
local function kill_live()
  for proc in pairs(live) do pcall(kill, proc.pid, "SIGKILL") end
end
local newproxy = rawget(_G, "newproxy")
if newproxy then -- 5.1 and LuaJIT: tables have no __gc
  testing._reaper = newproxy(true)
  getmetatable(testing._reaper).__gc = kill_live
else
  testing._reaper = setmetatable({}, { __gc = kill_live })
end

local function absolute(path, base)
  if path:sub(1, 1) == "/" then return path end
  return (base or uv.cwd()) .. "/" .. path
end

-- How to start the runner: { lua = path of its Lua source } when it is a
-- Lua script (a checkout's bin/luv-cluster, or the rock's copy), else
-- { program = path } (luarocks' shell wrapper, or luv-cluster on PATH).
local function runner_command()
  local source = debug.getinfo(1, "S").source
  local dir = source:match("^@(.*)/cluster/testing%.lua$")
  local candidates = {}
  if dir then
    dir = absolute(dir)
    local root = dir:match("^(.*)/lua$")
    if root then candidates[#candidates + 1] = root .. "/bin/luv-cluster" end
    local tree = dir:match("^(.*)/share/lua/[^/]+$")
    if tree then candidates[#candidates + 1] = tree .. "/bin/luv-cluster" end
  end
  for _, path in ipairs(candidates) do
    local f = io.open(path)
    if f then
      local first = f:read("*l") or ""
      f:close()
      if first:find("^#!.*lua") then return { lua = path } end
      return { program = path }
    end
  end
  return { program = "luv-cluster" }
end

local SPAWN_OPTIONS = {
  env = "table", cwd = "string", lua = "string", runner = "table|boolean", prefix = "table",
  uid = "number", gid = "number", on_line = "function",
}

local function is_list(v, of)
  if type(v) ~= "table" then return false end
  local n = #v
  for k, x in pairs(v) do
    if not compat.is_integer(k) or k < 1 or k > n then return false end
    if not of[type(x)] then return false end
  end
  return true
end

local LINE_BUFFERED = "if io and io.stdout then io.stdout:setvbuf('line') end"

local STRINGS = { string = true }
local ARGS = { string = true, number = true }

local function check_spawn_opts(opts)
  if opts == nil then return {} end
  check_type("spawn", "opts", opts, "table", 3)
  for k, v in pairs(opts) do
    local want = SPAWN_OPTIONS[k]
    if not want then bad("spawn", "opts", "unknown option '" .. tostring(k) .. "'", 3) end
    if not want:find(type(v), 1, true) then
      bad("spawn", "opts", ("option '%s' must be a %s, got %s"):format(k, want, type(v)), 3)
    end
  end
  if opts.env then
    for k, v in pairs(opts.env) do
      local t = type(v)
      if type(k) ~= "string" or k == "" or k:find("[=%z]") or (t ~= "string" and t ~= "number" and t ~= "boolean") then
        bad("spawn", "opts", "option 'env' must map names to strings, numbers or booleans", 3)
      end
    end
  end
  if type(opts.runner) == "table" and not is_list(opts.runner, ARGS) then
    bad("spawn", "opts", "option 'runner' must be true or a list of runner options", 3)
  end
  if opts.prefix and (not is_list(opts.prefix, STRINGS) or #opts.prefix == 0) then
    bad("spawn", "opts", "option 'prefix' must be a non-empty list of strings", 3)
  end
  return opts
end

local function tail(lines, n)
  local from = math.max(1, #lines - n + 1)
  if from > #lines then return "  (no output)" end
  return "  " .. table.concat(lines, "\n  ", from, #lines)
end

function testing.spawn(script, args, opts)
  check_type("spawn", "script", script, "string", 2)
  if args ~= nil and not is_list(args, ARGS) then
    bad("spawn", "args", "a list of strings expected", 2)
  end
  opts = check_spawn_opts(opts)
  local f, open_err = io.open(absolute(script, opts.cwd and absolute(opts.cwd)))
  if not f then bad("spawn", "script", "cannot open " .. tostring(open_err), 2) end
  f:close()

  local lua = opts.lua or core.exe_path() or uv.exepath()
  local argv = {}
  for _, a in ipairs(opts.prefix or {}) do argv[#argv + 1] = a end
  if opts.runner then
    local runner = runner_command()
    if runner.lua then
      argv[#argv + 1] = lua
      argv[#argv + 1] = runner.lua
    else
      argv[#argv + 1] = runner.program
    end
    if type(opts.runner) == "table" then
      for _, a in ipairs(opts.runner) do argv[#argv + 1] = tostring(a) end
    end
  else
    argv[#argv + 1] = lua
  end
  argv[#argv + 1] = script
  for _, a in ipairs(args or {}) do argv[#argv + 1] = tostring(a) end

  -- This process's environment; the module paths it uses (so the child
  -- finds the same cluster), unless another interpreter was asked for;
  -- then opts.env.
  local env = uv.os_environ()
  if not opts.lua then
    env[compat.path_var] = compat.absolute_paths(package.path)
    env[compat.cpath_var] = compat.absolute_paths(package.cpath)
  end
  for k, v in pairs(opts.env or {}) do env[k] = tostring(v) end
  -- stdout line-buffered, as on a terminal, in the process and in every
  -- Lua it starts (workers inherit the environment): a line printed is a
  -- line read, under every Lua (5.1 and LuaJIT do not flush print()).
  local init_var = compat.path_var:gsub("PATH", "INIT")
  if not env.LUA_INIT and not env[init_var] then env.LUA_INIT = LINE_BUFFERED end
  local envlist = {}
  for k, v in pairs(env) do envlist[#envlist + 1] = k .. "=" .. v end

  local proc = setmetatable({
    script = script,
    lines = {}, stdout = {}, stderr = {},
    _eof = {}, _exited = false,
  }, Process)
  local pipes = { stdout = uv.new_pipe(false), stderr = uv.new_pipe(false) }
  proc._pipes = pipes
  local rest = {}
  for i = 2, #argv do rest[i - 1] = argv[i] end
  local handle, pid
  handle, pid = uv.spawn(argv[1], {
    args = rest, env = envlist, cwd = opts.cwd, uid = opts.uid, gid = opts.gid,
    stdio = { nil, pipes.stdout, pipes.stderr },
  }, function(code, signal)
    live[proc] = nil
    proc._exited = true
    proc._raw_code, proc._raw_signal = code, signal
    handle:close()
  end)
  if not handle then
    close_handle(pipes.stdout)
    close_handle(pipes.stderr)
    error(("testing.spawn: cannot start %s: %s"):format(argv[1], tostring(pid)), 2)
  end
  proc.pid = pid
  live[proc] = true

  local on_line = opts.on_line
  for _, stream in ipairs({ "stdout", "stderr" }) do
    local list, buf = proc[stream], ""
    local function add(line)
      list[#list + 1] = line
      proc.lines[#proc.lines + 1] = line
      if on_line then
        local ok, err = pcall(on_line, line, stream)
        if not ok and not proc._callback_error then
          -- Shown now, raised again by the process's next method call.
          proc._callback_error = err
          io.stderr:write("testing.spawn: error in on_line: ", tostring(err), "\n")
        end
      end
    end
    pipes[stream]:read_start(function(err, data)
      if data then
        buf = buf .. data
        local pos = 1
        while true do
          local nl = buf:find("\n", pos, true)
          if not nl then break end
          add(buf:sub(pos, nl - 1))
          pos = nl + 1
        end
        buf = buf:sub(pos)
      else
        -- EOF (or a read error): a last line without a newline counts.
        if buf ~= "" then add(buf) end
        buf = ""
        proc._eof[stream] = true
        if not pipes[stream]:is_closing() then pipes[stream]:close() end
        if err then proc._read_error = err end
      end
    end)
  end
  return proc
end

function Process:_name()
  return ("%s (pid %d)"):format(self.script:match("[^/]*$"), self.pid)
end

function Process:_raise_callback_error()
  local err = self._callback_error
  if err ~= nil then
    self._callback_error = nil
    error(err, 0)
  end
end

function Process:_output_done()
  return self._eof.stdout and self._eof.stderr
end

function Process:running()
  return not self._exited
end

-- code, signal once it has exited (as a Worker's 'exit'); false while it
-- runs.
function Process:exit_status()
  if not self._exited then return false end
  if self._raw_signal and self._raw_signal ~= 0 then
    return nil, core.signame(self._raw_signal) or self._raw_signal
  end
  return self._raw_code, nil
end

function Process:_status_text()
  local code, signal = self:exit_status()
  if signal then return "killed by " .. signal end
  return "code " .. tostring(code)
end

-- After the exit: what it wrote before it ended, within a bounded time
-- (a grandchild may hold the pipes open).
function Process:_collect_output(limit_ms)
  if not self:_output_done() then
    run_until(function() return self:_output_done() end, limit_ms)
  end
end

function Process:wait_exit(timeout)
  timeout = check_timeout("wait_exit", timeout, 2)
  check_outside_loop("wait_exit", 2)
  uv.update_time()
  local start = uv.now()
  run_until(function() return self._exited end, timeout)
  self:_raise_callback_error()
  if not self._exited then
    return false, ("testing: %s still running after %s ms"):format(self:_name(), ms(timeout))
  end
  uv.update_time()
  self:_collect_output(math.max(0, math.min(1000, timeout - (uv.now() - start))))
  return self:exit_status()
end

function Process:wait_line(pattern, timeout, init)
  check_type("wait_line", "pattern", pattern, "string", 2)
  local ok, err = pcall(string.find, "", pattern)
  if not ok then bad("wait_line", "pattern", tostring(err):gsub("^.-:%d+: ", ""), 2) end
  timeout = check_timeout("wait_line", timeout, 2)
  if init == nil then init = 1 end
  if not compat.is_integer(init) or init < 1 then
    bad("wait_line", "init", "a line index >= 1 expected, got " .. tostring(init), 2)
  end
  check_outside_loop("wait_line", 2)
  local i, found = init, nil
  local lines = self.lines
  run_until(function()
    while i <= #lines do
      if lines[i]:find(pattern) then
        found = i
        return true
      end
      i = i + 1
    end
    return self._exited and self:_output_done()
  end, timeout)
  self:_raise_callback_error()
  if found then return lines[found], found end
  if self._exited then
    return nil, ("testing: %s ended (%s) before printing a line matching %q; its last output:\n%s")
      :format(self:_name(), self:_status_text(), pattern, tail(lines, 10))
  end
  return nil, ("testing: no line matching %q from %s within %s ms; its last output:\n%s")
    :format(pattern, self:_name(), ms(timeout), tail(lines, 10))
end

-- Listening TCP sockets, from /proc (Linux).

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- pid and its descendants, from the ppid of every process.
local function process_tree(pid)
  local children = {}
  local req = uv.fs_scandir("/proc")
  while req do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    if name:match("^%d+$") then
      local stat = read_file("/proc/" .. name .. "/stat")
      local ppid = stat and stat:match("%) %a (%d+)")
      if ppid then
        local list = children[ppid] or {}
        children[ppid] = list
        list[#list + 1] = name
      end
    end
  end
  local tree, i = { tostring(pid) }, 1
  while tree[i] do
    for _, c in ipairs(children[tree[i]] or {}) do tree[#tree + 1] = c end
    i = i + 1
  end
  return tree
end

local function socket_inodes(pids)
  local inodes, any = {}, false
  for _, pid in ipairs(pids) do
    local dir = "/proc/" .. pid .. "/fd/"
    local req = uv.fs_scandir(dir)
    while req do
      local name = uv.fs_scandir_next(req)
      if not name then break end
      local target = uv.fs_readlink(dir .. name)
      local inode = target and target:match("^socket:%[(%d+)%]$")
      if inode then inodes[inode], any = true, true end
    end
  end
  return any and inodes
end

local function ipv4(hex)
  local b = {}
  for i = 4, 1, -1 do b[#b + 1] = tonumber(hex:sub(i * 2 - 1, i * 2), 16) end
  return table.concat(b, ".")
end

local function ipv6(hex)
  -- Four 32-bit words, each in host (little-endian) byte order.
  local bytes = {}
  for w = 0, 3 do
    local word = hex:sub(w * 8 + 1, w * 8 + 8)
    for i = 4, 1, -1 do bytes[#bytes + 1] = tonumber(word:sub(i * 2 - 1, i * 2), 16) end
  end
  local groups = {}
  for g = 0, 7 do groups[g + 1] = bytes[g * 2 + 1] * 256 + bytes[g * 2 + 2] end
  -- The longest run of two or more zero groups becomes "::".
  local best_at, best_len, at, len = nil, 1, nil, 0
  for g = 1, 8 do
    if groups[g] == 0 then
      if len == 0 then at = g end
      len = len + 1
      if len > best_len then best_at, best_len = at, len end
    else
      len = 0
    end
  end
  local parts = {}
  for g = 1, 8 do parts[g] = ("%x"):format(groups[g]) end
  if not best_at then return table.concat(parts, ":") end
  return table.concat(parts, ":", 1, best_at - 1) .. "::" .. table.concat(parts, ":", best_at + best_len, 8)
end

-- port, host of a TCP socket in LISTEN state held by pid or a descendant.
-- The kernel lists listening sockets first in /proc/net/tcp{,6}: reading
-- stops at the first other one, as the rest (every connection of the
-- network namespace, TIME_WAIT included) can run to many megabytes.
local function find_listening(pid)
  local inodes = socket_inodes({ tostring(pid) }) or socket_inodes(process_tree(pid))
  if not inodes then return nil end
  for _, file in ipairs({ "tcp", "tcp6" }) do
    local f = io.open("/proc/" .. pid .. "/net/" .. file) or io.open("/proc/net/" .. file)
    if f then
      f:read("*l") -- the header
      for line in f:lines() do
        local addr, port, st, inode = line:match(
          "^%s*%d+:%s+(%x+):(%x+)%s+%x+:%x+%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
        if st ~= "0A" then break end
        if inodes[inode] then
          f:close()
          return tonumber(port, 16), #addr == 8 and ipv4(addr) or ipv6(addr)
        end
      end
      f:close()
    end
  end
  return nil
end

function Process:wait_listening(timeout)
  timeout = check_timeout("wait_listening", timeout, 2)
  check_outside_loop("wait_listening", 2)
  local port, host
  local next_scan = 0
  uv.update_time()
  local start = uv.now()
  run_until(function()
    if self._exited then return true end
    local now = uv.now()
    if now < next_scan then return false end
    next_scan = now + SCAN_MS
    port, host = find_listening(self.pid)
    return port ~= nil
  end, timeout)
  self:_raise_callback_error()
  if port then return port, host end
  if self._exited then
    uv.update_time()
    self:_collect_output(math.max(0, math.min(1000, timeout - (uv.now() - start))))
    return nil, ("testing: %s ended (%s) before listening; its last output:\n%s")
      :format(self:_name(), self:_status_text(), tail(self.lines, 10))
  end
  return nil, ("testing: %s is not listening on a TCP port after %s ms; its last output:\n%s")
    :format(self:_name(), ms(timeout), tail(self.lines, 10))
end

function Process:stop(signal, timeout)
  if signal == nil then signal = "SIGTERM" end
  local ok, signum = pcall(core.signum, signal)
  if not ok then bad("stop", "signal", tostring(signal) .. " is not a signal", 2) end
  timeout = check_timeout("stop", timeout, 2)
  check_outside_loop("stop", 2)
  if not self._exited then
    uv.kill(self.pid, signum)
    if not run_until(function() return self._exited end, timeout) then
      uv.kill(self.pid, core.signum("SIGKILL"))
      if not run_until(function() return self._exited end, 5000) then
        error(("testing: %s did not end after SIGKILL"):format(self:_name()), 2)
      end
    end
  end
  self:_collect_output(1000)
  -- A grandchild that still holds a pipe open: stop reading it.
  for _, pipe in pairs(self._pipes) do close_handle(pipe) end
  self:_raise_callback_error()
  return self:exit_status()
end

return testing
