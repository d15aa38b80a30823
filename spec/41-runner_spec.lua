-- bin/luv-cluster, run as a separate process: options, lifecycle lines,
-- signals (SIGHUP, SIGTERM, SIGINT twice, SIGTTIN/SIGTTOU, SIGUSR1), exit
-- status, privilege drop; and the reload load test (#load): clients count
-- every outcome while SIGHUP fires every 200 ms.
local helper = require("helper")
local uv = require("luv")
local util = dofile(helper.fixture("runner_util"))

local start, fast, find, count, dump, port_of, ask = util.start, util.fast, util.find, util.count, util.dump,
  util.port_of, util.ask
local wait_line, wait_count, wait_exit = util.wait_line, util.wait_count, util.wait_exit

-- A scratch directory per describe block (made in setup, gone in teardown).
local tmpdir, version_file

local function make_tmp()
  tmpdir = assert(uv.fs_mkdtemp("/tmp/luv-cluster-runner-XXXXXX"))
  version_file = tmpdir .. "/version"
end

local function remove_tmp()
  os.remove(version_file)
  uv.fs_rmdir(tmpdir)
end

local function set_version(v) util.set_version(version_file, v) end

local function fd_count(pid)
  local n = 0
  local req = uv.fs_scandir("/proc/" .. pid .. "/fd")
  if not req then return nil end
  while uv.fs_scandir_next(req) do n = n + 1 end
  return n
end

describe("luv-cluster (the runner)", function()
  -- Workers die with their master (and on a clean stop, before it).
  after_each(util.cleanup)

  setup(make_tmp)
  teardown(remove_tmp)

  it("--help prints the usage and exits 0", function()
    local r = start({ "--help" })
    assert.equal(0, wait_exit(r))
    assert.matches("^Usage: luv%-cluster %[options%] script%.lua", r.lines[1])
    assert.is_truthy(find(r, "%-%-workers N"))
  end)

  -- Bad usage: exit 2, nothing on stdout, one clear line on stderr.
  for _, case in ipairs({
    { { "--workers", "0", "x.lua" }, "%-%-workers: expected an integer >= 1, got '0'" },
    { { "-w", "two", "x.lua" }, "%-w: expected an integer >= 1, got 'two'" },
    { { "--policy", "fast", "x.lua" }, "%-%-policy: expected rr, shared or reuseport, got 'fast'" },
    { { "--bogus", "x.lua" }, "unknown option '%-%-bogus'" },
    { { "--stop-timeout", "soon", "x.lua" }, "%-%-stop%-timeout: expected a duration" },
    { { "--workers" }, "%-%-workers: missing value" },
    { {}, "no script given" },
    { { "/nonexistent/script.lua" }, "cannot open script: /nonexistent/script.lua: No such file" },
    { { "--quiet=yes", "x.lua" }, "%-%-quiet: takes no value" },
    { { "--user", "no-such-user-here", "x.lua" }, "%-%-user: no such user 'no%-such%-user%-here'" },
  }) do
    it("exits 2 on bad usage: " .. table.concat(case[1], " "), function()
      local code, out, err = util.run_once(case[1])
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("^luv%-cluster: " .. case[2], err)
      assert.matches("Try 'luv%-cluster %-%-help'%.\n$", err)
    end)
  end

  it("runs N workers, prints their lifecycle, a stats table on SIGUSR1, and stops cleanly on SIGTERM", function()
    set_version("v1")
    local r = start(fast({ "-w", "2", helper.fixture("sv_server"), "0", version_file }))
    assert.is_true(wait_count(r, "ready after", 2), dump(r))
    assert.is_truthy(find(r, "^luv%-cluster: worker %d+ %(pid %d+%) started in slot 1$"))
    assert.is_truthy(find(r, "^luv%-cluster: worker %d+ %(pid %d+%) online$"))
    assert.is_truthy(find(r, "^luv%-cluster: worker %d+ %(pid %d+%) listening on 127%.0%.0%.1:%d+$"))
    assert.matches("^%d+ v1$", ask(port_of(r)))
    uv.kill(r.pid, "sigusr1")
    local header = wait_line(r, "^slot%s+id%s+pid%s+state%s+age%s+restarts%s+heartbeat%s+rss")
    assert.is_truthy(header, dump(r))
    assert.is_true(helper.wait(function() return #r.lines >= header + 2 end))
    for i = 1, 2 do
      local row = r.lines[header + i]
      local slot, pid = row:match("^(%d+)%s+%d+%s+(%d+)%s+ready%s+[%d.]+s%s+0%s+%d+ ms ago%s+[%d.]+M")
      assert.equal(tostring(i), slot, row)
      assert.is_true(helper.alive(tonumber(pid)))
    end
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
    assert.is_truthy(find(r, "stopping 2 workers %(graceful"))
    assert.equal(2, count(r, "exited with code 0 after %d+ ms, stop$"))
    assert.matches("^luv%-cluster: stopped$", r.lines[#r.lines])
  end)

  it("SIGHUP reloads, SIGTTIN adds a worker, SIGTTOU removes the newest, SIGINT stops", function()
    set_version("v1")
    local r = start(fast({ "-w", "2", helper.fixture("sv_server"), "0", version_file }))
    assert.is_true(wait_count(r, "ready after", 2), dump(r))
    local port = port_of(r)
    set_version("v2")
    uv.kill(r.pid, "sighup")
    assert.is_truthy(wait_line(r, "reload done %(1 so far%)"), dump(r))
    assert.equal(2, count(r, "started %(reload%) in slot"))
    assert.equal(2, count(r, "draining %(reload%)"))
    assert.matches("^%d+ v2$", ask(port))
    uv.kill(r.pid, "sigttin")
    assert.is_truthy(wait_line(r, "scaling to 3 workers"), dump(r))
    local i_new = wait_line(r, "started %(scale up%) in slot 3")
    assert.is_truthy(i_new, dump(r))
    local newest = r.lines[i_new]:match("%(pid (%d+)%)")
    assert.is_truthy(wait_line(r, "%(pid " .. newest .. "%) ready"), dump(r))
    uv.kill(r.pid, "sigttou")
    assert.is_truthy(wait_line(r, "scaling to 2 workers"), dump(r))
    assert.is_truthy(wait_line(r, "%(pid " .. newest .. "%) exited with code 0 after %d+ ms, scale$"), dump(r))
    uv.kill(r.pid, "sigint")
    assert.equal(0, wait_exit(r), dump(r))
  end)

  it("a graceful stop that outlasts --stop-timeout kills the worker and exits 1", function()
    set_version("v1")
    local r = start(fast({ "-w", "1", "--stop-timeout", "200ms", helper.fixture("sv_server"), "0", version_file }))
    assert.is_truthy(wait_line(r, "ready after"), dump(r))
    -- A keep-alive connection keeps the worker's loop alive after it has
    -- closed its server.
    local c = uv.new_tcp()
    local got, closed = nil, false
    c:connect("127.0.0.1", port_of(r), function(err)
      assert(not err, err)
      c:write("ping\n")
      c:read_start(function(e, data)
        if e or not data then closed = true; c:close() else got = data end
      end)
    end)
    assert.is_true(helper.wait(function() return got ~= nil end))
    local t0 = uv.now()
    uv.kill(r.pid, "sigterm")
    assert.equal(1, wait_exit(r), dump(r))
    assert.is_true(uv.now() - t0 >= 190)
    assert.is_truthy(find(r, "still running: SIGKILL %(stop_timeout%)"))
    assert.is_truthy(find(r, "killed by SIGKILL"))
    assert.matches("stopped %(1 workers killed%)", r.lines[#r.lines])
    assert.is_true(helper.wait(function() return closed end))
  end)

  it("a second SIGINT stops at once (exit 1)", function()
    local r = start(fast({ "-w", "2", "--stop-timeout", "30s", helper.fixture("sv_linger") }))
    assert.is_true(wait_count(r, "ready after", 2), dump(r))
    -- The workers have sessions of their own: a terminal's Ctrl-C reaches
    -- only the runner.
    local function session(pid)
      local f = assert(io.open("/proc/" .. pid .. "/stat"))
      local stat = f:read("*a")
      f:close()
      return tonumber(stat:match("%) %a %d+ %d+ (%d+)"))
    end
    for _, pid in ipairs(r.pids) do
      assert.equal(pid, session(pid))
      assert.are_not.equal(session(r.pid), session(pid))
    end
    uv.kill(r.pid, "sigint")
    assert.is_truthy(wait_line(r, "stopping 2 workers %(graceful"), dump(r))
    -- sv_linger.lua does not leave after a disconnect: the graceful stop would wait 30 s.
    assert.is_false(helper.wait(function() return r.exited end, 100))
    uv.kill(r.pid, "sigint")
    assert.equal(1, wait_exit(r, 2000), dump(r))
    assert.equal(2, count(r, "SIGKILL %(immediate%)"))
  end)

  it("a crash loop backs off, marks each slot errored and exits 3", function()
    local r = start(fast({ "-w", "2", "--crash-deaths", "3", helper.fixture("sv_crash") }))
    assert.equal(3, wait_exit(r), dump(r))
    assert.equal(2, count(r, "errored: 3 quick deaths in a row"))
    assert.equal(6, count(r, "exited with code 3"))
    assert.is_truthy(find(r, "slot 1: restarting in 10 ms"))
    assert.is_truthy(find(r, "slot 1: restarting in 15 ms"))
    assert.is_truthy(find(r, "every worker slot errored: giving up"))
  end)

  it("kills a hung worker and restarts it", function()
    local r = start({ "-w", "1", "--heartbeat-interval", "20ms", "--heartbeat-timeout", "150ms",
      helper.fixture("sv_hang"), "30" })
    local i = wait_line(r, "answered no heartbeat for %d+ ms: killing it")
    assert.is_truthy(i, dump(r))
    assert.is_truthy(wait_line(r, "killed by SIGKILL after %d+ ms, hang$", 3000, i), dump(r))
    assert.is_truthy(wait_line(r, "restarted in slot 1", 3000, i), dump(r))
  end)

  it("leaves a uv.spawn child of the user script to the script", function()
    local r = start(fast({ "-w", "1", helper.fixture("sv_spawn") }))
    assert.is_truthy(wait_line(r, "^child exited code 7 signal 0$"), dump(r))
    assert.is_truthy(wait_line(r, "ready after"), dump(r))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
  end)

  it("--json prints one object per event; --quiet prints none", function()
    local r = start(fast({ "--json", "-w", "1", helper.fixture("ready") }))
    assert.is_truthy(wait_line(r, '^{"event":"ready",'), dump(r))
    assert.matches('^{"event":"spawn","id":%d+,"pid":%d+,"reason":"start","slot":1,"time":%d+}$', r.lines[1])
    uv.kill(r.pid, "sigusr1")
    assert.is_truthy(wait_line(r, '^{"event":"stats","workers":%[{.*"state":"ready"'), dump(r))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r))
    assert.matches('^{"event":"stopped","clean":true,"killed":0,', r.lines[#r.lines])

    local q = start(fast({ "--quiet", "-w", "1", helper.fixture("sv_spawn") }))
    assert.is_truthy(wait_line(q, "^child exited"), dump(q))
    uv.kill(q.pid, "sigterm")
    assert.equal(0, wait_exit(q))
    assert.same({ "child exited code 7 signal 0" }, q.lines)
  end)

  it("--json --quiet: nothing on stdout, alerts as JSON objects on stderr", function()
    local r = start(fast({ "--json", "--quiet", "-w", "1", helper.fixture("exit_code"), "3" }))
    assert.equal(3, wait_exit(r, 10000)) -- every slot errored
    helper.wait(function()
      for _, l in ipairs(r.err_lines) do if l:find('"event":"all_errored"', 1, true) then return true end end
    end, 2000)
    assert.same({}, r.lines)
    local errored = 0
    for _, l in ipairs(r.err_lines) do
      if l:find('^{"event":"errored",') then errored = errored + 1 end
    end
    assert.equal(1, errored, table.concat(r.err_lines, "\n"))
  end)

  it("--user/--group: a root master binds a privileged port, the worker runs unprivileged", function()
    if uv.getuid() ~= 0 then
      pending("needs root")
      return
    end
    -- A free privileged port.
    local port
    for p = 700, 1000 do
      local probe = uv.new_tcp()
      local ok = probe:bind("127.0.0.1", p)
      helper.close(probe)
      if ok then port = p break end
    end
    assert.is_number(port)
    -- The checkout may be in a directory nobody cannot enter (/root): the
    -- runner and the worker's script run from a readable copy.
    local copy, remove = helper.readable_copy()
    finally(remove)
    local r = start(fast({ "--user", "nobody", "--group", "nogroup", "-w", "1",
      copy .. "/spec/fixtures/sv_whoami.lua", tostring(port) }), { bin = copy .. "/bin/luv-cluster" })
    local _, line = wait_line(r, "^whoami")
    assert.is_truthy(line, dump(r))
    assert.is_truthy(wait_line(r, "listening on 127%.0%.0%.1:" .. port .. "$"), dump(r))
    local uid, gid = line:match("^whoami uid (%d+) gid (%d+)$")
    assert.are_not.equal("0", uid)
    assert.are_not.equal("0", gid)
    assert.equal(uid, (ask(port)))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r), dump(r))
  end)
end)

-- The load test: a bounded client run against the runner while SIGHUP
-- fires every 200 ms, at least 50 reloads; every outcome is counted.
describe("luv-cluster reload under load #load", function()
  setup(make_tmp)
  teardown(remove_tmp)
  after_each(util.cleanup)

  for _, policy in ipairs({ "rr", "shared" }) do
    it("loses no request over 50 reloads (" .. policy .. ")", function()
      set_version("v1")
      -- One worker: every reload replaces the only one serving, the
      -- hardest case for zero downtime.
      local WORKERS = 1
      local r = start(fast({ "-w", tostring(WORKERS), "--policy", policy, "--stop-timeout", "5s",
        helper.fixture("sv_server"), "0", version_file }))
      assert.is_true(wait_count(r, "ready after", WORKERS), dump(r))
      local port = port_of(r)
      local fds_before = fd_count(r.pid)

      local RELOADS, CLIENTS = 50, 4
      local load = util.load(r, port, CLIENTS)

      local hup = uv.new_timer()
      local sent = 0
      hup:start(200, 200, function()
        if count(r, "reload done") >= RELOADS then return end
        sent = sent + 1
        set_version("v" .. sent + 1)
        uv.kill(r.pid, "sighup")
      end)
      local reloaded = helper.wait(function() return count(r, "reload done") >= RELOADS end, RELOADS * 200 * 3)
      hup:close()
      load.stop()
      -- Every old worker has drained and exited.
      local started = count(r, "started")
      helper.wait(function() return count(r, "exited with code") >= started - WORKERS end, 5000)
      local fds_after = fd_count(r.pid)
      uv.kill(r.pid, "sigterm")
      local status = wait_exit(r, 5000)

      local failed, report = load.report()
      print(("\n[%s] %d reloads from %d SIGHUPs, outcomes: %s, master fds %s -> %s"):format(
        policy, count(r, "reload done"), sent, report, fds_before, fds_after))
      -- The runner's output is kept when something went wrong.
      if failed > 0 or not reloaded or count(r, "reload aborted") > 0 then
        local path = ("/tmp/luv-cluster-load-%s.log"):format(policy)
        local log = io.open(path, "w")
        if log then log:write(table.concat(r.lines, "\n"), "\n"); log:close() end
        print("runner output kept in " .. path)
      end
      assert.is_true(reloaded, "only " .. count(r, "reload done") .. " reloads")
      assert.equal(0, count(r, "reload aborted"), table.concat(load.failures, "\n"))
      assert.is_true(load.outcomes.ok > RELOADS, "too few requests to mean anything")
      assert.equal(0, failed, report .. "\n" .. table.concat(load.failures, "\n"))
      assert.equal(fds_before, fds_after)
      assert.equal(0, status, dump(r))
    end)
  end
end)

-- The runner near its fd limit (`ulimit -n 64`, soft and hard): it refuses
-- worker counts the limit leaves no room for, and 300 connections held at
-- once cost connections, never the master.
describe("luv-cluster near its fd limit #load", function()
  setup(make_tmp)
  teardown(remove_tmp)

  after_each(util.cleanup)

  local LIMIT = 64

  local function start_limited(list)
    return start(fast(list), { fd_limit = LIMIT })
  end

  it("refuses more workers than the limit leaves room for, at start and on SIGTTIN", function()
    set_version("v1")
    local r = start_limited({ "-w", "10", helper.fixture("sv_server"), "0", version_file })
    assert.equal(2, wait_exit(r, 5000))
    assert.equal(0, #r.pids, dump(r))
    helper.wait(function() return #r.err_lines > 0 end, 2000)
    assert.matches("^luv%-cluster: 10 workers need more file descriptors than the limit of 64",
      r.err_lines[1] or "")
    -- (64 - 32 reserved) / 3 per worker, less one for a reload candidate.
    r = start_limited({ "-w", "9", helper.fixture("sv_server"), "0", version_file })
    assert.is_true(wait_count(r, "ready after", 9, 10000), dump(r))
    uv.kill(r.pid, "sigttin")
    local _, line = wait_line(r, "not adding a worker")
    assert.matches("10 workers need more file descriptors than the limit of 64 %(ulimit %-n%) leaves: room for 9",
      line or "", 1, false)
    local port = port_of(r)
    assert.matches("^%d+ v1$", ask(port) or "", nil, dump(r))
    uv.kill(r.pid, "sigterm")
    assert.equal(0, wait_exit(r, 5000), dump(r))
  end)

  for _, policy in ipairs({ "rr", "shared" }) do
    it("keeps serving after 300 connections held at once (" .. policy .. ")", function()
      set_version("v1")
      local r = start_limited({ "-w", "2", "--policy", policy, helper.fixture("sv_server"), "0", version_file })
      assert.is_true(wait_count(r, "ready after", 2), dump(r))
      local port = port_of(r)
      local fds_before = fd_count(r.pid)
      local worker_fds = {}
      for _, pid in ipairs(r.pids) do worker_fds[pid] = fd_count(pid) end

      -- 300 clients connect, ask, and hold their connection open. Each
      -- settles: answered, or closed by the other side (a worker out of
      -- fds loses that connection).
      local N = 300
      local clients, settled, answered = {}, 0, 0
      for i = 1, N do
        local c = uv.new_tcp()
        local state = {}
        clients[i] = c
        local function settle(how)
          if state.how then return end
          state.how = how
          settled = settled + 1
          if how == "answer" then answered = answered + 1 end
        end
        c:connect("127.0.0.1", port, function(err)
          if err then return settle("connect") end
          c:write("ping\n")
          c:read_start(function(e, data)
            if e or not data then return settle("closed") end
            if data:find("\n") then settle("answer") end
          end)
        end)
      end
      -- The kernel's backlog may keep a few unaccepted while the workers
      -- are full; most settle.
      helper.wait(function() return settled == N end, 10000)
      assert.is_true(helper.alive(r.pid), "the master died")
      assert.is_true(answered > 0, "no connection was served")
      -- Workers out of fds say what they lost (on stderr: the app has no
      -- 'error' listener).
      if policy == "rr" then
        local drops = 0
        for _, l in ipairs(r.err_lines) do
          if l:find("EMFILE: a message was dropped", 1, true) then drops = drops + 1 end
        end
        assert.is_true(drops > 0, table.concat(r.err_lines, "\n"))
      end
      for _, c in ipairs(clients) do if not c:is_closing() then c:close() end end
      -- The workers have closed their side of those connections: their fds
      -- are free again (until then a new connection may still find a
      -- worker at its limit).
      assert.is_true(helper.wait(function()
        for pid, n in pairs(worker_fds) do
          if (fd_count(pid) or 0) > n then return false end
        end
        return true
      end, 5000), "the workers did not get their fds back")

      -- Fresh requests, one at a time: every one is answered.
      local ok = 0
      for _ = 1, 20 do
        local line = ask(port)
        if line and line:match("^%d+ v1$") then ok = ok + 1 end
      end
      print(("\n[%s, ulimit -n %d] 300 held: %d answered, %d settled; then %d/20 fresh requests answered"):format(
        policy, LIMIT, answered, settled, ok))
      assert.equal(20, ok, dump(r))
      assert.is_false(r.exited or false, dump(r))
      assert.is_true(helper.wait(function() return fd_count(r.pid) == fds_before end, 3000),
        ("master fds %d -> %d"):format(fds_before, fd_count(r.pid)))
      uv.kill(r.pid, "sigterm")
      assert.equal(0, wait_exit(r, 5000), dump(r))
    end)
  end
end)
