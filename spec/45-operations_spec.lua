-- bin/luv-cluster's operations beyond signals: workers recycled over
-- --max-memory (under load, counting every request) and past --max-age
-- (one at a time, each with its own jittered limit).
local helper = require("helper")
local uv = require("luv")

local util = dofile(helper.fixture("runner_util"))

local find, count, dump, port_of, ask = util.find, util.count, util.dump, util.port_of, util.ask
local wait_count, wait_exit, command, read = util.wait_count, util.wait_exit, util.command, util.read

-- Every runner here runs with util.FAST.
local function start(list)
  return util.start(util.fast(list))
end

-- Workers ready and not draining, replayed from the runner's lines; the
-- fewest there were at any point after `from` workers first were, up to
-- the stop.
local function fewest_serving(r, from)
  local serving, n, fewest, full = {}, 0, math.huge, false
  for _, l in ipairs(r.lines) do
    if l:find("stopping %d+ workers") then break end
    local pid = l:match("%(pid (%d+)%) ready after")
    if pid and not serving[pid] then serving[pid], n = true, n + 1 end
    pid = l:match("%(pid (%d+)%) draining") or l:match("%(pid (%d+)%) exited") or l:match("%(pid (%d+)%) killed")
    if pid and serving[pid] then serving[pid], n = nil, n - 1 end
    if n >= from then full = true end
    if full and n < fewest then fewest = n end
  end
  return fewest
end

describe("luv-cluster recycling", function()
  after_each(util.cleanup)

  it("rejects a bad --max-memory or --max-age, naming it", function()
    local r = start({ "--max-memory", "lots", helper.fixture("sv_server"), "0" })
    assert.equal(2, wait_exit(r))
    assert.equal("luv-cluster: --max-memory: expected a size such as 200M, 1G or a number of bytes, got 'lots'",
      r.err_lines[1])
    r = start({ "--max-age", "0", helper.fixture("sv_server"), "0" })
    assert.equal(2, wait_exit(r))
    assert.equal("luv-cluster: --max-age: expected a duration such as 500ms or 2s, got '0'", r.err_lines[1])
  end)

  it("replaces a worker over --max-memory (new one ready first) with no failed request under load", function()
    local r = start({ "-w", "2", "--max-memory", "40M", "--stop-timeout", "5s", helper.fixture("sv_server"), "0" })
    assert.is_true(wait_count(r, "ready after", 2, 5000), dump(r))
    local port = port_of(r)

    local load = util.load(r, port)
    -- Should an assertion fail, the clients end before the next case.
    finally(load.stop)

    -- Two recycles, one after the other: grow a worker, wait for its exit.
    local grown = {}
    for round = 1, 2 do
      local answer = assert(ask(port, "grow"))
      local pid = answer:match("^(%d+) grown$")
      assert.is_truthy(pid, answer)
      grown[#grown + 1] = pid
      assert.is_true(wait_count(r, "over %-%-max%-memory 40%.0M: replacing it", round, 5000), dump(r))
      assert.is_true(wait_count(r, "%(pid " .. pid .. "%) exited with code 0 after %d+ ms, recycle", 1, 8000), dump(r))
    end
    load.stop()

    local failed, report = load.report()
    print(("\n[max-memory] 2 recycles under load, outcomes: %s"):format(report))
    assert.equal(0, failed, report)
    assert.is_true(load.outcomes.ok > 20, "too few requests to mean anything")
    -- sv_server without a version file serves v1 only.
    assert.same({ v1 = load.outcomes.ok }, load.versions)
    for _, pid in ipairs(grown) do
      -- Its replacement was started and ready before it drained.
      local over = find(r, "%(pid " .. pid .. "%) uses [%d.]+M, over")
      local drain = find(r, "%(pid " .. pid .. "%) draining %(recycle%)")
      local started, line = find(r, "started %(recycle%) in slot", over)
      assert.is_truthy(over and drain and started, dump(r))
      local new = line:match("%(pid (%d+)%)")
      local ready = find(r, "%(pid " .. new .. "%) ready after", started)
      assert.is_true(started < drain and ready ~= nil and ready < drain, dump(r))
    end
    assert.equal(2, fewest_serving(r, 2), dump(r))
    assert.equal(0, count(r, "replacing worker %d+ %(pid %d+%) failed"))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r, 8000), dump(r))
  end)

  it("replaces workers past --max-age one at a time, each with its own limit in [T, 1.25 T]", function()
    local r = start({ "-w", "3", "--max-age", "1s", "--stop-timeout", "2s", helper.fixture("sv_server"), "0" })
    assert.is_true(wait_count(r, "ready after", 3, 5000), dump(r))
    -- Every first worker is replaced (and a few of their replacements).
    assert.is_true(wait_count(r, "draining %(recycle%)", 4, 15000), dump(r))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r, 8000), dump(r))
    local limits, distinct = {}, {}
    for _, l in ipairs(r.lines) do
      local age, limit = l:match("is ([%d.]+)s old, past its max age of ([%d.]+)s: replacing it")
      if limit then
        limit = tonumber(limit)
        assert.is_true(limit >= 1.0 and limit <= 1.25, l)
        assert.is_true(tonumber(age) >= limit - 0.01, l)
        limits[#limits + 1] = limit
        distinct[limit] = true
      end
    end
    assert.is_true(#limits >= 4, dump(r))
    local n = 0
    for _ in pairs(distinct) do n = n + 1 end
    assert.is_true(n > 1, "every worker drew the same age limit: " .. table.concat(limits, " "))
    -- Never fewer than 3 serving: each new worker was ready before the
    -- old one drained, and one slot was replaced at a time.
    assert.equal(3, fewest_serving(r, 3), dump(r))
    assert.equal(0, count(r, "failed"))
  end)
end)

-- sv:replace in this process: one slot's worker replaced by the reload
-- step, serialized with reloads, and a failed replacement that leaves the
-- old worker serving.
describe("sv:replace", function()
  local supervise = require("cluster.supervise")
  local tmp, version_file, sv, events

  local function set_version(v) util.set_version(version_file, v) end

  local function index_of(name, fields, from)
    for i = from or 1, #events do
      local ev, ok = events[i], events[i].event == name
      for k, v in pairs(fields or {}) do if ev[k] ~= v then ok = false end end
      if ok then return i, ev end
    end
  end

  before_each(function()
    tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-replace-XXXXXX"))
    version_file = tmp .. "/version"
    set_version("v1")
    events = {}
    sv = supervise.start({ exec = helper.fixture("sv_server"), args = { "0", version_file }, workers = 2,
      boot_timeout = 2000, stop_timeout = 2000, heartbeat = false,
      on_event = function(ev) events[#events + 1] = ev end })
    assert.is_true(helper.wait(function() return #sv:workers() == 2 and sv:stats()[2].state == "ready" end, 5000))
    helper.wait(function() return sv:stats()[1].state == "ready" end, 5000)
  end)

  after_each(function()
    local done = false
    sv:stop({ immediate = true }, function() done = true end)
    assert.is_true(helper.wait(function() return done end, 5000))
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  it("checks its arguments", function()
    assert.has_error(function() sv:replace("1") end, "cluster.supervise: replace: slot must be an integer (got 1)")
    assert.has_error(function() sv:replace(1, 5) end, "cluster.supervise: replace: reason must be a string")
    assert.has_error(function() sv:replace(1, "x", {}, 5) end,
      "cluster.supervise: replace: callback must be a function")
    assert.same({ nil, "no worker serving slot 7" }, { sv:replace(7) })
  end)

  it("replaces one slot's worker, the new one ready before the old one drains; a reload waits for it", function()
    local old1, old2 = sv:workers()[1].pid, sv:workers()[2].pid
    local results = {}
    local function note(what) return function(ok, err) results[#results + 1] = { what, ok, err } end end
    assert.is_true(sv:replace(2, "test", { note = "hi" }, note("replace")))
    sv:reload(note("reload"))
    assert.is_true(helper.wait(function() return #results == 2 end, 8000))
    assert.same({ { "replace", true }, { "reload", true } }, results)
    local i_rec, rec = index_of("recycle")
    assert.same({ "test", "hi", old2, 2 }, { rec.reason, rec.note, rec.pid, rec.slot })
    local i_spawn, spawn = index_of("spawn", { reason = "recycle" })
    local i_ready = index_of("ready", { pid = spawn.pid })
    local i_drain = index_of("draining", { reason = "recycle", pid = old2 })
    local i_start = index_of("reload_start")
    -- New worker ready, then the old one drains, then the reload starts.
    assert.is_true(i_rec < i_spawn and i_spawn < i_ready and i_ready < i_drain and i_drain < i_start)
    assert.not_equal(old1, sv:workers()[1].pid)
  end)

  it("skips a worker a reload replaced before its turn", function()
    local results = {}
    local function note(what) return function(ok, err) results[#results + 1] = { what, ok, err } end end
    sv:reload(note("reload"))
    assert.is_true(sv:replace(2, note("replace")))
    assert.is_true(helper.wait(function() return #results == 2 end, 8000))
    assert.same({ { "reload", true }, { "replace", false, "gone" } }, results)
    assert.is_nil(index_of("spawn", { reason = "recycle" }))
  end)

  it("leaves the old worker serving when the new one fails", function()
    local old = sv:workers()[1].pid
    set_version("crash")
    local result
    assert.is_true(sv:replace(1, "test", function(ok, err) result = { ok, err } end))
    assert.is_true(helper.wait(function() return result ~= nil end, 5000))
    assert.same({ false, "exited before ready (code 1)" }, result)
    local _, abort = index_of("recycle_abort")
    assert.equal(old, abort.pid)
    assert.equal(old, sv:workers()[1].pid)
    assert.is_nil(index_of("draining"))
  end)
end)

-- The control socket (--control PATH) and the commands that use it.
describe("luv-cluster --control", function()
  local tmp, path

  before_each(function()
    tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-control-XXXXXX"))
    path = tmp .. "/control.sock"
  end)

  after_each(function()
    util.cleanup()
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  local function runner(workers)
    local r = start({ "-w", tostring(workers), "--control", path, helper.fixture("sv_server"), "0" })
    assert.is_true(wait_count(r, "ready after", workers, 5000), dump(r))
    return r
  end

  it("answers status (text and --json), scale N, reload and stop; the socket is 0600 and gone at exit", function()
    local r = runner(2)
    local st = assert(uv.fs_lstat(path))
    assert.equal("socket", st.type)
    assert.equal(tonumber("600", 8), st.mode % 512)

    local code, out = command({ "status", "--control", path })
    assert.equal(0, code)
    assert.matches("^slot%s+id%s+pid%s+state", out[1])
    assert.equal(3, #out)
    assert.matches("^1%s+1%s+%d+%s+ready", out[2])

    code, out = command({ "status", "--control=" .. path, "--json" })
    assert.equal(0, code)
    assert.equal(1, #out)
    assert.matches('^{"event":"stats","workers":%[{.*"state":"ready".*}%]}$', out[1])

    code, out = command({ "scale", "3", "--control", path })
    assert.same({ 0, { "scaling to 3 workers" } }, { code, out })
    assert.is_true(wait_count(r, "ready after", 3, 5000), dump(r))
    code, out = command({ "status", "--control", path })
    assert.same({ 0, 4 }, { code, #out })

    code, out = command({ "reload", "--control", path })
    -- Answered once the reload is done.
    assert.same({ 0, { "reload done (1 so far)" } }, { code, out })
    assert.equal(1, count(r, "reload done"))

    code, out = command({ "stop", "--control", path })
    assert.same({ 0, { "stopping 3 workers" } }, { code, out })
    assert.equal(0, wait_exit(r, 5000), dump(r))
    assert.is_nil(uv.fs_lstat(path))

    -- Nobody there now: exit 1 and why.
    local err
    code, out, err = command({ "status", "--control", path })
    assert.equal(1, code)
    assert.same({}, out)
    assert.equal("luv-cluster: cannot connect to " .. path .. ": ENOENT", err[1])
  end)

  it("answers an error for a bad command, exit 1; usage errors exit 2", function()
    runner(1)
    local code, out, err = command({ "scale", "0", "--control", path })
    assert.same({ 2, {} }, { code, out })
    assert.equal("luv-cluster: scale: expected an integer >= 1, got '0'", err[1])
    local _
    code, _, err = command({ "status" })
    assert.equal(2, code)
    assert.equal("luv-cluster: status: --control PATH (the runner's control socket) is required", err[1])
    -- A raw client sending what the command line would not.
    local answer
    require("cluster.control").request(path, "frobnicate now", function(ok, text) answer = { ok, text } end)
    assert.is_true(helper.wait(function() return answer ~= nil end, 3000))
    assert.same({ false, "unknown command 'frobnicate now' (status [json], reload, stop, scale N, upgrade)" }, answer)
  end)

  it("takes over a socket file left by a killed runner, refuses a live one", function()
    local first = runner(1)
    -- A second runner on the same path while the first one serves.
    local second = start({ "-w", "1", "--control", path, helper.fixture("sv_server"), "0" })
    assert.equal(2, wait_exit(second))
    assert.equal("luv-cluster: control socket " .. path .. " is in use (is another runner running?)",
      second.err_lines[1])
    assert.equal(0, (command({ "status", "--control", path }))) -- the first one still answers

    -- SIGKILL: no cleanup, the socket file stays.
    uv.kill(first.pid, "sigkill")
    assert.is_true(helper.wait(function() return first.exited end, 3000))
    for _, pid in ipairs(first.pids) do
      assert.is_true(helper.wait(function() return not helper.alive(pid) end, 3000))
    end
    assert.equal("socket", assert(uv.fs_lstat(path)).type)
    runner(1)
    local code, out = command({ "status", "--control", path })
    assert.equal(0, code)
    assert.equal(2, #out)
  end)

  it("refuses a path that is not a socket, leaving the file alone", function()
    local f = assert(io.open(path, "w"))
    f:write("precious\n")
    f:close()
    local r = start({ "-w", "1", "--control", path, helper.fixture("sv_server"), "0" })
    assert.equal(2, wait_exit(r))
    assert.equal("luv-cluster: control socket path " .. path .. " exists and is not a socket; not removing it",
      r.err_lines[1])
    f = assert(io.open(path))
    assert.equal("precious\n", f:read("*a"))
    f:close()
  end)
end)

-- --pid-file FILE: the runner's pid while it runs, gone after.
describe("luv-cluster --pid-file", function()
  local tmp
  before_each(function() tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-pidfile-XXXXXX")) end)
  after_each(function()
    util.cleanup()
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  it("holds the runner's pid while it runs and is removed at a stop", function()
    local file = tmp .. "/run/app.pid"
    assert(uv.fs_mkdir(tmp .. "/run", tonumber("755", 8)))
    local r = start({ "-w", "1", "--pid-file", file, helper.fixture("sv_server"), "0" })
    assert.is_true(wait_count(r, "ready after", 1, 5000), dump(r))
    assert.equal(r.pid .. "\n", read(file))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r, 5000))
    assert.is_nil(read(file))
    -- Nothing else was left in its directory (no temp file).
    assert.is_nil(uv.fs_scandir_next(assert(uv.fs_scandir(tmp .. "/run"))))
  end)

  it("leaves a pid file that names another process alone at exit", function()
    local file = tmp .. "/app.pid"
    local r = start({ "-w", "1", "--pid-file", file, helper.fixture("sv_server"), "0" })
    assert.is_true(wait_count(r, "ready after", 1, 5000), dump(r))
    local f = assert(io.open(file, "w"))
    f:write("1\n")
    f:close()
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r, 5000))
    assert.equal("1\n", read(file))
  end)

  it("stops with status 2 when the file cannot be written", function()
    local r = start({ "-w", "1", "--pid-file", tmp .. "/no/such/dir.pid", helper.fixture("sv_server"), "0" })
    assert.equal(2, wait_exit(r))
    assert.matches("^luv%-cluster: %-%-pid%-file: cannot write " .. tmp:gsub("%p", "%%%0") .. "/no/such/dir%.pid: ",
      r.err_lines[1])
    assert.same({}, r.pids)
  end)
end)
