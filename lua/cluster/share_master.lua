-- Port sharing, master side: one server per key (type, address, port, and
-- for port 0 the worker's n-th such bind), held by a count of worker
-- binds and closed with the last. Policies:
--   shared     the master binds once and gives each worker the listening fd
--   rr         the master accepts (core.accept, in C) and hands each
--              connection's fd to a ready worker, which settings.balance
--              picks:
--                roundrobin  the next one in turn
--                leastconn   the one with the fewest connections handed to
--                            it and not yet closed (ties in turn); workers
--                            report closes in batches (closedconns)
--                source      rendezvous hashing of the client's IP address
--                            over the ready workers' ids (core.rendezvous)
--   reuseport  each worker gets its own SO_REUSEPORT listening socket; the
--              master holds the port with a bound, non-listening one
-- UDP is always shared.

local uv = require("luv")
local core = require("cluster.core")
local protocol = require("cluster.protocol")
local compat = require("cluster.compat")
local OWNED_ENV = require("cluster.upgrade").OWNED_ENV

local share = {}

-- "bind 127.0.0.1:80: Permission denied" -> luv's "EACCES: permission denied"
local function errmsg(err)
  local text = tostring(err):match(".*: (.*)$") or tostring(err)
  return text:sub(1, 1):lower() .. text:sub(2)
end

-- core.listen_socket, never raising: a request it cannot use is EINVAL.
local function listen_socket(opts)
  local ok, fd, info, name = pcall(core.listen_socket, opts)
  if not ok then return nil, "invalid argument (" .. tostring(fd):gsub("^.-: ", "") .. ")", "EINVAL" end
  return fd, info, name
end

local warned_migrate = false
local function warn_migrate_once(cluster)
  if warned_migrate then return end
  warned_migrate = true
  local f = io.open("/proc/sys/net/ipv4/tcp_migrate_req")
  local value = f and f:read("*l")
  if f then f:close() end
  if value == "0" then
    cluster:warn("reuseport with net.ipv4.tcp_migrate_req = 0: connections queued on a worker's socket"
      .. " are reset when that worker closes it (sysctl -w net.ipv4.tcp_migrate_req=1)")
  end
end

-- Sockets systemd passed in (LISTEN_FDS, from fd 3, for this pid only):
-- a bind that matches one uses it instead of binding. The variables are
-- removed so that workers do not take them for theirs. Those an upgrading
-- runner's master had made itself (upgrade.OWNED_ENV) are marked `adopt`:
-- this master's own once share.adopt() says so.
local function inherited_sockets()
  local found = {}
  local n = compat.tointeger(tonumber(os.getenv("LISTEN_FDS") or ""))
  local pid = compat.tointeger(tonumber(os.getenv("LISTEN_PID") or ""))
  local owned = {}
  for digits in (os.getenv(OWNED_ENV) or ""):gmatch("%d+") do
    local fd = compat.tointeger(tonumber(digits))
    if fd then owned[fd] = true end
  end
  if n and pid == compat.tointeger(uv.os_getpid()) then
    for fd = 3, 3 + n - 1 do
      local info = core.sockname(fd)
      local kind = info and core.socket_type(fd)
      if info and core.set_cloexec(fd) and core.set_nonblocking(fd, true) then
        found[#found + 1] = { fd = fd, info = info, stream = kind == "stream", adopt = owned[fd] or nil }
      end
    end
  end
  if n then
    uv.os_unsetenv("LISTEN_FDS")
    uv.os_unsetenv("LISTEN_PID")
    uv.os_unsetenv("LISTEN_FDNAMES")
  end
  if os.getenv(OWNED_ENV) then uv.os_unsetenv(OWNED_ENV) end
  return found
end

-- The inherited socket for a request, if one matches.
local function find_inherited(list, request)
  if request.port == 0 then return nil end
  for _, s in ipairs(list) do
    local a = s.info
    local stream = request.type ~= "udp"
    if s.stream == stream and not s.taken then
      if request.type == "pipe" and a.family == "unix" and a.address == request.address then return s end
      if request.type ~= "pipe" and a.address == request.address and a.port == request.port then return s end
    end
  end
end

function share.install(cluster)
  local servers = {} -- key -> server
  local inherited = inherited_sockets()
  local held = setmetatable({}, { __mode = "k" }) -- worker -> { key -> count }
  local handed = false -- share.hand_over() was called

  local function close_server(server)
    servers[server.key] = nil
    if server.poll then
      server.poll:stop()
      server.poll:close()
    end
    if server.retry then server.retry:close() end
    for _, fd in ipairs(server.queue or {}) do core.close(fd) end
    server.hashes = nil
    if server.inherited then
      -- systemd's socket, or one an upgrade handed over: kept for a later
      -- bind (an adopted one's file is removed at exit: share.at_exit).
      server.inherited.taken = false
      return
    end
    -- A new master serves it now (the runner's upgrade): left open, its
    -- socket file in place, until this process exits.
    if server.handed_over then return end
    core.close(server.fd)
    if server.type == "pipe" then os.remove(server.address.address) end
  end

  -- The workers an rr server may hand a connection to, in turn.
  local function ready(server, worker)
    return server.listening[worker] and worker:isConnected() and not worker._draining
  end

  -- Connections handed to a worker that it has not given back or closed.
  -- `_handed` and `_handed_back` are counted here under every balance;
  -- `_closed` is the worker's own running total, reported while leastconn
  -- is in force (closedconns), so it may lag by the report interval.
  local function open_conns(worker)
    return worker._handed - worker._handed_back - worker._closed
  end

  -- The index in server.order of the worker for a connection, or nil when
  -- no worker can take one. `hash` is the client address hash (source);
  -- `refused` holds workers whose channel just refused this connection.
  local function pick_roundrobin(server, _, refused)
    local order = server.order
    local n = #order
    for _ = 1, n do
      server.turn = server.turn % n + 1
      local worker = order[server.turn]
      if ready(server, worker) and not (refused and refused[worker]) then return server.turn end
    end
    return nil
  end

  local function pick_leastconn(server, _, refused)
    local order, turn = server.order, server.turn
    local n = #order
    local best, fewest
    -- From the one after the last pick, so ties go round robin.
    for k = 1, n do
      local i = (turn + k - 1) % n + 1
      local worker = order[i]
      if ready(server, worker) and not (refused and refused[worker]) then
        local conns = open_conns(worker)
        if not fewest or conns < fewest then best, fewest = i, conns end
      end
    end
    if best then server.turn = best end
    return best
  end

  local keys, places = {}, {} -- source's scratch lists: ids and their index in order
  local function pick_source(server, hash, refused)
    if not hash then return pick_roundrobin(server, nil, refused) end -- a unix socket's client
    local order, n = server.order, 0
    for i = 1, #order do
      local worker = order[i]
      if ready(server, worker) and not (refused and refused[worker]) then
        n = n + 1
        keys[n], places[n] = worker.id, i
      end
    end
    if n == 0 then return nil end
    return places[core.rendezvous(hash, keys, n)]
  end

  local PICK = { roundrobin = pick_roundrobin, leastconn = pick_leastconn, source = pick_source }

  -- Hand the queued connections to the workers settings.balance picks, one
  -- pick per connection. The channel takes the fd itself (no descriptor is
  -- spent on a copy); a worker whose channel refuses it (closed, queue
  -- full) is left out for that connection only, and it stays ours. When
  -- nobody can take one, accepting stops until a worker can.
  local function dispatch(server)
    local balance = cluster.settings.balance
    local pick = PICK[balance] or pick_roundrobin
    local count = balance == "leastconn" or nil
    local queue, order, hashes = server.queue, server.order, server.hashes
    while #queue > 0 do
      local fd = queue[1]
      local hash = hashes[fd]
      local refused
      local i = pick(server, hash, nil)
      while i do
        local worker = order[i]
        if worker:_send_internal("newconn", { key = server.key, count = count }, fd, true) ~= nil then
          worker._handed = worker._handed + 1
          table.remove(queue, 1)
          hashes[fd] = nil
          break
        end
        refused = refused or {}
        refused[worker] = true
        i = pick(server, hash, refused)
      end
      if not i then
        server.poll:stop()
        server.paused = true
        return
      end
    end
    if server.paused and not server.handed_over then
      server.paused = false
      server.poll:start("r", server.on_readable)
    end
  end

  local function start_rr(server)
    server.queue, server.order, server.turn, server.listening = {}, {}, 0, {}
    server.hashes = {} -- fd -> client address hash, for the queued ones (source)
    server.poll = uv.new_poll(server.fd)
    server.on_readable = function()
      local source = cluster.settings.balance == "source"
      local fds, hashes, name = core.accept(server.fd, 64, source)
      if not fds then
        -- Out of fds or memory: the connection stays in the kernel's
        -- backlog (better than accepted and dropped) and a level-triggered
        -- poll would spin; look again a little later.
        if name == "EMFILE" or name == "ENFILE" or name == "ENOBUFS" or name == "ENOMEM" then
          server.poll:stop()
          server.retry = server.retry or uv.new_timer()
          server.retry:start(100, 0, function()
            if servers[server.key] == server and not server.paused and not server.handed_over then
              server.poll:start("r", server.on_readable)
            end
          end)
        end
        return
      end
      local queue = server.queue
      for i = 1, #fds do queue[#queue + 1] = fds[i] end
      if source then
        local by_fd = server.hashes
        for i = 1, #fds do by_fd[fds[i]] = hashes[i] end
      end
      dispatch(server)
    end
    server.poll:start("r", server.on_readable)
  end

  local function open_server(key, request, policy)
    local kind = request.type
    local given = find_inherited(inherited, request)
    if given then
      -- One listening socket, systemd's: shared or rr, never reuseport.
      if policy == "reuseport" then policy = "shared" end
      given.taken = true
      local server = { key = key, type = kind, policy = policy, fd = given.fd, address = given.info,
        holders = 0, inherited = given }
      if policy == "rr" then start_rr(server) end
      servers[key] = server
      return server
    end
    local opts = {
      type = kind == "pipe" and "unix" or kind, host = request.address, port = request.port,
      path = kind == "pipe" and request.address or nil, backlog = request.backlog,
      ipv6only = request.ipv6only,
    }
    if policy == "reuseport" then
      opts.reuseport, opts.listen = true, false
      warn_migrate_once(cluster)
    end
    local fd, info, name = listen_socket(opts)
    if not fd then return nil, info, name end
    local server = { key = key, type = kind, policy = policy, fd = fd, address = info, holders = 0 }
    if policy == "rr" then start_rr(server) end
    servers[key] = server
    return server
  end

  local function reply_error(request, name, message)
    return protocol.message("reply", { seq = request.seq, errname = name, errmsg = message })
  end

  -- What is wrong with a bind request, in luv's words, or nil. A worker's
  -- luv checks its arguments' types as luv does; these are the values no
  -- socket can be made from (and anything a broken worker may send).
  local function invalid(request)
    local address = request.address
    if type(address) ~= "string" or address == "" or #address > 4096 or address:find("%z") then
      return "address must be a non-empty string"
    end
    if request.type ~= "pipe" then
      local port = request.port
      if not compat.is_integer(port) or port < 0 or port > 65535 then return "port must be an integer 0..65535" end
      local index = request.index
      if index ~= nil and (not compat.is_integer(index) or index < 1) then return "bad port-0 index" end
    end
    local backlog = request.backlog
    if backlog ~= nil and (not compat.is_integer(backlog) or backlog < 0 or backlog > 0x7fffffff) then
      return "backlog must be an integer 0..2^31-1"
    end
    if request.ipv6only ~= nil and type(request.ipv6only) ~= "boolean" then return "ipv6only must be a boolean" end
    if request.fd ~= nil and request.fd ~= true then return "bad fd flag" end
    return nil
  end

  -- A worker's bind: find or open the server, take a hold on it, and answer
  -- with the address and, except under rr, a socket for the worker.
  -- Returns the reply, the fd to send with it, and whether that fd is the
  -- reply's own (to be handed to the channel).
  local function serve(worker, request)
    local bad = invalid(request)
    if bad then return reply_error(request, "EINVAL", "invalid argument (" .. bad .. ")") end
    local kind = request.type
    local policy = cluster.schedulingPolicy
    if kind == "udp" or (request.fd and policy == "rr") then policy = "shared" end
    if kind == "pipe" and policy == "reuseport" then policy = "shared" end
    local key = table.concat({ kind, request.address, tostring(request.port),
      tostring(request.index or ""), request.fd and "fd" or "" }, ":")
    local server = servers[key]
    if not server then
      local err, name
      server, err, name = open_server(key, request, policy)
      if not server then return reply_error(request, name or "EINVAL", errmsg(err)) end
    end
    local fd
    if server.policy == "reuseport" then
      local a = server.address
      local err, name
      fd, err, name = listen_socket({ type = "tcp", host = a.address, port = a.port,
        reuseport = true, backlog = request.backlog, ipv6only = request.ipv6only })
      if not fd then
        if server.holders == 0 then close_server(server) end
        return reply_error(request, name, errmsg(err))
      end
    elseif server.policy == "shared" then
      fd = server.fd
    end
    server.holders = server.holders + 1
    local mine = held[worker] or {}
    held[worker] = mine
    mine[key] = (mine[key] or 0) + 1
    if server.order then
      server.order[#server.order + 1] = worker
      worker._handed = worker._handed or 0
      worker._handed_back = worker._handed_back or 0
      worker._closed = worker._closed or 0
    end
    return protocol.message("reply", { seq = request.seq, key = key, policy = server.policy,
      address = server.address }), fd, server.policy == "reuseport"
  end

  -- One hold on `key` by `worker` is gone.
  local function release(worker, key)
    local mine = held[worker]
    local server = servers[key]
    if not mine or not mine[key] or not server then return end
    mine[key] = mine[key] - 1
    if mine[key] == 0 then
      mine[key] = nil
      if server.order then
        for i = #server.order, 1, -1 do
          if server.order[i] == worker then table.remove(server.order, i) end
        end
        server.listening[worker] = nil
      end
    end
    server.holders = server.holders - 1
    if server.holders == 0 then close_server(server) end
  end

  -- The sharing protocol's kinds from a worker.
  protocol.handle("serve", function(worker, message)
    local reply, fd, own = serve(worker, message)
    local queued, err = worker:_send_internal("reply", reply, fd, own)
    if queued == nil then
      if own then core.close(fd) end
      if fd then
        -- No descriptor to pass the socket (EMFILE) or no room: say so
        -- rather than leave the worker waiting.
        release(worker, reply.key)
        worker:_send_internal("reply", { seq = message.seq, errname = tostring(err):match("^(%u+):") or "EIO",
          errmsg = errmsg(err) })
      end
    end
  end)
  protocol.handle("listening", function(worker, message)
    local server = servers[message.key]
    if server and server.listening then
      server.listening[worker] = true
      if #server.queue > 0 or server.paused then dispatch(server) end
    end
    worker.state = "listening"
    worker:emit("listening", message.address)
    cluster:emit("listening", worker, message.address)
  end)
  protocol.handle("close", function(worker, message)
    release(worker, message.key)
  end)
  protocol.handle("handback", function(worker, message, fd)
    worker._handed_back = (worker._handed_back or 0) + 1
    local server = servers[message.key]
    if server and server.queue then
      table.insert(server.queue, 1, fd)
      if cluster.settings.balance == "source" then
        server.hashes[fd] = core.peer_hash(fd) or nil -- false for unix: round robin
      end
      dispatch(server)
    else
      core.close(fd)
    end
  end)
  protocol.handle("closedconns", function(worker, message)
    -- A running total: an older one (reordered it cannot be, but a
    -- confused worker might send one) never lowers it.
    if message.total > (worker._closed or 0) then worker._closed = message.total end
  end)

  -- The worker will not take new connections (it is disconnecting).
  function share.drain(worker)
    worker._draining = true
  end

  -- The worker is gone: every hold it had goes.
  function share.forget(worker)
    local mine = held[worker]
    if not mine then return end
    for key, count in pairs(mine) do
      for _ = 1, count do release(worker, key) end
    end
    held[worker] = nil
  end

  -- For a new master taking over (the runner's upgrade): the listening
  -- sockets its workers' binds should get, as { fd =, address =, own = } —
  -- every open rr or shared server, and the inherited sockets no bind
  -- took; own is true for those this master made or adopted (or was to
  -- adopt), false for systemd's.
  -- (reuseport servers are one socket per worker: a new master binds its own.)
  function share.listening()
    local list = {}
    for _, server in pairs(servers) do
      if server.policy ~= "reuseport" then
        local given = server.inherited
        local own = not given or given.own or given.adopt or false
        list[#list + 1] = { fd = server.fd, address = server.address, own = own }
      end
    end
    for _, s in ipairs(inherited) do
      if not s.taken then list[#list + 1] = { fd = s.fd, address = s.info, own = s.own or s.adopt or false } end
    end
    table.sort(list, function(a, b) return a.fd < b.fd end)
    return list
  end

  -- A new master serves these sockets now: this one stops accepting on
  -- them (rr) and, when its servers close, leaves their fds to the exit
  -- and their socket files in place.
  function share.hand_over()
    handed = true
    for _, server in pairs(servers) do
      if server.policy ~= "reuseport" then
        server.handed_over = true
        if server.poll and not server.poll:is_closing() then
          -- What it accepted already goes to its workers first.
          if #server.queue > 0 then dispatch(server) end
          server.poll:stop()
          server.paused = true
        end
      end
    end
  end

  -- In a runner started by an upgrade, once the old runner has let go:
  -- the sockets the old runner's master had made (upgrade.OWNED_ENV) are
  -- this master's from now on. Like systemd's, they stay open while it
  -- runs (a worker that binds again gets the same socket), but a unix
  -- socket's file is its to remove at exit (share.at_exit). Until then (a
  -- new runner that fails) the old runner owns them.
  function share.adopt()
    for _, s in ipairs(inherited) do
      if s.adopt then s.own, s.adopt = true, nil end
    end
  end

  -- The runner exits: the files of the unix sockets this master owns are
  -- removed, unless it handed them over to a new master — adopted ones,
  -- and servers of its own still open (a server's file otherwise goes
  -- when it closes).
  function share.at_exit()
    if handed then return end
    for _, server in pairs(servers) do
      if server.type == "pipe" and not server.inherited then os.remove(server.address.address) end
    end
    for _, s in ipairs(inherited) do
      if s.own and s.info.family == "unix" then os.remove(s.info.address) end
    end
  end

  -- cluster.listenfd in the master: a listening socket of its own.
  function cluster.listenfd(host, port, backlog)
    if type(host) ~= "string" then error("bad argument 'host' (string expected, got " .. type(host) .. ")", 2) end
    if not compat.is_integer(port) or port < 0 or port > 65535 then
      error("bad argument 'port' (0-65535 expected)", 2)
    end
    local fd, info, name = listen_socket({ type = "tcp", host = host, port = port, backlog = backlog,
      reuseport = cluster.schedulingPolicy == "reuseport" })
    if not fd then return nil, name .. ": " .. errmsg(info), name end
    cluster:emit("listening", nil, info)
    return fd
  end
end

return share
