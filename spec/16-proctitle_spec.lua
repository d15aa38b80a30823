-- Process titles (csrc/proctitle.c, cluster.proctitle): a worker shows in
-- ps as "luv-cluster worker <id> <script> [args]", the runner's master as
-- "luv-cluster master <script> [args]"; a user's own master keeps its
-- title. The title is written over the argv area only: cut to fit, the
-- environment and Lua's `arg` untouched; without /proc it fails softly.
local helper = require("helper")
local uv = require("luv")
local compat = require("cluster.compat")
local util = dofile(helper.fixture("lc_util"))

-- /proc/<pid>/cmdline without the NULs that pad the area; nil once gone.
local function cmdline(pid)
  local s = helper.read_file("/proc/" .. pid .. "/cmdline")
  return s and (s:gsub("%z+$", ""))
end

local function comm(pid)
  local s = helper.read_file("/proc/" .. pid .. "/comm")
  return s and (s:gsub("\n$", ""))
end

local function wait_title(pid, want, timeout)
  return helper.wait(function() return cmdline(pid) == want end, timeout or 5000)
end

-- Runs spec/fixtures/pt_title.lua (argv given whole: interpreter options,
-- the script, its args) and returns its "name value" lines as a table.
local function run_fixture(argv, env, lua_args)
  local st = helper.spawn_lua(argv[1], { compat.unpack(argv, 2, #argv) }, nil, env, { lua_args = lua_args })
  assert.is_true(helper.wait(function() return st.exited and st.eof end, 5000), "pt_title did not finish")
  assert.equal(0, st.code, table.concat(st.lines, "\n"))
  local got = {}
  for _, line in ipairs(st.lines) do
    local name, value = line:match("^(%S+) ?(.*)$")
    got[name] = value
  end
  return got
end

describe("process titles", function()
  after_each(util.cleanup)

  it("are written over the argv area only: cut to fit, NUL-padded, environment and arg untouched", function()
    local r = run_fixture({ helper.fixture("pt_title"), "area" }, { "PT_MARK=still here" })
    local area = tonumber(r.area)
    assert.is_true(area > 10, "argv area of " .. tostring(r.area))
    -- A title longer than the area keeps area - 1 bytes; the last stays NUL.
    assert.equal(tostring(area - 1), r.long)
    assert.equal(("L"):rep(area - 1) .. "\\0", r.cmdline_long)
    -- A short one is padded with NULs to the area's end.
    assert.equal("11", r.short)
    assert.equal("short title" .. ("\\0"):rep(area - 11), r.cmdline_short)
    -- cluster.proctitle: the script by its base name, then its args.
    assert.equal("true", r.set)
    assert.matches("^luv%-cluster master app%.lua x y\\0", r.cmdline_set)
    assert.equal("luv-cluster", r.comm)
    assert.equal("true", r.environ_same)
    assert.equal("still here", r.getenv)
    assert.equal("pt_title.lua 1", r.arg)
  end)

  it("are not set before the script runs (from a -e chunk), which then loads and runs as usual", function()
    local early = "early = { require('cluster.proctitle').set('worker', 1) }"
    local r = run_fixture({ helper.fixture("pt_title"), "early" }, nil, { "-e", early })
    assert.equal("nil cluster.proctitle: the script is not running yet", r.early)
    assert.matches("pt_title%.lua\\0early\\0$", r.cmdline)
    assert.equal("pt_title.lua 1", r.arg)
  end)

  it("fail with nil, err (no error raised) when /proc is missing", function()
    if (os.getenv("LD_PRELOAD") or ""):find("asan") then
      pending("ASan's runtime itself needs /proc (make asan)")
      return
    end
    local ok = os.execute("unshare -m --propagation private true 2>/dev/null")
    if ok ~= true and ok ~= 0 then
      pending("needs unshare -m (root) to hide /proc")
      return
    end
    local exe = require("cluster.core").exe_path()
    local cmd = ("%s='%s' %s='%s' unshare -m --propagation private sh -c "
      .. "'mount -t tmpfs none /proc && exec \"$0\" \"$@\"' '%s' '%s' noproc")
      :format(helper.path_var, package.path, helper.cpath_var, package.cpath, exe, helper.fixture("pt_title"))
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    assert.matches("noproc nil set_proctitle: /proc/self/stat: No such file or directory ENOENT\n", out, 1, true)
    assert.matches("set nil set_proctitle: /proc/self/stat: No such file or directory\n", out, 1, true)
    assert.matches("arg pt_title.lua 1\n", out, 1, true)
  end)

  it("show a worker as 'luv-cluster worker <id> <script> <args>', its arg intact; a user's master keeps its own",
    function()
    local own = cmdline(compat.tointeger(uv.os_getpid()))
    util.setup({ exec = helper.fixture("pt_worker"), args = { "one", "two words" } })
    local w = util.fork()
    local want = ("luv-cluster worker %d pt_worker.lua one two words"):format(w.id)
    assert.is_true(wait_title(w.pid, want), "worker cmdline: " .. tostring(cmdline(w.pid)))
    assert.equal("luv-cluster", comm(w.pid))
    local got
    w:on("message", function(m) got = m end)
    w:send("title")
    assert.is_true(helper.wait(function() return got ~= nil end, 5000), "no answer from the worker")
    assert.equal(helper.fixture("pt_worker"), got.arg0)
    assert.same({ "one", "two words" }, got.args)
    assert.equal(want, got.cmdline)
    assert.equal("luv-cluster", got.comm)
    assert.equal(own, cmdline(compat.tointeger(uv.os_getpid())))
    assert.is_not.matches("^luv%-cluster", own)
  end)

  it("show the runner's master as 'luv-cluster master <script> <args>' and its workers likewise", function()
    local r = helper.spawn_lua(uv.cwd() .. "/bin/luv-cluster", { "-w", "1", "--boot-timeout", "5s",
      helper.fixture("sv_server"), "0" })
    finally(function()
      if not r.exited then uv.kill(r.pid, "sigkill") end
      helper.wait(function() return r.exited and r.eof end, 3000)
    end)
    local worker_pid
    local ok = helper.wait(function()
      for _, line in ipairs(r.lines) do
        local pid = line:match("%(pid (%d+)%) ready after")
        if pid then worker_pid = tonumber(pid) end
      end
      return worker_pid ~= nil or r.exited
    end, 5000)
    assert.is_true(ok and worker_pid ~= nil, "runner output:\n" .. table.concat(r.lines, "\n"))
    assert.is_true(wait_title(r.pid, "luv-cluster master sv_server.lua 0"), "master: " .. tostring(cmdline(r.pid)))
    assert.equal("luv-cluster", comm(r.pid))
    assert.is_true(wait_title(worker_pid, "luv-cluster worker 1 sv_server.lua 0"),
      "worker: " .. tostring(cmdline(worker_pid)))
    uv.kill(r.pid, "sigterm")
    assert.is_true(helper.wait(function() return r.exited and r.eof end, 5000), "runner did not stop")
    assert.equal(0, r.code)
    assert.is_true(helper.wait(function() return not helper.alive(worker_pid) end, 2000))
  end)
end)
