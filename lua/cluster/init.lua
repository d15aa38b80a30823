-- luv-cluster: Node's cluster module for Lua on luv.
--
--   local cluster = require("cluster")
--   if cluster.isMaster then cluster.fork() else ... end
--
-- The role comes from the environment: a worker is started with
-- LUA_CLUSTER_WORKER_ID and LUA_CLUSTER_FD set, and removes them here so
-- a process it starts is not taken for a worker.

local uv = require("luv")
local Emitter = require("cluster.emitter")
local settings = require("cluster.settings")
local compat = require("cluster.compat")

local cluster = setmetatable(Emitter.new({}), { __index = Emitter })

local id = os.getenv("LUA_CLUSTER_WORKER_ID")
local fd = os.getenv("LUA_CLUSTER_FD")
if id and fd then
  local max = compat.tointeger(tonumber(os.getenv("LUA_CLUSTER_MAX_MESSAGE_SIZE")))
  uv.os_unsetenv("LUA_CLUSTER_WORKER_ID")
  uv.os_unsetenv("LUA_CLUSTER_FD")
  uv.os_unsetenv("LUA_CLUSTER_MAX_MESSAGE_SIZE")
  require("cluster.child").install(cluster, compat.tointeger(tonumber(id)), compat.tointeger(tonumber(fd)),
    max or settings.DEFAULT_MAX_MESSAGE_SIZE)
else
  require("cluster.master").install(cluster)
end

return cluster
