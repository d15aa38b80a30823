-- What a Worker is in both roles: an emitter with an id, a pid and the
-- channel to the other side. master.lua and child.lua add the role's own
-- disconnect() and kill().

local Emitter = require("cluster.emitter")
local Channel = require("cluster.channel")
local defer = require("cluster.defer")
local protocol = require("cluster.protocol")
local RAW = require("cluster.core").FD_KIND.RAW

-- Classes are flat tables (Emitter's methods copied in, not inherited
-- through __index chains): every message looks up `emit` or `send`.
local Worker = {}
for k, v in pairs(Emitter) do Worker[k] = v end
Worker.__index = Worker

-- A new worker of the class `class` (Worker or one derived from it).
function Worker.new(class, id, pid)
  local w = Emitter.new({
    id = id,
    pid = pid,
    process = { pid = pid },
    state = "none",
    exitedAfterDisconnect = false,
  })
  return setmetatable(w, class)
end

-- A class derived from Worker: a copy of its methods, to which a role
-- adds its own.
function Worker.derive()
  local class = {}
  for k, v in pairs(Worker) do class[k] = v end
  class.__index = class
  return class
end

-- send(message[, handle][, cb]) -> true | false | false, err (see API.md)
local dirty, mark_dirty, core_send = Channel.dirty, Channel.mark_dirty, Channel.core_send
local message_of = protocol.message

function Worker:send(message, handle, cb)
  local ch = self._channel
  if handle == nil and cb == nil and ch and ch.open then -- the common case, inlined
    local end_offset, above = core_send(ch.core, message)
    if not dirty[ch] then mark_dirty(ch) end
    if not above then return true end
    if end_offset then -- queued, over the high-water mark
      ch:backlogged(end_offset)
      return false
    end
    return false, above -- refused: `above` is the error
  end
  if cb == nil and type(handle) == "function" then handle, cb = nil, handle end
  if cb ~= nil and type(cb) ~= "function" then
    error("bad argument 'callback' (function expected, got " .. type(cb) .. ")", 2)
  end
  local kind, fd
  if handle ~= nil then kind, fd = Channel.handle_fd(handle) end
  if not ch then
    local err = "EPIPE: the channel is closed"
    if cb then defer.call(function() Emitter.call_protected("a send callback", cb, err) end) end
    return false, err
  end
  local queued, err = ch:send(message, false, kind, fd, cb)
  if queued == nil then return false, err end
  return queued
end

-- An internal (cluster protocol) message of kind `name`; it shares the
-- channel with user messages. fd (an integer) rides with it; with `take`
-- the channel takes fd over once it is queued. Returns as Channel:send.
function Worker:_send_internal(name, fields, fd, take)
  local ch = self._channel
  if not ch then return nil, "EPIPE: the channel is closed" end
  return ch:send(message_of(name, fields), true, fd and RAW or nil, fd, nil, take)
end

function Worker:isConnected()
  local ch = self._channel
  return ch ~= nil and ch:is_open()
end

function Worker:isDead()
  return self.state == "dead"
end

return Worker
