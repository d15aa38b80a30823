-- Hot upgrade of the runner (luv-cluster upgrade, docs/runner.md#upgrade):
-- a TCP port under rr and shared, three upgrades in a row under load; a
-- new runner that fails leaves the old one serving; under reuseport, where
-- every worker has a listening socket of its own and the kernel resets what is
-- queued on one that closes unless net.ipv4.tcp_migrate_req is 1 (each
-- setting in a network namespace of its own, when root), and for a server
-- on a unix socket path under rr and shared: the path keeps answering, its
-- socket file stays while a runner serves it and goes with the last one.
-- A socket handed over stays open in the new runner while it runs; a new
-- runner refuses to upgrade before it has taken over.
--
-- The load is runner_util.load run by spec/fixtures/up_client.lua, a
-- process of its own: the reuseport cases need it in the runner's network
-- namespace (through nsenter), whose 127.0.0.1 this process cannot reach;
-- the unix socket cases use it too. (The rr and shared TCP cases run
-- runner_util.load in this process.) It counts every request's outcome.
local helper = require("helper")
local uv = require("luv")
local compat = require("cluster.compat")

local util = dofile(helper.fixture("runner_util"))

local find, count, dump, read, command, ask = util.find, util.count, util.dump, util.read, util.command, util.ask
local wait_count, wait_exit = util.wait_count, util.wait_exit

local MIGRATE_FILE = "/proc/sys/net/ipv4/tcp_migrate_req"
local UPGRADES = 3

-- Every runner here runs with util.FAST; prefix (optional): util.spawn's,
-- a network namespace.
local function start(list, prefix)
  return util.start(util.fast(list), { prefix = prefix })
end

-- Network namespaces ------------------------------------------------------

-- Whether a case can run in a network namespace of its own, or why not.
local netns_ok, netns_why
local function netns_available()
  if netns_ok == nil then
    netns_ok = false
    if uv.getuid() ~= 0 then
      netns_why = "needs root"
    else
      local ok = os.execute("command -v nsenter >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 && "
        .. "unshare --net true >/dev/null 2>&1")
      netns_ok = ok == true or ok == 0
      if not netns_ok then netns_why = "needs unshare --net, nsenter and ip" end
    end
  end
  return netns_ok, netns_why
end

-- The runner in a network namespace of its own, loopback up, with
-- tcp_migrate_req = migrate there; unshare and sh exec in place, so the
-- pid is the runner's.
local function netns_prefix(migrate)
  return { "unshare", "--net", "--", "/bin/sh", "-c",
    "ip link set lo up && echo " .. migrate .. " > " .. MIGRATE_FILE .. ' && exec "$@"', "sh" }
end

-- Into the network namespace of process pid (nsenter execs in place).
local function enter_prefix(pid)
  return { "nsenter", "--net=/proc/" .. pid .. "/ns/net", "--" }
end

-- tcp_migrate_req as process pid's network namespace has it.
local function migrate_of(pid)
  local p = io.popen("nsenter --net=/proc/" .. pid .. "/ns/net -- cat " .. MIGRATE_FILE .. " 2>/dev/null")
  local v = p and p:read("*l")
  if p then p:close() end
  return v
end

-- The cases -----------------------------------------------------------------

describe("luv-cluster upgrade (reuseport, unix sockets)", function()
  local tmp, control, pid_file, version_file, runners

  local function set_version(v) util.set_version(version_file, v) end

  before_each(function()
    tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-upgrade46-XXXXXX"))
    control, pid_file, version_file = tmp .. "/control.sock", tmp .. "/runner.pid", tmp .. "/version"
    set_version("v1")
    runners = {}
  end)

  after_each(function()
    -- The new runners are not our children: they are ended by the pids
    -- they reported. util.cleanup ends the rest (the load, the runners we
    -- started) and checks that every worker is gone.
    for _, pid in ipairs(runners) do
      if helper.alive(pid) then uv.kill(pid, "sigkill") end
    end
    util.cleanup()
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  -- The load, in the runner's network namespace when it has one of its own.
  local function start_client(where, prefix)
    return util.spawn(helper.fixture("up_client"), { where, 4, 60 }, { prefix = prefix })
  end

  -- The client stops (SIGTERM) and reports: kind -> count, and the failures' total.
  local function stop_client(c)
    uv.kill(c.pid, "sigterm")
    assert.is_true(helper.wait(function() return c.exited and c.eof end, 10000), "the load did not stop")
    assert.equal(0, c.code, util.err(c))
    local outcomes, failed = {}, 0
    for _, line in ipairs(c.lines) do
      local kind, n = line:match("^outcome (.-) (%d+)$")
      if kind then
        outcomes[kind] = tonumber(n)
        if kind ~= "ok" then failed = failed + tonumber(n) end
      end
    end
    assert.equal("done", c.lines[#c.lines])
    return outcomes, failed
  end

  local function report(outcomes)
    local list = {}
    for k, v in pairs(outcomes) do list[#list + 1] = k .. "=" .. v end
    table.sort(list)
    return table.concat(list, " ")
  end

  -- Upgrade k (to version "v<k+1>") of the runner with pid current, through
  -- the control socket: the command answers with the new runner's pid, the
  -- old runner is gone (the first, r, with status 0) and the pid file
  -- names the new one. Returns the new runner's pid and its version.
  local function upgrade_step(r, k, current)
    local version = "v" .. (k + 1)
    set_version(version)
    local code, out, err = command({ "upgrade", "--control", control })
    assert.equal(0, code, table.concat(err, "\n") .. "\n" .. dump(r))
    local new_pid = compat.tointeger(tonumber(out[1]:match("^upgraded: the new runner is pid (%d+)$")))
    assert.is_truthy(new_pid, out[1])
    runners[#runners + 1] = new_pid
    assert.is_true(helper.wait(function() return not helper.alive(current) end, 10000), dump(r))
    if k == 1 then
      assert.is_true(helper.wait(function() return r.exited end, 3000))
      assert.equal(0, r.code, dump(r))
    end
    assert.equal(new_pid .. "\n", read(pid_file))
    return new_pid, version
  end

  -- UPGRADES upgrades in a row under load through the control socket; after
  -- each, the old runner is gone (the first with status 0), the pid file
  -- names the new one, and the new version answers after the old runner's
  -- exit. Then a stop through the control socket: every process the lines
  -- named is gone, and the pid file, the control socket and (for a unix
  -- socket) its file too. Returns the load's outcomes, failures and the
  -- first runner (its output is every runner's).
  -- o: policy, path (a unix socket) or nil (a TCP port), prefix (netns),
  -- on_start(pid) called once the first runner is ready.
  local function upgrades_under_load(o)
    local where = o.path or tostring(helper.free_port())
    local r = start({ "-w", "2", "--policy", o.policy, "--control", control, "--pid-file", pid_file,
      "--stop-timeout", "5s", helper.fixture("sv_server"), where, version_file }, o.prefix)
    assert.is_true(wait_count(r, "ready after", 2, 5000), dump(r))
    assert.equal(r.pid .. "\n", read(pid_file))
    if o.on_start then o.on_start(r.pid) end
    local c = start_client(where, o.prefix and enter_prefix(r.pid))
    assert.is_true(helper.wait(function() return find(c, "^answered v1 20$") end, 5000),
      table.concat(c.lines, "\n") .. "\n" .. util.err(c))

    local current = r.pid
    for k = 1, UPGRADES do
      local new_pid, version = upgrade_step(r, k, current)
      -- The new version answers the load after the old runner has gone.
      local from = #c.lines + 1
      assert.is_true(helper.wait(function() return find(c, "^answered " .. version .. " %d+$", from) end,
        5000), dump(r))
      if o.path then
        local st = uv.fs_lstat(o.path)
        assert.equal("socket", st and st.type)
        assert.matches("^%d+ " .. version .. "$", (ask(o.path)))
      end
      current = new_pid
    end
    local outcomes, failed = stop_client(c)

    local code = command({ "stop", "--control", control })
    assert.equal(0, code)
    assert.is_true(helper.wait(function() return not helper.alive(current) and r.eof end, 10000), dump(r))
    for _, pid in ipairs(r.pids) do
      assert.is_true(helper.wait(function() return not helper.alive(pid) end, 3000), "process " .. pid .. " still runs")
    end
    assert.is_nil(read(pid_file))
    assert.is_nil(uv.fs_lstat(control))
    if o.path then assert.is_nil(uv.fs_lstat(o.path), "the socket file is left behind") end
    return outcomes, failed, r
  end

  for _, policy in ipairs({ "rr", "shared" }) do
    it("keeps a unix socket path answering through three upgrades, with no failed request (" .. policy .. ")",
      function()
        local path = tmp .. "/app.sock"
        local outcomes, failed = upgrades_under_load({ policy = policy, path = path })
        print(("\n[upgrade, unix socket, %s] %s"):format(policy, report(outcomes)))
        assert.equal(0, failed, report(outcomes))
        assert.is_true(outcomes.ok > 0)
        -- The path is free again: a new runner serves it.
        set_version("v9")
        local r = start({ "-w", "1", "--policy", policy, helper.fixture("sv_server"), path, version_file })
        assert.is_true(wait_count(r, "ready after", 1, 5000), dump(r))
        assert.matches("^%d+ v9$", (ask(path)))
        uv.kill(r.pid, "sigterm")
        assert.is_true(helper.wait(function() return r.exited end, 5000))
        assert.equal(0, r.code, dump(r))
        assert.is_nil(uv.fs_lstat(path))
      end)
  end

  it("leaves a unix socket path to the old runner when the new one's workers fail", function()
    local path = tmp .. "/app.sock"
    local r = start({ "-w", "2", "--control", control, "--pid-file", pid_file, "--crash-deaths", "2",
      helper.fixture("sv_server"), path, version_file })
    assert.is_true(wait_count(r, "ready after", 2, 5000), dump(r))
    set_version("crash")
    local code, _, err = command({ "upgrade", "--control", control })
    assert.equal(1, code)
    assert.matches("upgrade failed: the new runner exited with code 3 before it was ready", err[1])
    local _, line = find(r, "upgrade: new runner %(pid %d+%)")
    local new_pid = compat.tointeger(tonumber(line:match("%(pid (%d+)%)")))
    runners[#runners + 1] = new_pid
    assert.is_false(helper.alive(new_pid))
    -- Its crashing workers let go of the socket: its file stays, and serves.
    local st = uv.fs_lstat(path)
    assert.equal("socket", st and st.type)
    assert.matches("^%d+ v1$", (ask(path)))
    assert.equal(r.pid .. "\n", read(pid_file))
    -- The old runner still owns it: gone with it.
    uv.kill(r.pid, "sigterm")
    assert.is_true(helper.wait(function() return r.exited end, 5000))
    assert.equal(0, r.code, dump(r))
    assert.is_nil(uv.fs_lstat(path))
  end)

  it("removes at exit the unix socket path a new version no longer serves", function()
    local path, other = tmp .. "/app.sock", tmp .. "/other.sock"
    local r = start({ "-w", "2", "--control", control, "--pid-file", pid_file,
      helper.fixture("sv_server"), path, version_file })
    assert.is_true(wait_count(r, "ready after", 2, 5000), dump(r))
    set_version("v2 " .. other)
    local code, out = command({ "upgrade", "--control", control })
    assert.equal(0, code, dump(r))
    local new_pid = compat.tointeger(tonumber(out[1]:match("pid (%d+)$")))
    runners[#runners + 1] = new_pid
    assert.is_true(helper.wait(function() return not helper.alive(r.pid) end, 10000), dump(r))
    assert.matches("^%d+ v2$", (ask(other)))
    code = command({ "stop", "--control", control })
    assert.equal(0, code)
    assert.is_true(helper.wait(function() return not helper.alive(new_pid) and r.eof end, 10000), dump(r))
    assert.is_nil(uv.fs_lstat(other))
    assert.is_nil(uv.fs_lstat(path), "the socket file the new version did not take is left behind")
  end)

  -- The sockets an upgrade hands over stay open in the new runner while it
  -- runs: a worker that dies and binds again gets the same one, even while
  -- the old runner, draining, still holds it (a socket of its own would
  -- find the port taken).
  it("serves a port through a worker restart while the old runner still drains", function()
    local port = helper.free_port()
    local r = start({ "-w", "1", "--control", control, "--pid-file", pid_file, "--stop-timeout", "10s",
      helper.fixture("sv_server"), tostring(port), version_file })
    assert.is_true(wait_count(r, "ready after", 1, 5000), dump(r))
    -- A connection the old worker keeps open: the old runner drains until it closes.
    local line, err, keep = util.hold(port)
    assert.matches("^%d+ v1$", line, err)
    finally(function() if not keep:is_closing() then keep:close() end end)
    set_version("v2")
    local code, out = command({ "upgrade", "--control", control })
    assert.equal(0, code, dump(r))
    runners[#runners + 1] = compat.tointeger(tonumber(out[1]:match("pid (%d+)$")))
    assert.is_true(wait_count(r, "ready after", 2, 5000), dump(r))
    local at = find(r, "upgrade: new runner")
    local _, worker_line = find(r, "ready after", at)
    local new_worker = compat.tointeger(tonumber(worker_line:match("%(pid (%d+)%)")))
    uv.kill(new_worker, "sigkill")
    assert.is_true(wait_count(r, "ready after", 3, 5000), dump(r))
    assert.is_true(helper.alive(r.pid), "the old runner is still draining")
    line, err = ask(port)
    assert.matches("^%d+ v2$", line, err)
    assert.not_equal(tostring(new_worker), line:match("^%d+"))
    keep:close()
    assert.is_true(helper.wait(function() return r.exited end, 5000), dump(r))
    assert.equal(0, r.code, dump(r))
    code = command({ "stop", "--control", control })
    assert.equal(0, code)
    assert.is_true(helper.wait(function() return r.eof end, 10000), dump(r))
  end)

  -- The new runner serves the control socket as soon as it starts, so an
  -- `upgrade` sent while it is not ready yet reaches it. Were it to start
  -- an upgrade of its own, it would hand over and stop before it is ready:
  -- the first runner would take its upgrade for failed and go on serving,
  -- beside the newest runner.
  it("refuses a second upgrade while the new runner is still taking over", function()
    local port = helper.free_port()
    local r = start({ "-w", "2", "--control", control, "--pid-file", pid_file,
      helper.fixture("sv_server"), tostring(port), version_file })
    assert.is_true(wait_count(r, "ready after", 2, 5000), dump(r))
    -- The new runner's workers wait to bind while the hold file is there.
    local hold = version_file .. ".hold"
    assert(io.open(hold, "w")):close()
    finally(function() os.remove(hold) end)
    set_version("v2")
    local first = util.start({ "upgrade", "--control", control })
    -- Its workers start once it serves the control socket.
    assert.is_true(wait_count(r, "%) online$", 4, 5000), dump(r))
    local _, line = find(r, "upgrade: new runner %(pid %d+%)")
    local new_pid = compat.tointeger(tonumber(line:match("%(pid (%d+)%)")))
    runners[#runners + 1] = new_pid
    local code, _, err = command({ "upgrade", "--control", control })
    assert.equal(1, code, dump(r))
    assert.equal(("luv-cluster: this runner is still taking over from the one that started it (pid %d):"
      .. " no upgrade yet"):format(r.pid), err[1])
    assert.is_nil(find(r, "upgrade: new runner %(pid %d+%)", (find(r, "upgrade: new runner"))
      + 1), dump(r))
    -- SIGUSR2 to the old runner meanwhile is refused too, and says so.
    uv.kill(r.pid, "sigusr2")
    assert.is_true(helper.wait(function()
      for _, l in ipairs(r.err_lines) do
        if l == "luv-cluster: SIGUSR2 ignored: an upgrade is running already" then return true end
      end
    end, 5000), dump(r))
    -- The first upgrade goes on: the old runner leaves, the new one serves.
    os.remove(hold)
    assert.is_true(helper.wait(function() return first.exited and first.eof end, 10000))
    assert.equal(0, first.code, dump(r))
    assert.equal("upgraded: the new runner is pid " .. new_pid, first.lines[1])
    assert.is_true(helper.wait(function() return r.exited end, 10000), dump(r))
    assert.equal(0, r.code, dump(r))
    assert.equal(new_pid .. "\n", read(pid_file))
    assert.matches("^%d+ v2$", (ask(port)))
    -- Once it has taken over, it upgrades in turn.
    set_version("v3")
    local out
    code, out = command({ "upgrade", "--control", control })
    assert.equal(0, code, dump(r))
    runners[#runners + 1] = compat.tointeger(tonumber(out[1]:match("pid (%d+)$")))
    assert.is_true(helper.wait(function() return not helper.alive(new_pid) end, 10000), dump(r))
    assert.matches("^%d+ v3$", (ask(port)))
    code = command({ "stop", "--control", control })
    assert.equal(0, code)
    assert.is_true(helper.wait(function() return r.eof end, 10000), dump(r))
  end)

  -- reuseport: the new runner's workers bind sockets of their own beside
  -- the old ones; the old workers' sockets close when they stop.
  for _, migrate in ipairs({ "1", "0" }) do
    it("keeps a reuseport port answering through three upgrades (tcp_migrate_req = " .. migrate .. ")", function()
      local prefix
      local ok, why = netns_available()
      if ok then
        prefix = netns_prefix(migrate)
      elseif (read(MIGRATE_FILE) or ""):match("%d") ~= migrate then
        pending(why .. " to run with tcp_migrate_req = " .. migrate .. " in a network namespace of its own")
        return
      end
      local outcomes, failed, r = upgrades_under_load({ policy = "reuseport", prefix = prefix,
        on_start = function(pid) if prefix then assert.equal(migrate, migrate_of(pid)) end end })
      print(("\n[upgrade, reuseport, tcp_migrate_req = %s] %s"):format(migrate, report(outcomes)))
      assert.is_true(outcomes.ok > 0)
      local warned = util.err(r):find("tcp_migrate_req = 0") ~= nil
      if migrate == "1" then
        -- Connections queued on an old worker's socket move to a new one.
        assert.equal(0, failed, report(outcomes))
        assert.is_false(warned)
      else
        -- They are reset: a connect, the write of the request or the read
        -- of the answer fails with ECONNRESET (or EPIPE), or the connection
        -- ends first. Nothing is refused and nothing hangs: the port always
        -- has a listening socket. Each runner says so on stderr.
        for kind in pairs(outcomes) do
          assert.is_truthy(kind == "ok" or kind == "EOF before answer"
            or kind:match("^%l+ ECONNRESET$") or kind == "write EPIPE", report(outcomes))
        end
        assert.is_true(warned, dump(r))
      end
    end)
  end

  -- A TCP port under rr and shared.
  for _, policy in ipairs({ "rr", "shared" }) do
    it("hands the port to a new runner, three times, with no failed request under load (" .. policy .. ")", function()
      local port = helper.free_port()
      local r = start({ "-w", "2", "--policy", policy, "--control", control, "--pid-file", pid_file,
        "--stop-timeout", "5s", helper.fixture("sv_server"), tostring(port), version_file })
      assert.is_true(wait_count(r, "ready after", 2, 5000), dump(r))
      assert.equal(r.pid .. "\n", read(pid_file))

      local load = util.load(r, port)
      -- Should an assertion fail, the clients end before the next case.
      finally(load.stop)
      assert.is_true(helper.wait(function() return load.outcomes.ok > 20 end, 5000))

      -- Three generations: each upgrade's runner is upgraded in turn.
      local current, new_pid = r.pid, nil
      for k = 1, UPGRADES do
        local version
        new_pid, version = upgrade_step(r, k, current)
        local before = load.versions[version] or 0
        assert.is_true(helper.wait(function() return (load.versions[version] or 0) > before + 20 end, 5000))
        current = new_pid
      end
      load.stop()

      local failed, summary = load.report()
      local per = {}
      for k = 1, UPGRADES + 1 do per[#per + 1] = ("v%d %d"):format(k, load.versions["v" .. k] or 0) end
      print(("\n[upgrade, %s] %d upgrades, outcomes: %s (%s)"):format(policy, UPGRADES, summary,
        table.concat(per, ", ")))
      assert.equal(0, failed, summary .. "\n" .. dump(r))
      assert.equal(UPGRADES, count(r, "upgrade: the new runner %(pid %d+%) is ready; this one stops"))

      -- The new runner answers on the same control socket, and stops.
      local code, out = command({ "status", "--control", control })
      assert.same({ 0, 3 }, { code, #out })
      code = command({ "stop", "--control", control })
      assert.equal(0, code)
      assert.is_true(helper.wait(function() return not helper.alive(new_pid) and r.eof end, 10000), dump(r))
      assert.is_nil(read(pid_file))
      assert.is_nil(uv.fs_lstat(control))
    end)
  end

  it("keeps the old runner serving when the new one's workers fail (SIGUSR2)", function()
    local port = helper.free_port()
    local r = start({ "-w", "1", "--control", control, "--pid-file", pid_file, "--crash-deaths", "2",
      helper.fixture("sv_server"), tostring(port), version_file })
    assert.is_true(wait_count(r, "ready after", 1, 5000), dump(r))
    set_version("crash")
    uv.kill(r.pid, "sigusr2")
    assert.is_true(wait_count(r, "upgrade failed: the new runner exited with code 3 before it was ready; "
      .. "this runner keeps serving", 1, 10000), dump(r))
    local _, line = find(r, "upgrade: new runner %(pid %d+%)")
    local new_pid = compat.tointeger(tonumber(line:match("%(pid (%d+)%)")))
    runners[#runners + 1] = new_pid
    assert.is_false(helper.alive(new_pid))
    assert.is_nil(r.exited)
    assert.equal(r.pid .. "\n", read(pid_file))
    assert.matches("^%d+ v1$", (ask(port)))
    -- The control socket is back.
    assert.is_true(helper.wait(function() return uv.fs_lstat(control) ~= nil end, 3000))
    local code, out = command({ "status", "--control", control })
    assert.same({ 0, 2 }, { code, #out })
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r, 5000), dump(r))
  end)
end)
