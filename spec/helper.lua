-- Loaded once before every spec file (see .busted), outside busted's
-- per-file insulation, so all specs share one luv loop and one cluster
-- module, as a real program would.

local uv = require("luv")
require("cluster")
local compat = require("cluster.compat")

local helper = {}

local root = uv.cwd()

function helper.fixture(name)
  return root .. "/spec/fixtures/" .. name .. ".lua"
end

-- Run the loop until cond() is true or timeout_ms has passed; returns
-- cond(). The loop is checked after every event, never slept on.
function helper.wait(cond, timeout_ms)
  if cond() then return true end
  -- prepare runs before the loop would block: after timers, deferred
  -- events and the previous turn's I/O alike.
  local timer, check = uv.new_timer(), uv.new_prepare()
  -- Also wake every few ms, for conditions outside this loop (another
  -- process ending).
  uv.update_time()
  local deadline = uv.now() + (timeout_ms or 5000)
  timer:start(5, 5, function()
    if uv.now() >= deadline then uv.stop() end
  end)
  check:start(function() if cond() then uv.stop() end end)
  uv.run("default")
  timer:close()
  check:close()
  uv.run("nowait") -- let the two closes finish
  return cond() and true or false
end

-- Close a handle and let the loop finish the close: a close still pending
-- when the Lua state is torn down crashes luv 1.44 at exit.
function helper.close(handle)
  if handle:is_closing() then return end -- closed inside the loop: done by now
  local closed = false
  handle:close(function() closed = true end)
  helper.wait(function() return closed end, 1000)
end

-- A copy of what a worker running as another user needs (lua/, build/,
-- bin/, spec/fixtures/) in a temp dir anyone can read: the checkout itself
-- may sit in a directory only root can enter (/root). Returns its path and
-- a function that removes it. package.path/cpath entries for it come
-- first in helper.copy_paths(root).
function helper.readable_copy()
  local dir = assert(uv.fs_mkdtemp("/tmp/luv-cluster-readable-XXXXXX"))
  assert(os.execute(("mkdir -p '%s/spec' && cp -r '%s/lua' '%s/build' '%s/bin' '%s/' && "
    .. "cp -r '%s/spec/fixtures' '%s/spec/' && chmod -R a+rX '%s'")
    :format(dir, root, root, root, dir, root, dir, dir)))
  return dir, function() os.execute("rm -rf '" .. dir .. "'") end
end

-- The environment variables this interpreter reads its module paths from
-- (LUA_PATH_5_4 ..., or LUA_PATH for 5.1 and LuaJIT).
helper.path_var, helper.cpath_var = compat.path_var, compat.cpath_var

-- Module path values (for helper.path_var/cpath_var) that find the modules
-- in a copy.
function helper.copy_paths(dir)
  return dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;;",
    dir .. "/build/" .. compat.build_name .. "/?.so;;"
end

-- Number of open fds of this process.
function helper.fd_count()
  local n = 0
  local req = assert(uv.fs_scandir("/proc/self/fd"))
  while uv.fs_scandir_next(req) do n = n + 1 end
  return n
end

-- Pids of this process's children that have ended but were not reaped.
function helper.zombies()
  local me = uv.os_getpid()
  local found = {}
  local req = assert(uv.fs_scandir("/proc"))
  while true do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    if name:match("^%d+$") then
      local f = io.open("/proc/" .. name .. "/stat")
      local stat = f and f:read("*a")
      if f then f:close() end
      -- pid (comm) state ppid ...; comm may hold spaces, so match from ')'
      local state, ppid
      if stat then state, ppid = stat:match("%) (%a) (%d+)") end
      if state == "Z" and tonumber(ppid) == me then found[#found + 1] = tonumber(name) end
    end
  end
  return found
end

local function proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local stat = f:read("*a")
  f:close()
  return stat:match("%) (%a) ")
end

-- True while the process runs (an unreaped zombie does not count).
function helper.alive(pid)
  local state = proc_state(pid)
  return state ~= nil and state ~= "Z"
end

-- Run a Lua script as a separate process; lines of its stdout go to
-- on_line(line). Returns the uv process handle and pid; exit is recorded
-- in the returned state table {code=, signal=, exited=}.
-- opts (optional): uid =, gid = for the child; lpath =, cpath = for its
-- module search paths (default: this process's); fd_limit = n runs it
-- under `ulimit -n n` (its pid is then the shell's, which execs it);
-- stderr = true collects its stderr lines in state.err_lines, and sets
-- state.err_eof once every writer has closed it (else it is this
-- process's); detached = true starts it in a session of its own (setsid:
-- its pid is its process group's id).
function helper.spawn_lua(script, args, on_line, env, opts)
  opts = opts or {}
  local stdout = uv.new_pipe(false)
  local state = { lines = {} }
  local all_args = { script }
  for _, a in ipairs(args or {}) do all_args[#all_args + 1] = a end
  local cpath = opts.cpath or package.cpath
  local lpath = opts.lpath or package.path
  local envlist = { helper.path_var .. "=" .. lpath, helper.cpath_var .. "=" .. cpath }
  for k, v in pairs(uv.os_environ()) do
    if k ~= helper.path_var and k ~= helper.cpath_var then envlist[#envlist + 1] = k .. "=" .. v end
  end
  for _, kv in ipairs(env or {}) do envlist[#envlist + 1] = kv end
  local buf = ""
  local handle, pid
  local exe = require("cluster.core").exe_path()
  if opts.fd_limit then
    -- Soft and hard limit both, through the shell's ulimit: the process
    -- cannot raise it back.
    local wrapped = { "-c", ("ulimit -n %d && exec \"$@\""):format(opts.fd_limit), "sh", exe }
    for _, a in ipairs(all_args) do wrapped[#wrapped + 1] = a end
    all_args, exe = wrapped, "/bin/sh"
  end
  local stderr = opts.stderr and uv.new_pipe(false) or 2
  handle, pid = uv.spawn(exe, {
    args = all_args, stdio = { nil, stdout, stderr }, env = envlist, uid = opts.uid, gid = opts.gid,
    detached = opts.detached,
  }, function(code, signal)
    state.exited, state.code, state.signal = true, code, signal
    handle:close()
  end)
  assert(handle, pid)
  stdout:read_start(function(err, data)
    if data then
      buf = buf .. data
      for line in buf:gmatch("([^\n]*)\n") do
        state.lines[#state.lines + 1] = line
        if on_line then on_line(line) end
      end
      buf = buf:match("[^\n]*$")
    else
      stdout:close()
      state.eof = true
    end
  end)
  if opts.stderr then
    state.err_lines = {}
    local ebuf = ""
    stderr:read_start(function(_, data)
      if data then
        ebuf = ebuf .. data
        for line in ebuf:gmatch("([^\n]*)\n") do state.err_lines[#state.err_lines + 1] = line end
        ebuf = ebuf:match("[^\n]*$")
      else
        stderr:close()
        state.err_eof = true
      end
    end)
  end
  state.pid = pid
  return state
end

-- Warnings the library gives about this machine's setup (e.g. reuseport
-- without tcp_migrate_req) are expected in these specs: caught here, so
-- they do not read as failures between results; specs can check them.
helper.warnings = {}
require("cluster"):on("warning", function(message) helper.warnings[#helper.warnings + 1] = message end)

package.loaded.helper = helper
return helper
