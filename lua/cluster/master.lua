-- The master role: setup, fork, the workers table, reaping and the master
-- side of every Worker.

local uv = require("luv")
local core = require("cluster.core")
local Channel = require("cluster.channel")
local Worker = require("cluster.worker")
local defer = require("cluster.defer")
local protocol = require("cluster.protocol")
local settings = require("cluster.settings")
local share = require("cluster.share_master")
local report_listener_error = require("cluster.emitter").report_listener_error
local compat = require("cluster.compat")
local xpcall = compat.xpcall
local absolute_paths = compat.absolute_paths

local traceback = debug.traceback

local master = {}

local MasterWorker = Worker.derive()

-- Graceful: the worker closes its servers, then its end of the channel;
-- 'disconnect' fires when that end closes.
function MasterWorker:disconnect()
  if self:isConnected() then
    self.exitedAfterDisconnect = true
    share.drain(self)
    self:_send_internal("disconnect")
  end
  return self
end

-- Signal first, then drop the channel: the worker ends by this signal
-- rather than racing it with an exit on channel EOF.
function MasterWorker:kill(signal)
  local ok, signum = pcall(core.signum, signal or "SIGTERM")
  if not ok then error("bad argument 'signal' (" .. tostring(signal) .. " is not a signal)", 2) end
  self.exitedAfterDisconnect = true
  share.drain(self)
  if not self._exited then core.kill(self.pid, signum) end
  if self._channel then self._channel:close() end
  return self
end

-- Heartbeat: the worker's loop answers with a 'heartbeat' event (seq).
function MasterWorker:ping(seq)
  return self:_send_internal("ping", { seq = seq })
end

-- Absolute path of the running script, fixed now so a later cwd setting
-- does not break the default exec.
local function script_path()
  local script = arg and arg[0]
  if not script then return nil end
  if script:sub(1, 1) ~= "/" then script = uv.cwd() .. "/" .. script end
  return script
end

-- The environment of a new worker as a list of "NAME=value". The worker
-- reads the LUA_CLUSTER_* variables and removes them all (init.lua).
local function worker_env(s, fork_env, id, policy)
  local env = uv.os_environ()
  for k, v in pairs(s.env) do env[k] = tostring(v) end
  if fork_env then
    for k, v in pairs(fork_env) do env[k] = tostring(v) end
  end
  env.LUA_CLUSTER_WORKER_ID = tostring(id)
  env.LUA_CLUSTER_FD = tostring(core.CHANNEL_FD)
  -- The same limits on the worker's end of the channel.
  env.LUA_CLUSTER_MAX_MESSAGE_SIZE = tostring(s.maxMessageSize)
  env.LUA_CLUSTER_SEND_HIGH_WATER_MARK = tostring(s.sendHighWaterMark)
  env.LUA_CLUSTER_MAX_QUEUE_SIZE = tostring(s.maxQueueSize)
  -- The worker's cluster.schedulingPolicy shows the master's.
  env.LUA_CLUSTER_SCHED_POLICY = policy
  local list = {}
  for k, v in pairs(env) do list[#list + 1] = k .. "=" .. v end
  return list
end

-- The worker's interpreter finds modules where this one does, and loads
-- the cluster module before its script, so 'online' means Lua is running.
-- Relative search paths are made absolute, as the worker may run in
-- another cwd. The cpath only when the worker runs the master's kind of
-- Lua: a C module built for another version cannot load (settings.lua may
-- name another interpreter; that one finds cluster.core on its own cpath).
local function bootstrap()
  return ("package.path=%q if (jit and 'luajit' or _VERSION)==%q then package.cpath=%q end "
    .. "require('cluster')"):format(absolute_paths(package.path),
    rawget(_G, "jit") and "luajit" or _VERSION, absolute_paths(package.cpath))
end

function master.install(cluster)
  cluster.isMaster, cluster.isPrimary, cluster.isWorker = true, true, false
  cluster.workers = {}
  cluster.settings = {}
  cluster.schedulingPolicy = os.getenv("LUA_CLUSTER_SCHED_POLICY") or "rr"

  protocol.install("master")
  share.install(cluster)

  local script = script_path()
  local configured = false
  -- true once a setup() call gave 'exec' (false puts the default back)
  local explicit_exec = false
  local next_id = 1

  function cluster.setup(given)
    settings.validate(given or {}, 2)
    if given and given.exec ~= nil then explicit_exec = given.exec ~= false end
    local defaults = settings.defaults(script)
    local base = configured and cluster.settings or defaults
    configured = true
    local s = settings.merge(base, given or {}, defaults)
    cluster.settings = s
    local copy = settings.merge(s, {}, defaults)
    defer.call(function() cluster:emit("setup", copy) end)
  end
  cluster.setupPrimary = cluster.setup
  cluster.setupMaster = cluster.setup

  -- Both halves of a worker's end are in: it leaves cluster.workers.
  local function settle(worker)
    if worker._exit_emitted and worker._disconnect_emitted then
      if cluster.workers[worker.id] == worker then cluster.workers[worker.id] = nil end
    end
  end

  local function on_disconnect(worker)
    worker._disconnect_emitted = true
    share.forget(worker)
    if worker.state ~= "dead" then worker.state = "disconnected" end
    settle(worker)
    worker:emit("disconnect")
    cluster:emit("disconnect", worker)
  end

  local function on_exit(worker, code, signal)
    worker._exit_emitted = true
    worker.state = "dead"
    settle(worker)
    worker:emit("exit", code, signal)
    cluster:emit("exit", worker, code, signal)
    cluster:emit("death", worker, code, signal)
    -- Output pipes nobody reads would hold their fds forever.
    for _, name in ipairs({ "stdout", "stderr" }) do
      local pipe = worker.process[name]
      if pipe and not pipe:is_closing() and not pipe:is_active() then pipe:close() end
    end
  end

  -- The process has ended: deliver what it wrote before it died, then
  -- 'disconnect', then 'exit'.
  local function exited(worker, code, signum)
    worker._exited = true
    local ch = worker._channel
    if ch then ch:drain() end
    local signal = signum and (core.signame(signum) or signum)
    defer.call(function() on_exit(worker, code, signal) end)
  end

  local sigchld -- uv signal handle, only where pidfds are missing
  local waiting = {} -- pid -> worker, for the SIGCHLD fallback

  local function reap(worker)
    local done, code, signum = core.waitpid(worker.pid)
    if done == false then return false end
    -- nil: someone else reaped it (a waitpid(-1) elsewhere); it has ended.
    exited(worker, code, signum)
    return true
  end

  -- LUA_CLUSTER_REAP=sigchld forces the fallback, so tests cover it.
  local use_pidfd = os.getenv("LUA_CLUSTER_REAP") ~= "sigchld"

  local function watch_exit(worker)
    local pidfd = use_pidfd and core.pidfd_open(worker.pid)
    if pidfd then
      local poll = uv.new_poll(pidfd)
      poll:start("r", function()
        if reap(worker) then
          poll:stop()
          poll:close()
          core.close(pidfd)
        end
      end)
      return
    end
    -- The signal handle watches only while a worker is running, so it
    -- does not keep the loop alive after the last one.
    local function reap_waiting()
      for pid, w in pairs(waiting) do
        if reap(w) then waiting[pid] = nil end
      end
      if next(waiting) == nil then sigchld:stop() end
    end
    waiting[worker.pid] = worker
    sigchld = sigchld or uv.new_signal()
    sigchld:start("sigchld", reap_waiting)
    reap_waiting() -- it may have ended before the handle was started
  end

  -- The protocol's kinds that the master role handles here (port sharing
  -- handles its own in share_master).
  protocol.handle("online", function(worker)
    if worker.state ~= "none" then return end
    worker.state = "online"
    worker:emit("online")
    cluster:emit("online", worker)
  end)
  protocol.handle("exitedAfterDisconnect", function(worker)
    worker.exitedAfterDisconnect = true
  end)
  protocol.handle("pong", function(worker, message)
    worker.lastHeartbeat = uv.now()
    worker:emit("heartbeat", message.seq)
  end)
  protocol.handle("ready", function(worker)
    worker:emit("ready")
    cluster:emit("ready", worker)
  end)

  local function channel_owner(worker)
    local owner = {}
    function owner.on_message(value, internal, handle)
      -- 'fork' (queued for a later turn) must come before anything the
      -- worker says.
      if defer.waiting then defer.run() end
      if internal then
        local ok, err = protocol.dispatch(worker, value, handle)
        if not ok then worker._channel:fail(err) end
        return
      end
      -- worker:emit and cluster:emit of 'message', unrolled (hot path).
      local list = worker._events.message
      if list then
        for i = 1, #list do
          local ok, err = xpcall(list[i], traceback, value, handle)
          if not ok then report_listener_error("message", err) end
        end
      end
      list = cluster._events.message
      if list then
        for i = 1, #list do
          local ok, err = xpcall(list[i], traceback, worker, value, handle)
          if not ok then report_listener_error("message", err) end
        end
      end
    end
    function owner.on_error(err)
      worker:emit("error", err)
    end
    function owner.on_dropped(err)
      worker:emit("error", err)
    end
    function owner.on_drain()
      worker:emit("drain")
      cluster:emit("drain", worker)
    end
    function owner.on_close()
      on_disconnect(worker)
    end
    return owner
  end

  local function check_env(env)
    if env == nil then return end
    local ok, err = pcall(settings.validate, { env = env }, 1)
    if not ok then error("bad argument 'env' to cluster.fork (" .. tostring(err):gsub("^.-: ", "") .. ")", 3) end
  end

  function cluster.fork(env)
    check_env(env)
    local policy = cluster.schedulingPolicy
    if policy ~= "rr" and policy ~= "shared" and policy ~= "reuseport" then
      error("cluster.fork: cluster.schedulingPolicy must be \"rr\", \"shared\" or \"reuseport\" (got "
        .. tostring(policy) .. ")", 2)
    end
    if not configured then cluster.setup({}) end
    local s = cluster.settings
    if not s.exec then error("cluster.fork: no script to run (set 'exec' with cluster.setup)", 2) end
    -- The default exec is the running script: under a test runner, the
    -- worker would run the test suite again. An explicit exec always wins.
    local runner = not explicit_exec and settings.test_runner(s.exec)
    if runner then
      error(("cluster.fork: the running script is %s (%s), a test runner: a worker would run "
        .. "the test suite again. Set the worker's script: cluster.setup{ exec = \"worker.lua\" } "
        .. "(or run the app as a subprocess with cluster.testing.spawn)"):format(runner, s.exec), 2)
    end
    local id = next_id
    local argv = { s.lua }
    for _, a in ipairs(s.luaArgs) do argv[#argv + 1] = a end
    argv[#argv + 1] = "-e"
    argv[#argv + 1] = bootstrap()
    argv[#argv + 1] = s.exec
    for _, a in ipairs(s.args) do argv[#argv + 1] = a end

    local pid, chfd, outfd, errfd = core.spawn({
      path = s.lua, script = s.exec, argv = argv, cwd = s.cwd, uid = s.uid, gid = s.gid,
      silent = s.silent, detached = s.detached, env = worker_env(s, env, id, policy),
    })
    if not pid then error("cluster.fork: " .. chfd, 2) end
    next_id = id + 1

    local worker = Worker.new(MasterWorker, id, pid)
    local channel, err = Channel.open(chfd, s, channel_owner(worker))
    if not channel then
      -- No way to talk to it (out of memory or epoll watches): it must not
      -- live on unseen.
      if outfd then core.close(outfd) core.close(errfd) end
      core.kill(pid, "SIGKILL")
      core.waitpid(pid, true)
      error("cluster.fork: cannot open the worker's channel: " .. tostring(err), 2)
    end
    worker._channel = channel
    if outfd then
      worker.process.stdout = uv.new_pipe(false)
      worker.process.stdout:open(outfd)
      worker.process.stderr = uv.new_pipe(false)
      worker.process.stderr:open(errfd)
    end
    cluster.workers[id] = worker
    defer.call(function() cluster:emit("fork", worker) end)
    -- Last: it may see the worker (or, on the SIGCHLD path, others) end.
    watch_exit(worker)
    return worker
  end

  function cluster.disconnect(cb)
    if cb ~= nil and type(cb) ~= "function" then
      error("bad argument 'callback' (function expected, got " .. type(cb) .. ")", 2)
    end
    local left = 0
    local function one_done()
      left = left - 1
      if left == 0 and cb then cb() end
    end
    for _, worker in pairs(cluster.workers) do
      if worker:isConnected() then
        left = left + 1
        worker:once("disconnect", one_done)
        worker:disconnect()
      end
    end
    if left == 0 and cb then defer.call(cb) end
  end
end

return master
