-- Loaded once before every spec file (see .busted), outside busted's
-- per-file insulation, so all specs share one luv loop and one cluster
-- module, as a real program would.

local uv = require("luv")
require("cluster")
local compat = require("cluster.compat")
local testing = require("cluster.testing")

local helper = {}

local root = uv.cwd()

function helper.fixture(name)
  return root .. "/spec/fixtures/" .. name .. ".lua"
end

-- Run the loop until cond() is true or timeout_ms has passed; returns
-- cond() as a boolean (cluster.testing.wait, without its message).
function helper.wait(cond, timeout_ms)
  return (testing.wait(cond, timeout_ms or 5000))
end

-- A TCP port nothing listens on (host default 127.0.0.1).
function helper.free_port(host)
  return assert(testing.free_port(host))
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

-- The contents of a file, or nil if it cannot be opened.
function helper.read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return text
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
      local stat = helper.read_file("/proc/" .. name .. "/stat")
      -- pid (comm) state ppid ...; comm may hold spaces, so match from ')'
      local state, ppid
      if stat then state, ppid = stat:match("%) (%a) (%d+)") end
      if state == "Z" and tonumber(ppid) == me then found[#found + 1] = tonumber(name) end
    end
  end
  return found
end

-- The state letter of a process in /proc/<pid>/stat (R, S, T, Z...), or nil.
local function proc_state(pid)
  local stat = helper.read_file("/proc/" .. pid .. "/stat")
  return stat and stat:match("%) (%a) ")
end
helper.proc_state = proc_state

-- True while the process runs (an unreaped zombie does not count).
function helper.alive(pid)
  local state = proc_state(pid)
  return state ~= nil and state ~= "Z"
end

-- Run a Lua script as a separate process (cluster.testing.spawn); lines
-- of its stdout go to on_line(line). Returns a state table: pid, lines
-- (stdout so far), and, once known, exited, code and signal (luv's
-- numbers) and eof (stdout closed); proc is the testing.spawn process.
-- env (optional): a list of "NAME=value" added to the environment.
-- opts (optional): uid =, gid = for the child; lpath =, cpath = for its
-- module search paths (default: this process's); fd_limit = n runs it
-- under `ulimit -n n` (its pid is then the shell's, which execs it);
-- lua_args = { ... } go to the interpreter before the script (likewise
-- through a shell); detached = true starts it in a session of its own
-- (setsid(1): its pid is its process group's id); prefix = a command
-- that execs the rest in place (unshare, nsenter: the pid is then the
-- script's), not with fd_limit, lua_args or detached; stderr = true
-- collects its stderr lines in state.err_lines, and sets state.err_eof
-- once every writer has closed it (else they are written to this
-- process's stderr).
function helper.spawn_lua(script, args, on_line, env, opts)
  opts = opts or {}
  local spawn_opts = { uid = opts.uid, gid = opts.gid, env = {}, prefix = opts.prefix }
  for _, kv in ipairs(env or {}) do
    local k, v = kv:match("^([^=]+)=(.*)$")
    spawn_opts.env[k] = v
  end
  if opts.lpath then spawn_opts.env[helper.path_var] = opts.lpath end
  if opts.cpath then spawn_opts.env[helper.cpath_var] = opts.cpath end
  assert(not (opts.prefix and (opts.fd_limit or opts.lua_args or opts.detached)),
    "prefix cannot be combined with fd_limit, lua_args or detached")
  if opts.fd_limit then
    -- Soft and hard limit both, through the shell's ulimit: the process
    -- cannot raise it back.
    spawn_opts.prefix = { "/bin/sh", "-c", ("ulimit -n %d && exec \"$@\""):format(opts.fd_limit), "sh" }
  end
  if opts.lua_args then
    -- Interpreter options before the script (e.g. -e chunk), through a
    -- shell that execs the interpreter it is given with them.
    local quoted = {}
    for _, a in ipairs(opts.lua_args) do quoted[#quoted + 1] = "'" .. a:gsub("'", "'\\''") .. "'" end
    spawn_opts.prefix = { "/bin/sh", "-c", 'lua=$1; shift; exec "$lua" ' .. table.concat(quoted, " ") .. ' "$@"', "sh" }
  end
  if opts.detached then
    -- setsid(1) execs in place: the spawned process is not a group leader.
    assert(not spawn_opts.prefix, "detached cannot be combined with fd_limit or lua_args")
    spawn_opts.prefix = { "setsid" }
  end
  spawn_opts.on_line = function(line, stream)
    if stream == "stderr" then
      if not opts.stderr then io.stderr:write(line, "\n") end
    elseif on_line then
      on_line(line)
    end
  end
  local proc = testing.spawn(script, args, spawn_opts)
  local live = {
    exited = function() return proc._exited or nil end,
    code = function() return proc._raw_code end,
    signal = function() return proc._raw_signal end,
    eof = function() return proc._eof.stdout end,
    err_eof = function() return proc._eof.stderr end,
  }
  local err_lines = opts.stderr and proc.stderr or nil
  return setmetatable({ pid = proc.pid, lines = proc.stdout, err_lines = err_lines, proc = proc }, {
    __index = function(_, k)
      local get = live[k]
      return get and get()
    end,
  })
end

-- Warnings the library gives about this machine's setup (e.g. reuseport
-- without tcp_migrate_req) are expected in these specs: caught here, so
-- they do not read as failures between results; specs can check them.
helper.warnings = {}
require("cluster"):on("warning", function(message) helper.warnings[#helper.warnings + 1] = message end)

package.loaded.helper = helper
return helper
