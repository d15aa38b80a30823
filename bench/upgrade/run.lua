-- bench/upgrade runner (`make bench-upgrade`): hot upgrades of the runner
-- (bin/luv-cluster) under load, counting every request's outcome.
--
-- Each case starts `luv-cluster -w 2 --policy P --control C --pid-file F
-- bench/upgrade/server.lua PORT|PATH VERSIONFILE`, puts it under a steady
-- load of BENCH_CLIENTS (8) concurrent clients (this process, Lua on luv:
-- each connects, sends a line, reads the answer line, closes, and starts
-- over; BENCH_TIMEOUT_MS (3000) per request), and upgrades the runner
-- BENCH_UPGRADES (20) times in a row through the control socket. Each
-- upgrade writes a new version into VERSIONFILE, sends `upgrade`, waits
-- for its answer (the new runner is ready), for the first request the new
-- version answers, and for the old runner to exit; then the next. At the
-- end the last runner is stopped through the control socket, and the case
-- checks that no runner or worker it saw is left and that the pid file,
-- the control socket and a unix socket path are gone.
--
-- Every outcome is counted: ok, connect error, read (or write) error, EOF
-- before the answer, timeout. The table gives, per case, the medians over
-- BENCH_RUNS (5) runs: upgrades done, requests ok, failed by kind,
-- requests/s over the whole load, and the time per upgrade (from the
-- `upgrade` command to the first answer from the new version; median and
-- max within a run). Every run's raw line is printed as it ends.
--
-- Cases: rr, shared, reuseport (with net.ipv4.tcp_migrate_req 0 and 1:
-- the kernel resets the connections queued on a SO_REUSEPORT listener
-- that closes unless it is 1), and a unix socket server under rr and
-- shared (pipes are never reuseport). The reference, in the same run: the
-- same 20 new versions brought in without a hot upgrade, by stopping the
-- runner (`stop` through the control socket) and starting a new one once
-- it has exited, as an operator would without SIGUSR2 (rr).
--
-- Where the cases run (BENCH_NETNS):
--   1 (the default when root and unshare(1) and ip(8) are there): each
--     case in a network namespace of its own (unshare --net, loopback up),
--     with tcp_migrate_req set there. The machine's own value is never
--     touched, so tests running beside the bench are not affected.
--   0: in this namespace; the reuseport cases set the machine's
--     tcp_migrate_req (root) and put the saved value back after each case
--     (also on SIGINT/SIGTERM). Without root they run with its value as
--     it is.
--
--   lua5.4 bench/upgrade/run.lua     (from the repository root, after make build)
--
-- LUA names the interpreter the runner and its workers use (default: the
-- one running this script). The clients, the runners and the workers share
-- the machine's cores: the figures are this machine's, under this load.
local uv = require("luv")
local dir = (arg and arg[0] or ""):match("^(.*)/") or "."
if dir:sub(1, 1) ~= "/" then dir = uv.cwd() .. "/" .. dir end
package.path = dir .. "/../?.lua;" .. package.path
local lib = require("lib.runner")

local RUNS = tonumber(os.getenv("BENCH_RUNS") or "") or 5
local UPGRADES = tonumber(os.getenv("BENCH_UPGRADES") or "") or 20
local CLIENTS = tonumber(os.getenv("BENCH_CLIENTS") or "") or 8
local TIMEOUT_MS = tonumber(os.getenv("BENCH_TIMEOUT_MS") or "") or 3000
local WORKERS = 2
local MIGRATE_FILE = "/proc/sys/net/ipv4/tcp_migrate_req"

local root = dir:gsub("/bench/upgrade$", "")
local self_lua = lib.self_bin() -- what each case runs under, in its namespace
local lua_bin = lib.lua_bin()

local CASES = {
  { name = "rr", policy = "rr", kind = "tcp" },
  { name = "shared", policy = "shared", kind = "tcp" },
  { name = "reuseport", policy = "reuseport", kind = "tcp", migrate = "0" },
  { name = "reuseport", policy = "reuseport", kind = "tcp", migrate = "1" },
  { name = "unix, rr", policy = "rr", kind = "unix" },
  { name = "unix, shared", policy = "shared", kind = "unix" },
  { name = "rr, stop + start (reference)", policy = "rr", kind = "tcp", restart = true },
}

-- Helpers ----------------------------------------------------------------

local sleep, median, alive = lib.sleep, lib.median, lib.alive
local read_file, write_file = lib.read_file, lib.write_file

-- Polls every 5 ms: the upgrade times are taken when these waits end.
local function wait_for(cond, timeout_ms) return lib.wait_for(cond, timeout_ms, 5) end

local function max_of(list)
  local m
  for _, v in ipairs(list) do if not m or v > m then m = v end end
  return m
end

-- A process with its stdout and stderr lines collected (the runners log a
-- line per worker and per upgrade; a case's stderr goes into its report).
local function spawn(file, args, env)
  local p, err = lib.start(file, args, env, true)
  if not p then error("cannot start " .. file .. ": " .. tostring(err)) end
  return p
end

-- Our settings stay out of the runners' environment, and so do systemd's
-- LISTEN_FDS and LISTEN_PID, were we given them: each runner binds its own.
local function environment(extra)
  return lib.env_list(extra or {}, { "^LUA_CLUSTER_", "^BENCH_", "^LISTEN_" })
end

-- One command on the runner's control socket: ok, answer text.
local function control(path, line, timeout_ms)
  local co = coroutine.running()
  local c, timer = uv.new_pipe(false), uv.new_timer()
  local buf, done = "", false
  local function finish(ok, text)
    if done then return end
    done = true
    timer:close()
    if not c:is_closing() then c:close() end
    assert(coroutine.resume(co, ok, text))
  end
  timer:start(timeout_ms, 0, function() finish(false, "no answer within " .. timeout_ms .. " ms") end)
  c:connect(path, function(err)
    if err then return finish(false, "connect: " .. err) end
    c:write(line .. "\n")
    c:read_start(function(rerr, data)
      if rerr then return finish(false, "read: " .. rerr) end
      if data then
        buf = buf .. data
        return
      end
      if buf:match("^ok\n") then return finish(true, buf:sub(4)) end
      finish(false, buf)
    end)
  end)
  return coroutine.yield()
end

-- One case, in this process ------------------------------------------------

local function run_case(case)
  local result = { upgrades = 0, ok = 0, connect = 0, read = 0, eof = 0, timeout = 0,
    times = {}, ready = {}, detail = {}, notes = {} }
  local function note(text) result.notes[#result.notes + 1] = text end
  result.migrate = (read_file(MIGRATE_FILE) or "?"):match("%S+") or "?"

  local tmp = assert(uv.fs_mkdtemp("/tmp/luv-cluster-bench-upgrade-XXXXXX"))
  local version_file, control_path, pid_file = tmp .. "/version", tmp .. "/control.sock", tmp .. "/runner.pid"
  local path = case.kind == "unix" and tmp .. "/app.sock" or nil
  local port = not path and lib.free_port() or nil
  write_file(version_file, "v1\n")

  local runners, workers, seen = {}, {}, {}
  local runner, ready_lines
  -- A runner of ours (the first, or the next one in the reference case).
  local function start_runner()
    runner = spawn(lua_bin, { root .. "/bin/luv-cluster", "-w", tostring(WORKERS), "--policy", case.policy,
      "--control", control_path, "--pid-file", pid_file, "--stop-timeout", "5s",
      root .. "/bench/upgrade/server.lua", path or tostring(port), version_file }, environment())
    runners[#runners + 1] = runner.pid
    ready_lines = 0
    runner.on_line = function(line)
      local wpid = tonumber(line:match("^luv%-cluster: worker %d+ %(pid (%d+)%)"))
      if wpid and not seen[wpid] then
        seen[wpid] = true
        workers[#workers + 1] = wpid
      end
      if line:find(" ready after ", 1, true) then ready_lines = ready_lines + 1 end
    end
  end
  start_runner()

  -- The load.
  local versions, running, inflight = {}, false, 0
  local t_load, t_load_end
  local function request()
    if not running then return end
    inflight = inflight + 1
    local c = path and uv.new_pipe(false) or uv.new_tcp()
    local timer, buf, done = uv.new_timer(), "", false
    local function finish(kind, detail)
      if done then return end
      done = true
      result[kind] = result[kind] + 1
      if detail then
        local key = kind .. " " .. detail
        result.detail[key] = (result.detail[key] or 0) + 1
      end
      timer:close()
      if not c:is_closing() then c:close() end
      inflight = inflight - 1
      return true
    end
    local function next_request()
      -- A connect refused at once must not spin: the next one a little later.
      local again = uv.new_timer()
      again:start(1, 0, function() again:close(); request() end)
    end
    timer:start(TIMEOUT_MS, 0, function() if finish("timeout") then request() end end)
    local function on_connect(err)
      if err then
        if finish("connect", err) then next_request() end
        return
      end
      c:write("ping\n", function(werr)
        if werr and finish("read", "write " .. werr) then request() end
      end)
      c:read_start(function(rerr, data)
        if rerr then
          if finish("read", rerr) then request() end
          return
        end
        if not data then
          if finish("eof") then request() end
          return
        end
        buf = buf .. data
        local v = buf:match("^(v%d+)\n")
        if v then
          versions[v] = (versions[v] or 0) + 1
          if finish("ok") then request() end
        end
      end)
    end
    if path then
      c:connect(path, on_connect) -- a pipe's connect reports every error to on_connect
    else
      local ok, err = c:connect("127.0.0.1", port, on_connect)
      if not ok and finish("connect", tostring(err)) then next_request() end
    end
  end

  local function cleanup()
    running = false
    wait_for(function() return inflight == 0 end, TIMEOUT_MS + 2000)
    for _, group in ipairs({ { "runner", runners }, { "worker", workers } }) do
      for _, pid in ipairs(group[2]) do
        if alive(pid) then
          note(group[1] .. " " .. pid .. " left: killed")
          uv.kill(pid, "sigkill")
        end
      end
    end
    wait_for(function() return runner.exited and runner.eof end, 5000)
    os.execute("rm -rf '" .. tmp .. "'")
  end

  local ok, err = pcall(function()
    if not wait_for(function() return ready_lines >= WORKERS or runner.exited end, 15000) or runner.exited then
      error("the runner did not get ready: " .. table.concat(runner.err_lines, " | "))
    end
    running = true
    t_load = uv.hrtime()
    for _ = 1, CLIENTS do request() end
    sleep(500)

    local current = runner.pid
    for k = 1, UPGRADES do
      local version = "v" .. (k + 1)
      write_file(version_file, version .. "\n")
      local t0 = uv.hrtime()
      local new
      if case.restart then
        local cok, text = control(control_path, "stop", 10000)
        if not cok then error(("stop %d: %s"):format(k, text)) end
        if not wait_for(function() return runner.exited and runner.eof end, 20000) then
          error(("stop %d: the runner %d still runs after 20 s"):format(k, current))
        end
        start_runner()
        if not wait_for(function() return ready_lines >= WORKERS or runner.exited end, 15000) or runner.exited then
          error(("start %d: the runner did not get ready"):format(k))
        end
        new = runner.pid
      else
        local cok, text = control(control_path, "upgrade", 60000)
        if not cok then error(("upgrade %d: %s"):format(k, text)) end
        new = tonumber(text:match("the new runner is pid (%d+)"))
        if not new then error(("upgrade %d: answer %q"):format(k, text)) end
        runners[#runners + 1] = new
      end
      local t_ready = uv.hrtime()
      if not wait_for(function() return (versions[version] or 0) > 0 end, 10000) then
        error(("upgrade %d: no answer from %s within 10 s"):format(k, version))
      end
      local t_answer = uv.hrtime()
      if not wait_for(function() return not alive(current) end, 20000) then
        error(("upgrade %d: the old runner %d still runs after 20 s"):format(k, current))
      end
      if (read_file(pid_file) or "") ~= new .. "\n" then note(("upgrade %d: pid file not %d"):format(k, new)) end
      result.times[k] = (t_answer - t0) / 1e6
      result.ready[k] = (t_ready - t0) / 1e6
      result.upgrades = k
      current = new
    end
    -- The last generation answers too before the load stops.
    wait_for(function() return (versions["v" .. (UPGRADES + 1)] or 0) > 20 end, 5000)
    running = false
    wait_for(function() return inflight == 0 end, TIMEOUT_MS + 2000)
    t_load_end = uv.hrtime()

    local sok, stext = control(control_path, "stop", 10000)
    if not sok then error("stop: " .. stext) end
    if not wait_for(function() return not alive(current) end, 20000) then
      error("the last runner did not stop within 20 s")
    end
    if not wait_for(function()
      for _, pid in ipairs(workers) do if alive(pid) then return false end end
      return true
    end, 10000) then note("workers still running after the stop") end
    if read_file(pid_file) then note("pid file left") end
    if uv.fs_lstat(control_path) then note("control socket left") end
    if path and uv.fs_lstat(path) then note("unix socket file left: " .. path) end
  end)
  if not ok then note("ERROR " .. tostring(err)) end
  t_load_end = t_load_end or uv.hrtime()
  cleanup()
  result.seconds = t_load and (t_load_end - t_load) / 1e9 or 0
  result.rps = result.seconds > 0 and result.ok / result.seconds or 0
  result.runners = #runners
  result.workers = #workers
  return result
end

-- A result as one line (parsed back by the driver), and back.
local function encode(case, r)
  local detail = {}
  for k, v in pairs(r.detail) do detail[#detail + 1] = k .. "=" .. v end
  table.sort(detail)
  local times = {}
  for i, v in ipairs(r.times) do times[i] = ("%.0f"):format(v) end
  local ready = {}
  for i, v in ipairs(r.ready) do ready[i] = ("%.0f"):format(v) end
  return ("RESULT\tcase=%s\tmigrate=%s\tupgrades=%d\tok=%d\tconnect=%d\tread=%d\teof=%d\ttimeout=%d"
    .. "\tseconds=%.2f\trps=%.0f\ttimes=%s\tready=%s\trunners=%d\tworkers=%d\tdetail=%s\tnotes=%s")
    :format(case.name, r.migrate, r.upgrades, r.ok, r.connect, r.read, r.eof, r.timeout, r.seconds, r.rps,
      table.concat(times, ","), table.concat(ready, ","), r.runners, r.workers, table.concat(detail, ","),
      table.concat(r.notes, "; "):gsub("[\t\n]", " "))
end

local function decode(line)
  local r = {}
  for k, v in line:gmatch("\t([%w_]+)=([^\t]*)") do r[k] = v end
  for _, k in ipairs({ "upgrades", "ok", "connect", "read", "eof", "timeout", "seconds", "rps", "runners",
    "workers" }) do r[k] = tonumber(r[k]) end
  local function list(s)
    local t = {}
    for v in (s or ""):gmatch("[^,]+") do t[#t + 1] = tonumber(v) end
    return t
  end
  r.times, r.ready = list(r.times), list(r.ready)
  return r
end

-- The driver -------------------------------------------------------------

local function main_case(index)
  local case = CASES[index]
  local r = run_case(case)
  io.stdout:write(encode(case, r), "\n")
  io.stdout:flush()
end

local function main()
  local is_root = uv.getuid and uv.getuid() == 0
  local netns_env = os.getenv("BENCH_NETNS")
  local netns
  if netns_env == "0" then
    netns = false
  else
    netns = is_root and lib.have("unshare") and lib.have("ip")
    if netns_env == "1" and not netns then error("BENCH_NETNS=1: needs root, unshare(1) and ip(8)") end
  end

  local saved = (read_file(MIGRATE_FILE) or ""):match("%S+")
  local function set_migrate(v)
    if not v or not saved or not is_root then return end
    local f = io.open(MIGRATE_FILE, "w")
    if f then f:write(v, "\n"); f:close() end
  end
  local function restore()
    if not netns and saved and is_root and (read_file(MIGRATE_FILE) or ""):match("%S+") ~= saved then
      set_migrate(saved)
    end
  end
  if not netns then
    for _, sig in ipairs({ "sigint", "sigterm" }) do
      local h = uv.new_signal()
      h:start(sig, function()
        restore()
        os.exit(1)
      end)
      h:unref()
    end
  end

  local function load_average()
    return ((read_file("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)")) or "?"
  end
  local load_start = load_average()
  io.stdout:write(("bench/upgrade: %d runs, %d upgrades per case, %d workers, %d clients, runner under %s;"
    .. " %s (the machine's tcp_migrate_req: %s); load average %s\n"):format(RUNS, UPGRADES, WORKERS, CLIENTS,
    lua_bin, netns and "each case in a network namespace of its own" or "in this network namespace",
    saved or "?", load_start))

  local results = {} -- case index -> list of decoded results
  for run = 1, RUNS do
    for index, case in ipairs(CASES) do
      local args, file
      local extra = { LUA = lua_bin }
      if netns then
        file = "unshare"
        args = { "--net", "--", "/bin/sh", "-c",
          'ip link set lo up && { [ -z "$BENCH_CASE_MIGRATE" ] || echo "$BENCH_CASE_MIGRATE" > ' .. MIGRATE_FILE
          .. '; } && exec "$@"', "sh", self_lua, dir .. "/run.lua", "--case", tostring(index) }
        extra.BENCH_CASE_MIGRATE = case.migrate
      else
        file = self_lua
        args = { dir .. "/run.lua", "--case", tostring(index) }
        set_migrate(case.migrate)
      end
      for _, k in ipairs({ "BENCH_UPGRADES", "BENCH_CLIENTS", "BENCH_TIMEOUT_MS" }) do
        extra[k] = os.getenv(k)
      end
      local p = spawn(file, args, environment(extra))
      wait_for(function() return p.exited and p.eof end, 10 * 60 * 1000)
      restore()
      local line
      for _, l in ipairs(p.lines) do if l:match("^RESULT\t") then line = l end end
      if line then
        local r = decode(line)
        results[index] = results[index] or {}
        table.insert(results[index], r)
        io.stdout:write(("run %d  %s\n"):format(run, line:gsub("^RESULT\t", ""):gsub("\t", "  ")))
      else
        io.stdout:write(("run %d  %s: no result (exit %s); stderr: %s\n"):format(run, case.name,
          tostring(p.code), table.concat(p.err_lines, " | ")))
      end
      io.stdout:flush()
    end
  end

  local function fmt(v, pattern)
    if v == nil then return "-" end
    return (pattern or "%.0f"):format(v)
  end
  io.stdout:write(("\nMedians of %d runs (%d upgrades each, %d workers, %d clients; load average %s at the start,"
    .. " %s at the end):\n\n"):format(RUNS, UPGRADES, WORKERS, CLIENTS, load_start, load_average()))
  io.stdout:write("| policy | tcp_migrate_req | upgrades | requests ok | failed: connect | read | EOF | timeout"
    .. " | requests/s | upgrade ms, median | upgrade ms, max |\n")
  io.stdout:write("|---|---|---|---|---|---|---|---|---|---|---|\n")
  for index, case in ipairs(CASES) do
    local list = results[index] or {}
    local function col(key)
      local vals = {}
      for _, r in ipairs(list) do vals[#vals + 1] = r[key] end
      return median(vals)
    end
    local meds, maxes = {}, {}
    for _, r in ipairs(list) do
      meds[#meds + 1] = median(r.times)
      maxes[#maxes + 1] = max_of(r.times)
    end
    local migrate = case.migrate and (list[1] and list[1].migrate or case.migrate) or "-"
    io.stdout:write(("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n"):format(case.name, migrate,
      fmt(col("upgrades")), fmt(col("ok")), fmt(col("connect")), fmt(col("read")), fmt(col("eof")),
      fmt(col("timeout")), fmt(col("rps")), fmt(median(meds), "%.0f"), fmt(median(maxes), "%.0f")))
  end
  io.stdout:write("\nupgrade ms: from the `upgrade` command to the first answer from the new version"
    .. " (the answer to the command, the new runner ready, comes a little before: `ready=` in the raw lines).\n")
  io.stdout:flush()
end

local co
if arg[1] == "--case" then
  co = coroutine.create(function() main_case(tonumber(arg[2])) end)
else
  co = coroutine.create(main)
end
local function go()
  local ok, err = coroutine.resume(co)
  if not ok then
    io.stderr:write(debug.traceback(co, tostring(err)), "\n")
    os.exit(1)
  end
end
local t = uv.new_timer()
t:start(0, 0, function() t:close(); go() end)
uv.run()
