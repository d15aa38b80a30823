-- cluster.supervise: respawn with backoff and a crash-loop guard,
-- readiness and boot timeout, rolling reload (serialized, aborted on a
-- failed boot), graceful stop with a timeout, hang detection, scaling and
-- stats. Intervals are small so each case takes a fraction of a second.
local helper = require("helper")
local uv = require("luv")
local cluster = require("cluster")
local supervise = require("cluster.supervise")
local compat = require("cluster.compat")
-- For its ask, hold and set_version (spec/fixtures/sv_server.lua's).
local util = dofile(helper.fixture("runner_util"))

local tmpdir = assert(uv.fs_mkdtemp("/tmp/luv-cluster-sv-XXXXXX"))
local version_file = tmpdir .. "/version"

local function set_version(v) util.set_version(version_file, v) end

-- The running supervisor, the events it reported and every pid it started.
local sv, events, pids

local function start(opts)
  events, pids = {}, {}
  opts.workers = opts.workers or 2
  opts.boot_timeout = opts.boot_timeout or 3000
  opts.stop_timeout = opts.stop_timeout or 2000
  opts.heartbeat = opts.heartbeat or { interval = 20, timeout = 1000 }
  opts.backoff = opts.backoff or { initial = 10, factor = 1.5, max = 1000 }
  opts.on_event = function(ev)
    events[#events + 1] = ev
    if ev.event == "spawn" then pids[#pids + 1] = ev.pid end
  end
  sv = supervise.start(opts)
  return sv
end

local function matches(ev, name, fields)
  if ev.event ~= name then return false end
  for k, v in pairs(fields or {}) do
    if ev[k] ~= v then return false end
  end
  return true
end

local function find(name, fields, from)
  for i = from or 1, #events do
    if matches(events[i], name, fields) then return events[i], i end
  end
end

local function all(name, fields)
  local list = {}
  for _, ev in ipairs(events) do
    if matches(ev, name, fields) then list[#list + 1] = ev end
  end
  return list
end

local function wait_for(name, fields, timeout, from)
  helper.wait(function() return find(name, fields, from) ~= nil end, timeout or 3000)
  return find(name, fields, from)
end

local function wait_ready(n, timeout)
  return helper.wait(function()
    local ready = 0
    for _, row in ipairs(sv:stats()) do if row.state == "ready" then ready = ready + 1 end end
    return ready == n
  end, timeout or 3000)
end

local function port_of()
  local ev = assert(find("listening"), "no worker listened")
  return compat.tointeger(tonumber(ev.address:match(":(%d+)$")))
end

-- One request on a new connection: "ping\n" -> "<pid> <version>".
-- Returns the answer line, or nil and an error.
local ask = util.ask

local function pid_of(line)
  return line and compat.tointeger(tonumber(line:match("^(%d+)")))
end

describe("cluster.supervise", function()
  after_each(function()
    if sv and sv.state ~= "stopped" then
      sv:stop({ immediate = true })
      helper.wait(function() return sv.state == "stopped" end, 3000)
    end
    cluster.schedulingPolicy = "rr"
    -- No process of ours outlives its case.
    for _, pid in ipairs(pids or {}) do
      assert.is_true(helper.wait(function() return not helper.alive(pid) end, 2000), "pid " .. pid .. " still runs")
    end
    assert.same({}, helper.zombies())
    sv = nil
  end)

  teardown(function()
    os.remove(version_file)
    uv.fs_rmdir(tmpdir)
  end)

  it("rejects bad options with an error naming them", function()
    assert.error_matches(function() supervise.start({}) end, "'exec'")
    assert.error_matches(function() supervise.start({ exec = "x", workers = -1 }) end, "'workers'")
    assert.error_matches(function() supervise.start({ exec = "x", policy = "fast" }) end, "'policy'")
    assert.error_matches(function() supervise.start({ exec = "x", backoff = { factor = 0.5 } }) end, "backoff.factor")
    assert.error_matches(function() supervise.start({ exec = "x", boot_timeout = -3 }) end, "boot_timeout")
    assert.error_matches(function() supervise.start({ exec = "x", fd_reserve = -1 }) end, "'fd_reserve'")
    -- More workers than the fd limit leaves room for: refused before any fork.
    local soft = require("cluster.core").fd_limit()
    assert.error_matches(function() supervise.start({ exec = "x", workers = soft }) end,
      soft .. " workers need more file descriptors than the limit of " .. soft)
  end)

  it("starts N workers that are ready once listening, and reports stats", function()
    set_version("v1")
    start({ workers = 2, exec = helper.fixture("sv_server"), args = { "0", version_file } })
    assert.is_true(wait_ready(2))
    assert.equal(2, #all("ready"))
    -- Readiness came from 'listening', after 'spawn' and 'online'.
    local _, i_spawn = find("spawn")
    local _, i_online = find("online", { id = events[i_spawn].id })
    local _, i_ready = find("ready", { id = events[i_spawn].id })
    assert.is_true(i_spawn < i_online and i_online < i_ready)
    local line = ask(port_of())
    assert.matches("^%d+ v1$", line)
    -- Stats: one row per slot with pid, id, age, restarts, state, heartbeat, rss.
    assert.is_true(helper.wait(function()
      for _, row in ipairs(sv:stats()) do if not row.last_heartbeat then return false end end
      return true
    end))
    local rows = sv:stats()
    assert.equal(2, #rows)
    for i, row in ipairs(rows) do
      assert.equal(i, row.slot)
      assert.is_true(helper.alive(row.pid))
      assert.is_number(row.id)
      assert.is_true(row.age >= 0)
      assert.equal(0, row.restarts)
      assert.equal("ready", row.state)
      assert.is_true(row.last_heartbeat < 1000)
      assert.is_true(row.rss > 100000, "rss " .. tostring(row.rss))
    end
    local clean
    sv:stop(function(ok) clean = ok end)
    assert.is_true(helper.wait(function() return clean ~= nil end))
    assert.is_true(clean)
  end)

  it("a worker that calls cluster.ready() is ready without listening", function()
    start({ workers = 1, exec = helper.fixture("ready"), args = {} })
    assert.is_true(wait_ready(1))
    assert.is_nil(find("listening"))
  end)

  it("replaces a worker that dies on its own", function()
    set_version("v1")
    start({ workers = 2, exec = helper.fixture("sv_server"), args = { "0", version_file },
      crash = { deaths = 3, window = 0 } })
    assert.is_true(wait_ready(2))
    local victim = sv:stats()[1]
    uv.kill(victim.pid, "sigkill")
    local exit = wait_for("exit", { pid = victim.pid })
    assert.is_table(exit)
    assert.equal("SIGKILL", exit.signal)
    assert.is_false(exit.expected)
    -- Lived longer than the crash window: restarted at once, in its slot.
    assert.is_table(wait_for("backoff", { slot = 1, delay = 0 }))
    assert.is_table(wait_for("spawn", { slot = 1, reason = "restart" }))
    assert.is_true(wait_ready(2))
    local row = sv:stats()[1]
    assert.are_not.equal(victim.pid, row.pid)
    assert.equal(1, row.restarts)
    assert.equal(0, sv:stats()[2].restarts)
  end)

  it("backs off by the factor on a crash loop, then marks the slot errored", function()
    start({ workers = 1, exec = helper.fixture("sv_crash"), args = {},
      backoff = { initial = 10, factor = 1.5, max = 30 }, crash = { deaths = 5, window = 1000 } })
    assert.is_table(wait_for("errored", { slot = 1 }, 5000))
    local backoffs = all("backoff")
    local delays = {}
    for i, ev in ipairs(backoffs) do delays[i] = ev.delay end
    -- 10, 15, 22.5 and then capped at 30 (rounded to whole ms).
    assert.same({ 10, 15, 23, 30 }, delays)
    local exits = all("exit")
    assert.equal(5, #exits)
    for _, ev in ipairs(exits) do assert.equal(3, ev.code) end
    -- Each restart waited at least its delay after the death before it.
    local spawns = all("spawn")
    assert.equal(5, #spawns)
    for i = 1, 4 do
      assert.is_true(spawns[i + 1].time - exits[i].time >= delays[i] - 1,
        ("restart %d came %d ms after the death, delay %d"):format(i, spawns[i + 1].time - exits[i].time, delays[i]))
    end
    assert.is_table(find("all_errored"))
    assert.equal("errored", sv:stats()[1].state)
    -- And no more spawns: the slot is left alone.
    assert.is_false(helper.wait(function() return #all("spawn") > 5 end, 150))
  end)

  it("a reload gives an errored slot a new chance", function()
    set_version("crash")
    start({ workers = 1, exec = helper.fixture("sv_server"), args = { "0", version_file },
      crash = { deaths = 2, window = 1000 } })
    assert.is_table(wait_for("errored", { slot = 1 }, 3000))
    set_version("v1")
    local ok
    sv:reload(function(r) ok = r end)
    assert.is_true(helper.wait(function() return ok ~= nil end))
    assert.is_true(ok)
    assert.is_true(wait_ready(1))
    assert.matches("^%d+ v1$", ask(port_of()))
  end)

  it("a worker that never gets ready is killed after the boot timeout", function()
    set_version("noready")
    start({ workers = 1, exec = helper.fixture("sv_server"), args = { "0", version_file },
      boot_timeout = 100, crash = { deaths = 2, window = 1000 } })
    local ev = wait_for("boot_timeout", nil, 3000)
    assert.is_table(ev)
    local exit = wait_for("exit", { pid = ev.pid })
    assert.equal("SIGKILL", exit.signal)
    assert.equal("boot_timeout", exit.reason)
    assert.is_true(exit.uptime >= 100)
    -- Two failed boots in a row: the slot errors.
    assert.is_table(wait_for("errored", { slot = 1 }, 3000))
  end)

  it("kills a worker whose loop stops answering heartbeats, and replaces it", function()
    start({ workers = 1, exec = helper.fixture("sv_hang"), args = { "30" },
      heartbeat = { interval = 20, timeout = 120 }, crash = { deaths = 10, window = 0 } })
    local hang = wait_for("hang", nil, 3000)
    assert.is_table(hang)
    assert.is_true(hang.silent > 120)
    local exit = wait_for("exit", { pid = hang.pid })
    assert.equal("SIGKILL", exit.signal)
    assert.equal("hang", exit.reason)
    local respawn = wait_for("spawn", { slot = 1, reason = "restart" })
    assert.is_table(respawn)
    assert.is_table(wait_for("ready", { pid = respawn.pid }))
  end)

  it("a healthy worker is never taken for hung", function()
    start({ workers = 1, exec = helper.fixture("ready"), args = {}, heartbeat = { interval = 10, timeout = 150 } })
    assert.is_true(wait_ready(1))
    local row = sv:stats()[1]
    -- Several timeouts' worth of beats.
    assert.is_false(helper.wait(function() return find("hang") ~= nil end, 400))
    assert.equal(row.pid, sv:stats()[1].pid)
    assert.is_true(sv:stats()[1].last_heartbeat <= 150)
  end)

  it("a master that was late (its loop blocked) does not take its workers for hung or unready", function()
    local function block(ms)
      local t = uv.hrtime()
      while uv.hrtime() - t < ms * 1e6 do end
    end
    start({ workers = 2, exec = helper.fixture("ready"), args = {}, boot_timeout = 150,
      heartbeat = { interval = 20, timeout = 100 } })
    -- The workers boot while the master is stuck: their 'ready' is unread
    -- when the boot timers fire.
    block(400)
    assert.is_true(wait_ready(2))
    assert.is_nil(find("boot_timeout"))
    local before = { sv:stats()[1].pid, sv:stats()[2].pid }
    -- Pings went out, then the master is stuck past the heartbeat timeout;
    -- the pongs wait in the channel.
    assert.is_true(helper.wait(function() return sv:stats()[1].last_heartbeat < 20 end))
    block(300)
    assert.is_false(helper.wait(function() return find("hang") ~= nil end, 200))
    assert.same(before, { sv:stats()[1].pid, sv:stats()[2].pid })
  end)

  it("reloads one worker at a time: each new one ready before the old one goes", function()
    set_version("v1")
    start({ workers = 2, exec = helper.fixture("sv_server"), args = { "0", version_file } })
    assert.is_true(wait_ready(2))
    local old = { sv:stats()[1].pid, sv:stats()[2].pid }
    set_version("v2")
    local result
    sv:reload(function(ok, err) result = { ok, err } end)
    assert.is_true(helper.wait(function() return result ~= nil end))
    assert.same({ true }, result)
    local new = { sv:stats()[1].pid, sv:stats()[2].pid }
    for slot = 1, 2 do
      assert.are_not.equal(old[slot], new[slot])
      local _, i_ready = find("ready", { pid = new[slot] })
      local _, i_drain = find("draining", { pid = old[slot], reason = "reload" })
      assert.is_true(i_ready < i_drain, "slot " .. slot .. ": old worker let go before the new one was ready")
    end
    -- One at a time: slot 2's candidate starts after slot 1's old worker was let go.
    local _, i_drain1 = find("draining", { pid = old[1] })
    local _, i_spawn2 = find("spawn", { pid = new[2] })
    assert.is_true(i_drain1 < i_spawn2)
    assert.matches("^%d+ v2$", ask(port_of()))
    for _, pid in ipairs(old) do assert.is_table(wait_for("exit", { pid = pid, expected = true })) end
    assert.equal(1, sv.reloads)
  end)

  for _, broken in ipairs({ "crash", "noready" }) do
    it("aborts a reload whose new worker fails (" .. broken .. "); the old workers keep serving", function()
      set_version("v1")
      start({ workers = 2, exec = helper.fixture("sv_server"), args = { "0", version_file }, boot_timeout = 500 })
      assert.is_true(wait_ready(2))
      local old = { sv:stats()[1].pid, sv:stats()[2].pid }
      local port = port_of()
      set_version(broken)
      local result
      sv:reload(function(ok, err) result = { ok, err } end)
      assert.is_true(helper.wait(function() return result ~= nil end))
      assert.is_false(result[1])
      assert.matches(broken == "crash" and "exited before ready %(code 1%)" or "boot timeout", result[2])
      assert.is_table(find("reload_abort", { slot = 1 }))
      -- Only slot 1 was tried; nobody was drained; the old workers serve.
      assert.equal(1, #all("spawn", { reason = "reload" }))
      assert.is_nil(find("draining"))
      assert.same(old, { sv:stats()[1].pid, sv:stats()[2].pid })
      local seen = {}
      for _ = 1, 6 do
        local line = ask(port)
        assert.matches("^%d+ v1$", line)
        seen[pid_of(line)] = true
      end
      for pid in pairs(seen) do assert.is_true(pid == old[1] or pid == old[2]) end
      -- Fixed: the next reload goes through.
      set_version("v3")
      result = nil
      sv:reload(function(ok, err) result = { ok, err } end)
      assert.is_true(helper.wait(function() return result ~= nil end))
      assert.same({ true }, result)
      assert.matches("^%d+ v3$", ask(port))
    end)
  end

  it("serializes overlapping reloads (requests made meanwhile share the next one)", function()
    set_version("v1")
    start({ workers = 2, exec = helper.fixture("sv_server"), args = { "0", version_file } })
    assert.is_true(wait_ready(2))
    local results, errs = {}, {}
    for i = 1, 4 do sv:reload(function(ok, err) results[i], errs[i] = ok, err end) end
    assert.is_true(helper.wait(function() return #results == 4 end, 5000))
    assert.same({ true, true, true, true }, results, table.concat(errs, "; "))
    -- The first ran, the other three joined one queued reload.
    assert.equal(2, sv.reloads)
    local depth, max_depth = 0, 0
    for _, ev in ipairs(events) do
      if ev.event == "reload_start" then depth = depth + 1 end
      if ev.event == "reload_done" or ev.event == "reload_abort" then depth = depth - 1 end
      max_depth = math.max(max_depth, depth)
    end
    assert.equal(1, max_depth)
    assert.equal(4, #all("spawn", { reason = "reload" }))
    assert.is_true(wait_ready(2))
  end)

  it("a second replace of a worker whose step is running shares that step", function()
    set_version("v1")
    start({ workers = 1, exec = helper.fixture("sv_server"), args = { "0", version_file } })
    assert.is_true(wait_ready(1))
    local old = sv:workers()[1].pid
    local results = {}
    assert.is_true(sv:replace(1, "first", function(ok, err) results[#results + 1] = { "first", ok, err } end))
    -- The step has started: its new worker is booting.
    assert.is_truthy(find("spawn", { reason = "recycle" }))
    assert.is_true(sv:replace(1, "second", function(ok, err) results[#results + 1] = { "second", ok, err } end))
    assert.is_true(helper.wait(function() return #results == 2 end, 5000))
    assert.same({ { "first", true }, { "second", true } }, results)
    assert.equal(1, #all("recycle"))
    assert.equal(1, #all("spawn", { reason = "recycle" }))
    assert.not_equal(old, sv:workers()[1].pid)
  end)

  it("stops gracefully: every worker disconnects and exits, status clean", function()
    set_version("v1")
    start({ workers = 2, exec = helper.fixture("sv_server"), args = { "0", version_file } })
    assert.is_true(wait_ready(2))
    local clean, info
    sv:stop(function(ok, i) clean, info = ok, i end)
    assert.is_true(helper.wait(function() return clean ~= nil end))
    assert.is_true(clean)
    assert.equal(0, info.killed)
    assert.equal(2, #all("exit", { expected = true, code = 0 }))
    assert.is_nil(find("kill"))
    assert.equal("stopped", sv.state)
  end)

  it("stop with an open keep-alive connection: new connections refused, the worker killed at the timeout", function()
    set_version("v1")
    start({ workers = 1, exec = helper.fixture("sv_server"), args = { "0", version_file }, stop_timeout = 200 })
    assert.is_true(wait_ready(1))
    local port = port_of()
    -- c is closed once the other side has closed it.
    local held, held_err, c = util.hold(port)
    finally(function() helper.close(c) end)
    assert.matches("^%d+ v1$", held, held_err)
    local pid = pid_of(held)
    local clean, info
    local t0 = uv.now()
    local w = sv:workers()[1]
    sv:stop(function(ok, i) clean, info = ok, i end)
    -- Draining: once the worker has let its server go, the port takes no
    -- new connection.
    assert.is_true(helper.wait(function() return w.state == "disconnected" end))
    local line, err = ask(port)
    assert.is_nil(line)
    assert.matches("ECONNREFUSED", tostring(err))
    assert.is_false(c:is_closing())
    assert.is_true(helper.wait(function() return clean ~= nil end))
    assert.is_false(clean)
    assert.equal(1, info.killed)
    assert.is_true(uv.now() - t0 >= 190)
    assert.is_table(find("kill", { pid = pid, reason = "stop_timeout" }))
    assert.equal("SIGKILL", find("exit", { pid = pid }).signal)
    assert.is_true(helper.wait(function() return c:is_closing() end))
  end)

  it("stop({immediate = true}) kills at once", function()
    start({ workers = 2, exec = helper.fixture("sv_linger"), args = {}, stop_timeout = 5000 })
    assert.is_true(wait_ready(2))
    local clean, info
    local t0 = uv.now()
    sv:stop({ immediate = true }, function(ok, i) clean, info = ok, i end)
    assert.is_true(helper.wait(function() return clean ~= nil end, 1000))
    assert.is_false(clean)
    assert.equal(2, info.killed)
    assert.is_true(uv.now() - t0 < 1000)
  end)

  it("scales up and down; the newest worker leaves gracefully", function()
    start({ workers = 1, exec = helper.fixture("ready"), args = {} })
    assert.is_true(wait_ready(1))
    assert.equal(2, sv:add())
    assert.is_true(wait_ready(2))
    assert.equal(2, sv:size())
    local newest = sv:stats()[2].pid
    assert.equal(2, sv:remove())
    assert.equal(1, sv:size())
    assert.is_table(wait_for("draining", { pid = newest, reason = "scale" }))
    local exit = wait_for("exit", { pid = newest })
    assert.is_table(exit)
    assert.is_true(exit.expected)
    assert.equal(0, exit.code)
    -- Not replaced.
    assert.equal(1, #sv:stats())
    sv:scale(3)
    assert.is_true(wait_ready(3))
    assert.equal(3, #sv:stats())
  end)

  it("a worker that dies while its slot is being reloaded is replaced by the reload", function()
    set_version("v1")
    start({ workers = 1, exec = helper.fixture("sv_server"), args = { "0", version_file } })
    assert.is_true(wait_ready(1))
    local old = sv:stats()[1].pid
    local ok
    sv:reload(function(r) ok = r end)
    uv.kill(old, "sigkill")
    assert.is_true(helper.wait(function() return ok ~= nil end))
    assert.is_true(ok)
    assert.is_true(wait_ready(1))
    -- The reload's worker took the slot; no second replacement was started.
    assert.equal(1, #all("spawn", { reason = "reload" }))
    assert.equal(0, #all("spawn", { reason = "restart" }))
  end)

  it("works under the shared policy too", function()
    set_version("v1")
    start({ workers = 2, policy = "shared", exec = helper.fixture("sv_server"), args = { "0", version_file } })
    assert.is_true(wait_ready(2))
    assert.matches("^%d+ v1$", ask(port_of()))
    set_version("v2")
    local ok
    sv:reload(function(r) ok = r end)
    assert.is_true(helper.wait(function() return ok ~= nil end))
    assert.is_true(ok)
    assert.matches("^%d+ v2$", ask(port_of()))
  end)
end)
