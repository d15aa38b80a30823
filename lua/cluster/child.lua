-- The worker role: cluster.worker, the worker's end of the channel, and
-- leaving (graceful disconnect, kill, or the master going away).

local uv = require("luv")
local Channel = require("cluster.channel")
local protocol = require("cluster.protocol")
local Worker = require("cluster.worker")
local proctitle = require("cluster.proctitle")
local defer = require("cluster.defer")
local share = require("cluster.share_worker")
local report_listener_error = require("cluster.emitter").report_listener_error
local compat = require("cluster.compat")
local xpcall = compat.xpcall

local traceback = debug.traceback

local child = {}

local ChildWorker = Worker.derive()

-- Graceful: tell the master this is on purpose, say 'draining' (the app
-- closes its idle keep-alive connections and ends the busy ones after
-- their response: its servers close next, but connections it holds would
-- keep the loop alive until the stop timeout), let the shared servers
-- close (cluster._close_servers, from port sharing), then close the channel
-- once everything queued has been written. The process then ends when its
-- loop has nothing left to do.
function ChildWorker:disconnect()
  if not self:isConnected() or self._leaving then return self end
  self._leaving = true
  self.exitedAfterDisconnect = true
  self:_send_internal("exitedAfterDisconnect")
  self:emit("draining")
  local close_servers = self._close_servers
  local ch = self._channel
  if close_servers then
    close_servers(function() ch:finish() end)
  else
    ch:finish()
  end
  return self
end

-- Leave now: tell the master, then exit.
function ChildWorker:kill()
  self.exitedAfterDisconnect = true
  local ch = self._channel
  if ch and ch:is_open() then
    self:_send_internal("exitedAfterDisconnect")
    ch:flush_now()
  end
  os.exit(0)
end

function ChildWorker:isDead()
  return false
end

function child.install(cluster, id, fd, limits, policy)
  cluster.isMaster, cluster.isPrimary, cluster.isWorker = false, false, true
  cluster.schedulingPolicy = policy

  -- The process title ("luv-cluster worker <id> <script> [args]") is set
  -- on the loop's first turn, once the script runs (cluster.proctitle):
  -- this module loads from the -e boot chunk, before lua.c has read the
  -- script's name from argv.
  defer.unref_call(function() proctitle.set("worker", id) end)

  local worker = Worker.new(ChildWorker, id, compat.tointeger(uv.os_getpid()))
  worker.state = "online"
  cluster.worker = worker

  protocol.install("worker")
  protocol.handle("disconnect", function() worker:disconnect() end)
  -- Heartbeat: answered from the loop, so a stuck loop stays silent.
  protocol.handle("ping", function(_, message) worker:_send_internal("pong", { seq = message.seq }) end)

  local owner = {}
  function owner.on_message(value, internal, handle)
    if not internal then
      -- worker:emit("message", value, handle), unrolled (hot path).
      local list = worker._events.message
      if list then
        for i = 1, #list do
          local ok, err = xpcall(list[i], traceback, value, handle)
          if not ok then report_listener_error("message", err) end
        end
      end
      return
    end
    local ok, err = protocol.dispatch(worker, value, handle)
    if not ok then worker._channel:fail(err) end
  end
  function owner.on_error(err)
    worker:emit("error", err)
  end
  function owner.on_dropped(err)
    worker:emit("error", err)
  end
  function owner.on_drain()
    worker:emit("drain")
  end
  function owner.on_close()
    worker.state = "disconnected"
    worker:emit("disconnect")
    -- Not asked to leave: the master is gone or dropped us. No orphans.
    if not worker.exitedAfterDisconnect then os.exit(0) end
  end

  local channel, err = Channel.open(fd, limits, owner)
  if not channel then error("cluster: cannot open the channel to the master: " .. tostring(err)) end
  worker._channel = channel
  share.install(cluster, worker)

  -- For workers that do not listen: tell a supervisor this one is ready.
  function cluster.ready()
    worker:_send_internal("ready")
    -- At once, like 'online': the script may block right after.
    worker._channel:flush_now()
  end
  -- Written at once, without the loop: the master learns Lua is running
  -- even if the script never runs the loop.
  worker:_send_internal("online")
  worker._channel:flush_now()
end

return child
