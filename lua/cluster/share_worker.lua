-- Port sharing, worker side: luv's bind/listen/accept/close (methods and
-- uv.* functions) for tcp, pipe and udp handles are wrapped so a bind asks
-- the master instead of the kernel. Unmodified luv server code then
-- serves a port the master owns.
--
-- A bind is a blocking round trip to the master (Channel:request): it
-- answers with the real address and, under "shared"/"reuseport" and for
-- UDP, a socket fd that is opened into the handle. Under "rr" the handle
-- stays socketless; the master accepts and sends each connection's fd,
-- which the wrapped accept() opens into the client handle.

local uv = require("luv")
local core = require("cluster.core")
local defer = require("cluster.defer")
local protocol = require("cluster.protocol")
local call_protected = require("cluster.emitter").call_protected
local compat = require("cluster.compat")

local share = {}

local REQUEST_TIMEOUT_MS = 10000

-- Balance "leastconn": the master counts the connections it hands this
-- worker; the worker counts those it has closed and reports the running
-- total (closedconns) on the loop turn after a close, and then at most
-- once per REPORT_INTERVAL_MS, so a burst of closes costs one message.
-- A report the channel refuses (queue full) is tried again after
-- REPORT_RETRY_MS.
share.REPORT_INTERVAL_MS = 1
local REPORT_RETRY_MS = 100

-- Error results in luv's own shape: nil, "ENAME: message", "ENAME".
local function luv_error(name, message)
  return nil, name .. ": " .. message, name
end

local EAGAIN = { "EAGAIN", "resource temporarily unavailable" }

function share.install(cluster, worker)
  local registry = debug.getregistry()
  local methods = {
    tcp = registry.uv_tcp.__index,
    pipe = registry.uv_pipe.__index,
    udp = registry.uv_udp.__index,
  }
  -- luv's own functions, called by the wrappers.
  local orig = {
    tcp_bind = methods.tcp.bind, pipe_bind = methods.pipe.bind, udp_bind = methods.udp.bind,
    listen = methods.tcp.listen, accept = methods.tcp.accept, close = methods.tcp.close,
    tcp_open = methods.tcp.open, pipe_open = methods.pipe.open, udp_open = methods.udp.open,
    tcp_getsockname = methods.tcp.getsockname, pipe_getsockname = methods.pipe.getsockname,
  }

  -- handle -> { key=, type=, policy=, address=, rr=bool, listening=bool,
  --             pending = { fds }, cb = listen callback, error = {name, msg} }
  local servers = {}
  local port0_count = {} -- "type:address" -> port-0 binds so far

  -- Connections from the master, counted as they close (see
  -- REPORT_INTERVAL_MS). `received` holds the client handles they were
  -- opened into, until closed.
  local received = setmetatable({}, { __mode = "k" })
  local closed_total = 0
  local reporting = false -- the master asked for reports (newconn.count)
  local report_timer, report_due, last_report = nil, false, -math.huge

  local function report()
    report_due = false
    local queued = worker:_send_internal("closedconns", { total = closed_total })
    last_report = uv.now()
    if queued == nil and worker:isConnected() then
      report_due = true
      report_timer:start(REPORT_RETRY_MS, 0, report)
    end
  end

  local function count_close()
    closed_total = closed_total + 1
    if not reporting or report_due then return end
    report_due = true
    if not report_timer then
      report_timer = uv.new_timer()
      report_timer:unref() -- a report alone does not keep a worker running
    end
    local wait = last_report + share.REPORT_INTERVAL_MS - uv.now()
    report_timer:start(wait > 0 and wait or 0, 0, report)
  end

  local function ask(request)
    local reply, fd = protocol.request(worker._channel, "serve", request, REQUEST_TIMEOUT_MS)
    if not reply then return nil, nil, fd end
    return reply, fd
  end

  -- luv's own argument checks, which a bind gets before the master sees it
  -- (the master checks the values: a port out of range is EINVAL).
  local function check_handle(handle, kind, fname)
    local ok, t = pcall(uv.handle_get_type, handle)
    if not ok or t ~= kind then
      error(("bad argument #1 to '%s' (uv_%s expected, got %s)"):format(fname, kind,
        ok and "uv_" .. tostring(t) or type(handle)), 3)
    end
  end
  local function check_string(v, n, fname)
    if type(v) == "number" then return tostring(v) end
    if type(v) ~= "string" then
      error(("bad argument #%d to '%s' (string expected, got %s)"):format(n, fname, type(v)), 3)
    end
    return v
  end
  local function check_integer(v, n, fname)
    local i = (type(v) == "number" or type(v) == "string") and compat.tointeger(tonumber(v))
    if i then return i end
    local why = type(v) == "number" and "number has no integer representation"
      or ("number expected, got " .. type(v))
    error(("bad argument #%d to '%s' (%s)"):format(n, fname, why), 3)
  end

  -- The n-th port-0 bind of this worker on an address: the master gives
  -- the n-th ones of every worker the same real port.
  local function port0_index(kind, host, port)
    if port ~= 0 then return nil end
    local k = kind .. ":" .. tostring(host)
    local index = (port0_count[k] or 0) + 1
    port0_count[k] = index
    return index
  end

  local function announce(server)
    if server.announced then return end
    server.announced = true
    worker:_send_internal("listening", { key = server.key, address = server.address })
    defer.call(function() worker:emit("listening", server.address) end)
  end

  -- bind for all three kinds: kind "tcp"/"udp" with (host, port), "pipe"
  -- with (path).
  local function shared_bind(kind, handle, host, port, flags)
    local reply, fd, err = ask({
      type = kind, address = host, port = port, index = kind ~= "pipe" and port0_index(kind, host, port) or nil,
      ipv6only = type(flags) == "table" and flags.ipv6only or nil,
    })
    if not reply then return luv_error("EIO", "no answer from the master: " .. tostring(err)) end
    if reply.errname then
      -- libuv reports a TCP address in use at listen(), not bind().
      if kind == "tcp" and reply.errname == "EADDRINUSE" then
        servers[handle] = { type = kind, error = { reply.errname, reply.errmsg } }
        return 0
      end
      return luv_error(reply.errname, reply.errmsg)
    end
    local server = { key = reply.key, type = kind, policy = reply.policy, address = reply.address }
    if fd then
      local open = kind == "tcp" and orig.tcp_open or kind == "pipe" and orig.pipe_open or orig.udp_open
      local ok, oerr, oname = open(handle, fd)
      if not ok then
        core.close(fd)
        worker:_send_internal("close", { key = reply.key })
        return nil, oerr, oname
      end
    else
      server.rr, server.pending = true, {}
    end
    servers[handle] = server
    if kind == "udp" then announce(server) end
    return 0
  end

  local function tcp_bind(handle, host, port, flags)
    check_handle(handle, "tcp", "tcp_bind")
    host = check_string(host, 2, "tcp_bind")
    port = check_integer(port, 3, "tcp_bind")
    return shared_bind("tcp", handle, host, port, flags)
  end
  local function pipe_bind(handle, path)
    check_handle(handle, "pipe", "pipe_bind")
    path = check_string(path, 2, "pipe_bind")
    -- The master binds in its own cwd: a relative path is the worker's.
    if path:sub(1, 1) ~= "/" and path ~= "" then path = uv.cwd() .. "/" .. path end
    return shared_bind("pipe", handle, path)
  end
  local function udp_bind(handle, host, port, flags)
    check_handle(handle, "udp", "udp_bind")
    host = check_string(host, 2, "udp_bind")
    port = check_integer(port, 3, "udp_bind")
    return shared_bind("udp", handle, host, port, flags)
  end

  local function listen(handle, backlog, cb)
    local server = servers[handle]
    if not server then return orig.listen(handle, backlog, cb) end
    if server.error then
      servers[handle] = nil
      return luv_error(server.error[1], server.error[2])
    end
    if server.rr then
      server.cb, server.listening = cb, true
      announce(server)
      return 0
    end
    local ok, err, name = orig.listen(handle, backlog, cb)
    if not ok then return ok, err, name end
    announce(server)
    return ok -- one result on success, as luv gives
  end

  local function accept(handle, client)
    local server = servers[handle]
    if not (server and server.rr) then return orig.accept(handle, client) end
    local fd = table.remove(server.pending, 1)
    if not fd then return luv_error(EAGAIN[1], EAGAIN[2]) end
    local open = server.type == "pipe" and orig.pipe_open or orig.tcp_open
    local ok, err, name = open(client, fd)
    if not ok then
      core.close(fd)
      count_close()
      return ok, err, name
    end
    received[client] = true
    return ok -- one result on success, as luv gives
  end

  -- Tell the master the server is gone, give back connections it was sent
  -- but never accepted, then close for real.
  local function release(handle)
    local server = servers[handle]
    if not server then return end
    servers[handle] = nil
    if not server.key then return end
    worker:_send_internal("close", { key = server.key })
    for _, fd in ipairs(server.pending or {}) do
      if worker:_send_internal("handback", { key = server.key }, fd, true) == nil then
        core.close(fd)
        count_close()
      end
    end
  end

  local function close(handle, cb)
    if received[handle] then
      received[handle] = nil
      count_close()
    else
      release(handle)
    end
    return orig.close(handle, cb)
  end

  -- An rr server has no socket of its own: its address is the master's.
  -- Any other handle answers from its socket, each kind with luv's own.
  local function rr_sockname(handle)
    local server = servers[handle]
    if not (server and server.rr) then return nil end
    local a = server.address
    if server.type == "pipe" then return a.address end
    return { ip = a.address, port = a.port, family = a.family }
  end
  local function tcp_getsockname(handle)
    return rr_sockname(handle) or orig.tcp_getsockname(handle)
  end
  local function pipe_getsockname(handle)
    return rr_sockname(handle) or orig.pipe_getsockname(handle)
  end

  -- A connection from the master for an rr server.
  protocol.handle("newconn", function(_, message, fd)
    reporting = message.count == true
    for _, server in pairs(servers) do
      if server.key == message.key and server.rr and server.listening then
        local pending = server.pending
        pending[#pending + 1] = fd
        call_protected("a listen callback", server.cb, nil)
        return
      end
    end
    -- Closed meanwhile: back to the master, which gives it to another worker.
    if worker:_send_internal("handback", { key = message.key }, fd, true) == nil then
      core.close(fd)
      count_close()
    end
  end)
  -- A reply that came after its request gave up waiting.
  protocol.handle("reply", function(_, _, fd) protocol.release(fd) end)

  -- worker:disconnect() closes every shared server, then calls done.
  function worker._close_servers(done)
    local left = 1
    local function one() left = left - 1 if left == 0 then done() end end
    for handle in pairs(servers) do
      if not handle:is_closing() then
        left = left + 1
        close(handle, one)
      else
        release(handle)
      end
    end
    one()
  end

  -- cluster.listenfd(host, port[, backlog]) -> fd
  function cluster.listenfd(host, port, backlog)
    if type(host) ~= "string" then error("bad argument 'host' (string expected, got " .. type(host) .. ")", 2) end
    if not compat.is_integer(port) or port < 0 or port > 65535 then
      error("bad argument 'port' (0-65535 expected)", 2)
    end
    if backlog ~= nil and not compat.is_integer(backlog) then error("bad argument 'backlog' (integer expected)", 2) end
    local reply, fd, err = ask({ type = "tcp", address = host, port = port,
      index = port0_index("tcp", host, port), backlog = backlog, fd = true })
    if not reply then return luv_error("EIO", "no answer from the master: " .. tostring(err)) end
    if reply.errname then return luv_error(reply.errname, reply.errmsg) end
    announce({ key = reply.key, address = reply.address })
    return fd
  end

  -- The wrappers, as methods and as uv.* functions.
  methods.tcp.bind, uv.tcp_bind = tcp_bind, tcp_bind
  methods.pipe.bind, uv.pipe_bind = pipe_bind, pipe_bind
  methods.udp.bind, uv.udp_bind = udp_bind, udp_bind
  methods.tcp.listen, methods.pipe.listen, uv.listen = listen, listen, listen
  methods.tcp.accept, methods.pipe.accept, uv.accept = accept, accept, accept
  methods.tcp.close, methods.pipe.close, methods.udp.close, uv.close = close, close, close, close
  methods.tcp.getsockname, uv.tcp_getsockname = tcp_getsockname, tcp_getsockname
  methods.pipe.getsockname, uv.pipe_getsockname = pipe_getsockname, pipe_getsockname
end

return share
