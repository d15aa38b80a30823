-- Wires a cluster.core channel into the luv loop: a poll handle on its fd,
-- one prepare handle that flushes every channel with queued frames right
-- before the loop blocks (so a burst of sends becomes one write; a burst
-- past 64 KiB also writes through as it goes, in C), the
-- 'drain' of a backlog, and the dispatch of received frames to the
-- owner's callbacks.

local uv = require("luv")
local core = require("cluster.core")
local defer = require("cluster.defer")
local call_protected = require("cluster.emitter").call_protected
local compat = require("cluster.compat")

local FD_KIND = core.FD_KIND
-- Called directly on the hot paths, without a method lookup per message.
local methods = core.channel_methods
local core_send, core_next, core_take, core_flush, core_read =
  methods.send, methods.next, methods.take, methods.flush, methods.read

local Channel = {}
Channel.__index = Channel

-- Read results that mean the other process has gone: not an error. A peer
-- that dies with our messages unread resets the connection.
local PEER_GONE = { EOF = true, ECONNRESET = true, EPIPE = true }

-- Channel:_flush, _read, _parse and _on_poll, called on the hot paths as
-- locals: a method call looks the name up through the metatable each time.
local flush_channel, read_channel, parse_channel, on_poll

-- Channels with frames not yet handed to the kernel: the set `dirty`
-- (what a send asks) and, in the order they were marked, the list
-- marked[1..nmarked] (what a flush walks: no next() on the set, a call of
-- a few hundred instructions each). A channel closed or flushed outside
-- the flush leaves the set at once and its list entry stays, skipped. A
-- flush runs send callbacks, which may send again: those land in a fresh
-- list, and an idle handle keeps the loop from blocking until they are out.
--
-- The prepare handle runs on every loop turn once made, unreferenced (it
-- keeps no loop alive: a dirty channel's own poll handle does): on a
-- turn with nothing queued it costs one call, where starting it on the
-- first send of a turn and stopping it again after the flush cost three
-- luv calls on every turn that sends (a round trip's hop).
local dirty = {}
local marked, nmarked, spare = {}, 0, {}
local flusher, waker -- uv prepare and idle handles, made on the first send
local waking = false -- the idle handle is started

local function noop() end

local flushing = false -- flush_dirty is walking a list (spare is in use)

local function flush_dirty()
  local list, n = marked, nmarked
  if n > 0 and not flushing then
    flushing = true
    marked, nmarked, spare = spare, 0, list
    for i = 1, n do
      local ch = list[i]
      list[i] = nil
      if dirty[ch] then
        dirty[ch] = nil
        flush_channel(ch)
      end
    end
    flushing = false
  end
  if nmarked == 0 then
    if waking then
      waking = false
      waker:stop()
    end
  elseif not waking then
    waking = true
    waker:start(noop)
  end
end

local function mark_dirty(ch)
  dirty[ch] = true
  local n = nmarked + 1
  marked[n], nmarked = ch, n
  if not flusher then
    flusher, waker = uv.new_prepare(), uv.new_idle()
    flusher:start(flush_dirty)
    flusher:unref()
  end
end

-- For Worker:send's fast path, which queues a plain message without going
-- through Channel:send (each Lua call is a measurable share of a send).
Channel.dirty, Channel.mark_dirty, Channel.core_send = dirty, mark_dirty, core_send

-- A received fd as what the sender gave: an integer, or a luv handle of
-- the same kind. nil, err (and the fd closed) when no handle can be made.
local function wrap_fd(kind, fd)
  if kind == FD_KIND.RAW then return fd end
  local handle, err
  if kind == FD_KIND.TCP then
    handle, err = uv.new_tcp()
  elseif kind == FD_KIND.PIPE then
    handle, err = uv.new_pipe(false)
  else
    handle, err = uv.new_udp()
  end
  local ok = false
  if handle then ok, err = handle:open(fd) end
  if not ok then
    if handle then handle:close() end
    core.close(fd)
    return nil, err
  end
  return handle
end

local HANDLE_KINDS = { tcp = FD_KIND.TCP, pipe = FD_KIND.PIPE, udp = FD_KIND.UDP }

-- The (kind, fd) pair for what send() was given as its handle argument.
function Channel.handle_fd(handle)
  if compat.is_integer(handle) then
    if handle < 0 then error("bad argument 'handle' (negative fd)", 3) end
    return FD_KIND.RAW, handle
  end
  local ok, kind = pcall(uv.handle_get_type, handle)
  kind = ok and HANDLE_KINDS[kind]
  if not kind then
    error("bad argument 'handle' (a luv tcp, pipe or udp handle or an integer fd expected, got "
      .. tostring(handle) .. ")", 3)
  end
  local fd, err = uv.fileno(handle)
  if not fd then error("bad argument 'handle' (" .. tostring(err) .. ")", 3) end
  return kind, fd
end

-- limits: { maxMessageSize =, sendHighWaterMark =, maxQueueSize = }.
-- owner.on_message(value, internal, handle), owner.on_error(err),
-- owner.on_dropped(err, internal) (a message that could not be received:
-- its fd was lost or memory ran out; the channel goes on), owner.on_drain()
-- and owner.on_close() are called from the loop; on_close runs exactly
-- once. Takes fd: returns nil, err (fd closed) when no channel can be made.
function Channel.open(fd, limits, owner)
  local c, err = core.channel(fd, limits.maxMessageSize, limits.sendHighWaterMark, limits.maxQueueSize)
  if not c then
    core.close(fd)
    return nil, err
  end
  local poll
  poll, err = uv.new_poll(c:fileno())
  if not poll then
    c:close()
    return nil, err
  end
  local self = setmetatable({
    core = c,
    owner = owner,
    poll = poll,
    drain_at = nil, -- written total at which 'drain' is due
    callbacks = nil, -- FIFO [cb_head..cb_tail] of { end_offset, cb }
    cb_head = 1,
    cb_tail = 0,
    open = true, -- neither closing nor closed: sends are taken
    closed = false,
    closing = false,
    writing = false, -- the poll also wakes for writability
    batch = {}, -- plain messages from core take(), [1..batch_n] (nil: dispatched)
    batch_n = 0,
  }, Channel)
  poll:start("r", function(perr) on_poll(self, perr) end)
  return self
end

function Channel:is_open()
  return self.open
end

local CLOSED = "EPIPE: the channel is closed"

-- Queue one value. true: queued; false: queued behind a backlog over the
-- high-water mark ('drain' follows); nil, err: not queued (closed, queue
-- full, out of descriptors or memory), and cb gets err too. Raises only
-- when the value cannot be sent. With `take`, fd becomes the channel's
-- once queued (see core send).
function Channel:send(value, internal, kind, fd, cb, take)
  if not self.open then
    if cb then defer.call(function() call_protected("a send callback", cb, CLOSED) end) end
    return nil, CLOSED
  end
  local end_offset, above = core_send(self.core, value, internal, kind, fd, take)
  if not dirty[self] then mark_dirty(self) end -- also to notice a failed write
  if not end_offset then
    if cb then defer.call(function() call_protected("a send callback", cb, above) end) end
    return nil, above
  end
  if cb then
    local q = self.callbacks
    if not q then
      q = {}
      self.callbacks, self.cb_head, self.cb_tail = q, 1, 0
    end
    local tail = self.cb_tail + 1
    q[tail] = { end_offset, cb }
    self.cb_tail = tail
  end
  if above then
    self.drain_at = end_offset
    return false
  end
  return true
end

-- A send over the high-water mark that did not go through Channel:send
-- (Worker:send's fast path): 'drain' is due once end_offset is written.
function Channel:backlogged(end_offset)
  self.drain_at = end_offset
end

function Channel:_watch(writing)
  if self.writing ~= writing and not self.closed then
    self.writing = writing
    self.core:watch(writing)
  end
end

function Channel:_flush()
  if self.closed then return end
  local written, pending, code = core_flush(self.core)
  if not written then
    if PEER_GONE[code] then self:close() else self:_fail(pending, code) end
    return
  end
  -- Callbacks of the messages now written, in order; each may send more.
  local q = self.callbacks
  while q and self.cb_head <= self.cb_tail and q[self.cb_head][1] <= written do
    local i = self.cb_head
    local cb = q[i][2]
    q[i] = nil
    self.cb_head = i + 1
    call_protected("a send callback", cb, nil)
    q = self.callbacks
  end
  if q and self.cb_head > self.cb_tail then self.callbacks = nil end
  local drain_at = self.drain_at
  if drain_at and written >= drain_at then
    self.drain_at = nil
    self.owner.on_drain()
    if self.closed then return end
  end
  if pending > 0 then
    self:_watch(true)
  elseif self.closing then
    self:close()
  elseif self.writing then
    self:_watch(false)
  end
end

flush_channel = Channel._flush

-- Deliver one frame as core next() gave it (has = true or "dropped").
function Channel:_deliver(has, value, internal, kind, fd)
  local owner = self.owner
  if has ~= true then return owner.on_dropped(value, internal) end
  local handle
  if kind then
    local werr
    handle, werr = wrap_fd(kind, fd)
    if not handle then
      return owner.on_dropped("a message was dropped: cannot open the handle sent with it: "
        .. tostring(werr), internal)
    end
  end
  owner.on_message(value, internal, handle)
end

-- Frames read while a request() waited for its reply are dispatched
-- first, in the order they came.
function Channel:_dispatch_held()
  local held = self.held
  self.held = nil
  for i = 1, #held do
    local f = held[i]
    self:_deliver(f[1], f[2], f[3], f[4], f[5])
    if not self.open then
      for j = i + 1, #held do if held[j][5] then core.close(held[j][5]) end end
      return
    end
  end
end

-- Dispatch the held frames, then the buffer, on a later loop turn (no poll
-- event will come for bytes already read).
function Channel:_read_held_later()
  defer.call(function() if self.open and self.held then self:_read(1) end end)
end

-- Send an internal message and block (outside the loop) until the frame
-- for which is_reply(value, internal) is true arrives: a worker's bind
-- must answer before it returns. Other frames that arrive meanwhile are
-- held for the loop. Returns reply, fd | nil, err.
function Channel:request(message, is_reply, timeout_ms)
  if not self.open then return nil, "channel closed" end
  local ch = self.core
  local queued, err = core_send(ch, message, true)
  if not queued then return nil, err end
  while true do
    local written, pending = ch:flush()
    if not written then return nil, pending end
    if pending == 0 then break end
    if not ch:wait("w", timeout_ms) then return nil, "timed out writing to the master" end
  end
  while true do
    local has, value, internal, kind, fd = core_next(ch)
    if has == nil then
      self:_fail(value, "EPROTO")
      return nil, value
    elseif has == "dropped" and is_reply(kind, internal) then
      return nil, value -- kind: the value of the dropped frame
    elseif has == true and is_reply(value, internal) then
      -- What it read past the reply waits for the loop.
      self.held = self.held or {}
      self:_read_held_later()
      return value, fd
    elseif has then
      local held = self.held or {}
      self.held = held
      held[#held + 1] = { has, value, internal, kind, fd }
    else
      if not ch:wait("r", timeout_ms) then return nil, "timed out waiting for the master" end
      local ok, rerr, code = ch:read()
      if ok == nil and code ~= "ENOMEM" then
        self:close()
        return nil, rerr, code
      end
    end
  end
end

-- Dispatch the whole frames in the receive buffer; false when the
-- channel closed on the way. Plain messages come from core take(): one
-- alone as a value, more in a batch in self.batch[1..batch_n] (one C call
-- for many); whatever else is at the head of the buffer comes from
-- next(). A listener that comes back here for this channel (a drain() on
-- the way) first dispatches what is left of the batch, in order: an entry
-- is set to nil once dispatched (take() never gives a nil message), and
-- the outer call skips it.
function Channel:_parse()
  local ch, batch = self.core, self.batch
  local on_message = self.owner.on_message
  local n, more, value = self.batch_n, true
  while true do
    if n > 0 then
      for i = 1, n do
        value = batch[i]
        if value ~= nil then
          batch[i] = nil
          on_message(value, false, nil)
          if not self.open then return false end
        end
      end
      self.batch_n = 0
    end
    if not more then return true end -- what was taken emptied the buffer
    -- A listener's request() read ahead of its reply: the frames it held
    -- came before what is left in the buffer, and go first.
    if self.held then
      self:_read_held_later()
      return true
    end
    n, more, value = core_take(ch, batch)
    if n == 1 then
      n = 0
      on_message(value, false, nil)
      if not self.open then return false end
    elseif n > 1 then
      self.batch_n = n
    else
      local has, internal, kind, fd
      has, value, internal, kind, fd = core_next(ch)
      if has == true and not kind then
        on_message(value, internal, nil)
      elseif has == false then
        return true
      elseif has == nil then
        self:_fail(value, "EPROTO")
        return false
      else
        self:_deliver(has, value, internal, kind, fd)
      end
      if not self.open then return false end
      more = true
    end
  end
end

parse_channel = Channel._parse

-- Reads and dispatches what is waiting, at most max_reads reads: a bound
-- per wake-up keeps one busy peer from starving the loop. to_eof: read
-- until the socket says EAGAIN or EOF.
function Channel:_read(max_reads, to_eof)
  if self.held then
    -- A request() read ahead: first what it held, then what it left
    -- unparsed in the buffer.
    self:_dispatch_held()
    if not self.open or not parse_channel(self) then return end
  end
  local ch = self.core
  local more = true
  for _ = 1, max_reads do
    -- A short read usually means the socket is empty (it can also stop at
    -- a frame carrying an fd: level-triggered polling brings us back).
    if not more and not to_eof then return end
    local ok, err, code = core_read(ch)
    if ok == false then return end
    if ok == nil then
      if code == "ENOMEM" then -- one message dropped; the channel goes on
        self.owner.on_dropped(err)
        return
      end
      if PEER_GONE[code] then self:close() else self:_fail(err, code) end
      return
    end
    more = err -- read()'s second result: the buffer filled up
    if not parse_channel(self) then return end
  end
end

read_channel = Channel._read

-- The poll watches the channel's epoll fd, which says "something is
-- ready", not what: flush when waiting to write, then read.
function Channel:_on_poll(err)
  if self.closed then return end
  if err then return self:drain() end
  if self.writing then flush_channel(self) end
  if not self.closed and not self.closing then
    read_channel(self, 4)
    -- Replies sent by the listeners go out now rather than a loop turn
    -- later: a round trip costs one pass through the loop, not two.
    if nmarked > 0 then flush_dirty() end
  end
end

on_poll = Channel._on_poll

-- Dispatch everything the peer wrote before it went away (the worker's
-- exit can be seen before its channel's EOF), then close.
function Channel:drain()
  if self.closed or self.closing then return end
  -- First what is read already: a listener may drain this channel in the
  -- middle of a dispatch, with frames still unparsed (with held frames,
  -- _read does this itself after them).
  if not self.held and not self:_parse() then return end
  self:_read(math.huge, true)
  self:close()
end

-- Drop the peer: an 'error' (through the owner), then close.
function Channel:_fail(err, code)
  if self.closed then return end
  self.owner.on_error(err, code)
  self:close()
end
Channel.fail = Channel._fail

-- Close once everything queued has been written.
function Channel:finish()
  if self.closed or self.closing then return end
  self.closing, self.open = true, false
  dirty[self] = nil
  self.writing = nil
  self:_flush()
end

-- Close now: frames not yet written are dropped, their callbacks get an
-- error, and owner.on_close runs on a later loop turn.
function Channel:close()
  if self.closed then return end
  self.closed, self.open = true, false
  dirty[self] = nil
  self.poll:stop()
  self.poll:close()
  self.core:close()
  local q, head, tail = self.callbacks, self.cb_head, self.cb_tail
  self.callbacks = nil
  defer.call(function()
    for i = head, q and tail or 0 do call_protected("a send callback", q[i][2], CLOSED) end
    self.owner.on_close()
  end)
end

-- Write what is queued now, without the loop (a worker about to exit).
function Channel:flush_now()
  if not self.closed then
    dirty[self] = nil
    self.core:flush()
  end
end

return Channel
