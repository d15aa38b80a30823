-- The runner's config file (luv-cluster -c FILE): options, script and args
-- read from it, the command line winning; bad files stop the runner with
-- exit 2 and a message naming the file; the master function runs once,
-- before the first worker forks, and survives reloads; the shared-counter
-- example (examples/shared_counter/). Also supervise's on_start option,
-- which the master function is built on.
local helper = require("helper")
local uv = require("luv")
local cluster = require("cluster")
local supervise = require("cluster.supervise")
local util = dofile(helper.fixture("runner_util"))

local start, fast, find, count, dump, port_of, ask = util.start, util.fast, util.find, util.count, util.dump,
  util.port_of, util.ask
local wait_line, wait_count, wait_exit = util.wait_line, util.wait_count, util.wait_exit

local EXAMPLE = uv.cwd() .. "/examples/shared_counter/luv-cluster.conf.lua"

local tmpdir

local function write(name, text)
  local path = tmpdir .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- Lua pattern matching `s` literally.
local function literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- One exchange on a new connection: what came back once the server
-- closes, or nil and an error.
local function exchange(port, request)
  local c = uv.new_tcp()
  local res, buf = {}, ""
  c:connect("127.0.0.1", port, function(err)
    if err then res.err = err; c:close(); return end
    c:write(request)
    c:read_start(function(e, data)
      if data then buf = buf .. data; return end
      if e then res.err = e else res.all = buf end
      if not c:is_closing() then c:close() end
    end)
  end)
  helper.wait(function() return res.err or res.all end, 3000)
  if not c:is_closing() then c:close() end
  if res.all then return res.all end
  return nil, res.err or "timeout"
end

-- GET / from the shared-counter example: count, worker id, or nil and
-- what came back.
local function get_count(port)
  local all, err = exchange(port, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
  local n, id = (all or ""):match("\r\n\r\nrequest #(%d+), served by worker (%d+) ")
  if not n then return nil, all or err end
  return tonumber(n), tonumber(id)
end

describe("luv-cluster -c FILE (the runner's config file)", function()
  setup(function() tmpdir = assert(uv.fs_mkdtemp("/tmp/luv-cluster-cfg-XXXXXX")) end)
  teardown(function() os.execute("rm -rf '" .. tmpdir .. "'") end)

  after_each(util.cleanup)

  it("reads options, the script (relative to the file) and its args from the file", function()
    local r = start({ "-c", helper.fixture("cfg_workers") })
    assert.is_true(wait_count(r, "ready after", 2), dump(r))
    assert.equal(2, count(r, "started in slot"))
    assert.matches("^%d+ v1$", ask(port_of(r)))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
    -- stop_timeout = 2000
    assert.is_truthy(find(r, "stopping 2 workers %(graceful, up to 2000 ms%)"), dump(r))
  end)

  it("options on the command line win over the file's, a script given there with its args too", function()
    write("version", "v7\n")
    local r = start({ "-w", "3", "--stop-timeout=1s", "--config", helper.fixture("cfg_workers"),
      helper.fixture("sv_server"), "0", tmpdir .. "/version" })
    assert.is_true(wait_count(r, "ready after", 3), dump(r))
    assert.equal(3, count(r, "started in slot"))
    assert.matches("^%d+ v7$", ask(port_of(r)))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
    assert.is_truthy(find(r, "stopping 3 workers %(graceful, up to 1000 ms%)"), dump(r))
  end)

  it("takes flags as booleans (json = true)", function()
    local conf = write("json.lua", ("return { script = %q, workers = 1, json = true, heartbeat_interval = 0 }")
      :format(helper.fixture("ready")))
    local r = start({ "-c", conf })
    assert.is_truthy(wait_line(r, '^{"event":"ready",'), dump(r))
    assert.matches('^{"event":"spawn",', r.lines[1])
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
  end)

  -- A file that cannot be used: exit 2, nothing on stdout, one line on
  -- stderr naming the file (and the key).
  for _, case in ipairs({
    { "syntax error", "return {\n  workers = \n", ":3: unexpected symbol near '?<eof>'?" },
    { "raises", "error('no config today')", ":1: no config today" },
    { "returns a number", "return 42", ": expected the file to return a table, got number" },
    { "returns nothing", "local x = 1", ": expected the file to return a table, got nil" },
    { "unknown key", "return { bogus = 1 }", ": unknown key 'bogus'" },
    { "a bad balance", "return { balance = 'fastest' }",
      ": balance: expected roundrobin, leastconn or source, got 'fastest'" },
    { "a dashed key", "return { ['stop-timeout'] = '1s' }",
      ": unknown key 'stop%-timeout' %(the key is stop_timeout%)" },
    { "a list item", "return { 'app.lua' }", ": unknown key %[1%]" },
    { "help", "return { help = true }", ": 'help' is a command%-line option, not valid in a config file" },
    { "config", "return { config = 'other.lua' }", ": 'config' is a command%-line option" },
    { "workers = 0", "return { workers = 0 }", ": workers: expected an integer >= 1, got '0'" },
    { "workers = 2.5", "return { workers = 2.5 }", ": workers: expected an integer >= 1, got '2.5'" },
    { "workers = {}", "return { workers = {} }", ": workers: expected an integer >= 1, got a table" },
    { "a bad duration", "return { stop_timeout = 'soon' }",
      ": stop_timeout: expected a duration such as 500ms or 2s, got 'soon'" },
    { "heartbeat_timeout = 0", "return { heartbeat_timeout = 0 }", ": heartbeat_timeout: expected a duration" },
    { "a negative duration", "return { boot_timeout = -1 }", ": boot_timeout: expected a duration" },
    { "a flag that is not a boolean", "return { quiet = 'yes' }", ": quiet: expected true or false, got 'yes'" },
    { "a bad policy", "return { policy = 'fast' }", ": policy: expected rr, shared or reuseport, got 'fast'" },
    { "a bad backoff factor", "return { backoff_factor = 0.5 }",
      ": backoff_factor: expected a number >= 1, got '0.5'" },
    { "no such user", "return { user = 'no-such-user-here' }", ": user: no such user 'no%-such%-user%-here'" },
    { "master not a function", "return { master = 'x' }", ": master: expected a function, got 'x'" },
    { "args not a list", "return { args = 'x' }", ": args: expected a list of strings, got 'x'" },
    { "args holding a table", "return { args = { 'a', {} } }", ": args: expected a list of strings, got a table" },
    { "script not a string", "return { script = true }", ": script: expected a file name, got 'true'" },
  }) do
    it("exits 2 naming the file: " .. case[1], function()
      local conf = write("bad.lua", case[2])
      local code, out, err = util.run_once({ "-c", conf, helper.fixture("ready") })
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("^luv%-cluster: " .. literal(conf) .. case[3], err)
      assert.matches("Try 'luv%-cluster %-%-help'%.\n$", err)
    end)
  end

  for _, case in ipairs({
    { "a missing file", function() return { "-c", tmpdir .. "/none.lua", "x.lua" } end,
      function() return "cannot open config file: " .. literal(tmpdir) .. "/none%.lua: No such file" end },
    { "-c without a file", function() return { "-c" } end, function() return "%-c: missing value" end },
    { "a script missing beside the file",
      function() return { "-c", write("s.lua", "return { script = 'gone.lua' }") } end,
      function() return "cannot open script: " .. literal(tmpdir) .. "/gone%.lua: No such file" end },
    { "no script anywhere", function() return { "-c", write("e.lua", "return { workers = 1 }") } end,
      function()
        return "no script given %(on the command line or as script in " .. literal(tmpdir) .. "/e%.lua%)"
      end },
  }) do
    it("exits 2 on " .. case[1], function()
      local code, out, err = util.run_once(case[2]())
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("^luv%-cluster: " .. case[3](), err)
    end)
  end

  it("--help shows -c", function()
    local r = start({ "--help" })
    assert.equal(0, wait_exit(r))
    assert.is_truthy(find(r, "^  %-c, %-%-config FILE "))
  end)

  it("calls the master function once, before the first worker forks; it survives a reload", function()
    local r = start({ "-c", helper.fixture("cfg_hook") })
    assert.is_true(wait_count(r, "ready after", 2), dump(r))
    -- Nothing was forked when it ran; the slots were there.
    assert.equal("hook: isMaster true, size 2, serving 0, cluster.workers 0, policy rr", r.lines[1], dump(r))
    assert.is_true(find(r, "^hook:") < find(r, "started in slot"))
    assert.equal(2, count(r, "^hook saw spawn"))
    -- Its listeners run protected: a raising one is reported (on stderr,
    -- a pipe of its own: waited for), nothing stops.
    local reported = "cluster: error in a 'ready' listener: [^\n]*cfg_hook%.lua:%d+: a failing listener"
    assert.is_true(helper.wait(function() return util.err(r):find(reported) ~= nil end), dump(r))
    uv.kill(r.pid, "sighup")
    assert.is_truthy(wait_line(r, "reload done %(1 so far%)"), dump(r))
    assert.equal(1, count(r, "^hook:"))
    assert.equal(4, count(r, "^hook saw spawn"))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
  end)

  it("a master function that raises stops the runner (exit 2), leaving no worker", function()
    local r = start({ "-c", helper.fixture("cfg_hook_error") })
    assert.equal(2, wait_exit(r), dump(r))
    -- The one worker it started itself (sv:add) was killed.
    assert.is_truthy(find(r, "started %(scale up%) in slot 3"), dump(r))
    assert.equal(1, #r.pids)
    assert.is_nil(find(r, "in slot [12]"))
    assert.matches("^luv%-cluster: " .. literal(helper.fixture("cfg_hook_error"))
      .. ": the master function raised an error: [^\n]*cfg_hook_error%.lua:%d+: no database\nstack traceback:",
      util.err(r))
    -- after_each: every worker pid printed is gone.
  end)

  it("without a master function, says once that nothing answers the workers' messages", function()
    local r = start(fast({ "-w", "1", helper.fixture("cfg_sender") }))
    assert.is_truthy(wait_line(r, "ready after"), dump(r))
    assert.is_true(helper.wait(function() return #r.err_lines > 0 end), dump(r))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
    assert.matches("^luv%-cluster: worker %d+ sent the master a message, but nothing here answers it: "
      .. "under the runner the script's isMaster branch never runs; "
      .. ".*%(%-c FILE, see docs/runner%-config%.md%)\n$", util.err(r))
  end)

  it("runs examples/shared_counter: the count is shared by the workers and kept across a reload", function()
    local r = start(fast({ "-c", EXAMPLE }), { env = { "PORT=0" } })
    assert.is_true(wait_count(r, "ready after", 2), dump(r))
    local port = port_of(r)
    -- Round robin: consecutive connections go to the two workers in turn.
    local served, n = {}, 0
    for _ = 1, 4 do
      local got, id = get_count(port)
      n = n + 1
      assert.equal(n, got, id)
      served[id] = true
    end
    local before = {}
    for id in pairs(served) do before[#before + 1] = id end
    assert.equal(2, #before)

    uv.kill(r.pid, "sighup")
    assert.is_truthy(wait_line(r, "reload done %(1 so far%)"), dump(r))
    assert.is_truthy(wait_line(r, "^shared_counter: 4 requests so far$"), dump(r))
    local after = {}
    for _ = 1, 4 do
      local got, id = get_count(port)
      n = n + 1
      assert.equal(n, got, id)
      assert.is_nil(served[id], "answered by a worker from before the reload")
      after[id] = true
    end
    local ids = 0
    for _ in pairs(after) do ids = ids + 1 end
    assert.equal(2, ids)
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r, 5000), dump(r))
  end)
end)

describe("cluster.supervise on_start", function()
  local sv

  after_each(function()
    if sv and sv.state ~= "stopped" then
      local done = false
      sv:stop({ immediate = true }, function() done = true end)
      helper.wait(function() return done end, 3000)
    end
    sv = nil
  end)

  it("is called once with the supervisor, after setup and before the first fork", function()
    local seen, calls = nil, 0
    sv = supervise.start({
      workers = 2, exec = helper.fixture("sv_server"), args = { "0" }, heartbeat = false,
      on_start = function(s)
        calls = calls + 1
        local forked = 0
        for _ in pairs(cluster.workers) do forked = forked + 1 end
        seen = { size = s:size(), serving = #s:workers(), forked = forked, spawns = 0 }
        s:on("spawn", function() seen.spawns = seen.spawns + 1 end)
      end,
    })
    assert.equal(1, calls)
    assert.same({ size = 2, serving = 0, forked = 0, spawns = 2 }, seen)
  end)

  it("an error it raises comes out of start, with no worker left running", function()
    local pid
    local ok, err = pcall(supervise.start, {
      workers = 1, exec = helper.fixture("sv_server"), args = { "0" }, heartbeat = { interval = 20, timeout = 1000 },
      on_start = function(s)
        s:on("spawn", function(ev) pid = ev.pid end)
        s:add()
        error({ reason = "no database" })
      end,
    })
    assert.is_false(ok)
    assert.same({ reason = "no database" }, err)
    assert.is_number(pid)
    assert.is_true(helper.wait(function()
      for _, w in pairs(cluster.workers) do if w.pid == pid then return false end end
      return not helper.alive(pid)
    end, 3000))
  end)

  it("must be a function", function()
    assert.has_error(function() supervise.start({ exec = "x.lua", on_start = 1 }) end,
      "cluster.supervise: 'on_start' must be a function")
  end)
end)
