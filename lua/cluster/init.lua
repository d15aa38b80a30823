-- luv-cluster: Node's cluster module for Lua on luv.
--
--   local cluster = require("cluster")
--   if cluster.isMaster then cluster.fork() else ... end
--
-- The role comes from the environment: a worker is started with
-- LUA_CLUSTER_WORKER_ID and LUA_CLUSTER_FD set, and removes them (and
-- every other LUA_CLUSTER_* variable) here so a process it starts is not
-- taken for a worker and inherits nothing of the cluster.

local uv = require("luv")
local Emitter = require("cluster.emitter")
local settings = require("cluster.settings")
local compat = require("cluster.compat")
local defer = require("cluster.defer")

local cluster = setmetatable(Emitter.new({}), { __index = Emitter })

-- lua.c turns SIGINT into an "interrupted!" error in whatever Lua code
-- runs next: in a luv callback, which luv reports as a crash with a
-- traceback. As in Node, a master or worker without a SIGINT handler of
-- its own just ends by the signal (a worker's 'exit' then says SIGINT).
-- lua.c sets its handler again for the script's chunk, so it is also reset
-- on the loop's first turn, unless a luv signal handle has put its own in
-- by then.
local function default_sigint()
  local core = require("cluster.core")
  local interpreter_handler = core.signal_handler("SIGINT")
  core.default_signal("SIGINT", interpreter_handler)
  defer.unref_call(function() core.default_signal("SIGINT", interpreter_handler) end)
end
default_sigint()

local function env_integer(name)
  return compat.tointeger(tonumber(os.getenv(name) or ""))
end

local id = env_integer("LUA_CLUSTER_WORKER_ID")
local fd = env_integer("LUA_CLUSTER_FD")
if id and fd then
  local limits = {
    maxMessageSize = env_integer("LUA_CLUSTER_MAX_MESSAGE_SIZE") or settings.DEFAULT_MAX_MESSAGE_SIZE,
    sendHighWaterMark = env_integer("LUA_CLUSTER_SEND_HIGH_WATER_MARK") or settings.DEFAULT_SEND_HIGH_WATER_MARK,
    maxQueueSize = env_integer("LUA_CLUSTER_MAX_QUEUE_SIZE") or settings.DEFAULT_MAX_QUEUE_SIZE,
  }
  local policy = os.getenv("LUA_CLUSTER_SCHED_POLICY") or "rr"
  -- Nothing of the cluster reaches a process this worker starts.
  for name in pairs(uv.os_environ()) do
    if name:sub(1, 12) == "LUA_CLUSTER_" then uv.os_unsetenv(name) end
  end
  require("cluster.child").install(cluster, id, fd, limits, policy)
else
  require("cluster.master").install(cluster)
end

return cluster
