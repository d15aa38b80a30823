-- cluster.core's listening sockets: listen_socket, accept, sockname and the
-- fd flag helpers, driven with luv clients on loopback and unix paths.
local helper = require("helper")
local uv = require("luv")
local core = require("cluster.core")

local O_NONBLOCK = 0x800   -- 04000
local O_CLOEXEC = 0x80000  -- 02000000

-- Whether bit (a power of two) is set in flags; arithmetic, as 5.1, 5.2
-- and LuaJIT have no bitwise operators.
local function has_bit(flags, bit)
  return math.floor(flags / bit) % 2 == 1
end

-- The open flags of one of our fds, from /proc.
local function fd_flags(fd)
  local f = assert(io.open("/proc/self/fdinfo/" .. fd))
  local info = f:read("*a")
  f:close()
  return tonumber(info:match("flags:%s*(%d+)"), 8)
end

local function assert_nonblocking_cloexec(fd)
  local flags = fd_flags(fd)
  assert.is_true(has_bit(flags, O_NONBLOCK), "fd " .. fd .. " is blocking")
  assert.is_true(has_bit(flags, O_CLOEXEC), "fd " .. fd .. " is not close-on-exec")
end

-- A kernel without IPv6 (or with it disabled on lo) is a real condition:
-- only the ::1 case is skipped then.
local function have_ipv6()
  local probe = uv.new_udp()
  local ok = probe:bind("::1", 0)
  helper.close(probe)
  return ok ~= nil
end

local function read_number(path)
  local f = io.open(path)
  if not f then return nil end
  local n = tonumber(f:read("*l"))
  f:close()
  return n
end

-- Whether this process may bind port 80: root, CAP_NET_BIND_SERVICE, or a
-- lowered net.ipv4.ip_unprivileged_port_start (containers often set 0).
local function may_bind_port_80()
  if uv.getuid() == 0 then return true end
  local start = read_number("/proc/sys/net/ipv4/ip_unprivileged_port_start")
  if start and start <= 80 then return true end
  local f = io.open("/proc/self/status")
  local status = f and f:read("*a") or ""
  if f then f:close() end
  local capeff = tonumber(status:match("CapEff:%s*(%x+)") or "0", 16)
  return has_bit(capeff, 2 ^ 10) -- CAP_NET_BIND_SERVICE
end

-- Poll core.accept until n connections came in; returns them all.
local function accept_n(fd, n)
  local got = {}
  helper.wait(function()
    for _, conn in ipairs(assert(core.accept(fd))) do got[#got + 1] = conn end
    return #got >= n
  end, 5000)
  return got
end

describe("core.listen_socket", function()
  local fds_before, tmpdir

  setup(function()
    -- libuv opens its EMFILE reserve fd with the loop's first stream and
    -- keeps it: have it open before counting.
    helper.close(uv.new_tcp())
    fds_before = helper.fd_count()
    tmpdir = assert(uv.fs_mkdtemp("/tmp/luv-cluster-listen-XXXXXX"))
  end)

  teardown(function()
    local req = uv.fs_scandir(tmpdir)
    while req do
      local name = uv.fs_scandir_next(req)
      if not name then break end
      uv.fs_unlink(tmpdir .. "/" .. name)
    end
    assert(uv.fs_rmdir(tmpdir))
  end)

  -- Each test closes what it opened, even when it fails.
  local fds, handles
  before_each(function() fds, handles = {}, {} end)
  after_each(function()
    for _, h in ipairs(handles) do if not h:is_closing() then helper.close(h) end end
    for _, fd in ipairs(fds) do core.close(fd) end
  end)
  local function keep(fd) fds[#fds + 1] = fd return fd end
  local function keep_all(list) for _, fd in ipairs(list) do keep(fd) end return list end
  local function handle(h) handles[#handles + 1] = h return h end

  it("listens on tcp port 0, and accepts a luv client's connection", function()
    local fd, info = core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 0 })
    assert.is_number(fd, info)
    keep(fd)
    assert_nonblocking_cloexec(fd)
    assert.equal("inet", info.family)
    assert.equal("127.0.0.1", info.address)
    assert.is_true(info.port > 0)
    assert.same(info, core.sockname(fd))

    local client = handle(uv.new_tcp())
    local connected
    client:connect("127.0.0.1", info.port, function(err) connected = err or true end)
    local conns = keep_all(accept_n(fd, 1))
    assert.equal(1, #conns)
    assert.is_true(helper.wait(function() return connected ~= nil end, 5000))
    assert.is_true(connected)

    local conn = conns[1]
    assert_nonblocking_cloexec(conn)
    local local_end = core.sockname(conn)
    assert.same({ address = "127.0.0.1", port = info.port, family = "inet" }, local_end)
    assert.equal(client:getpeername().port, info.port)

    -- Nothing else is pending now.
    assert.same({}, core.accept(fd))

    -- The accepted fd works as a luv stream.
    table.remove(fds) -- the luv handle owns conn from here
    local server_side = handle(uv.new_tcp())
    assert(server_side:open(conn))
    local data = ""
    server_side:read_start(function(err, chunk)
      assert.is_nil(err)
      data = data .. (chunk or "")
    end)
    client:write("hello")
    assert.is_true(helper.wait(function() return data == "hello" end, 5000))
  end)

  it("returns an empty table when no connection is pending", function()
    local fd = keep(assert(core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 0 })))
    assert.same({}, core.accept(fd))
    assert.same({}, core.accept(fd, 1))
  end)

  it("takes at most max connections per call", function()
    local fd, info = core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 0 })
    keep(assert(fd, info))
    local connected = 0
    for _ = 1, 3 do
      handle(uv.new_tcp()):connect("127.0.0.1", info.port, function(err)
        assert.is_nil(err)
        connected = connected + 1
      end)
    end
    -- A loopback connect completes once the kernel has queued it.
    assert.is_true(helper.wait(function() return connected == 3 end, 5000))
    assert.equal(2, #keep_all(assert(core.accept(fd, 2))))
    assert.equal(1, #keep_all(accept_n(fd, 1)))
    assert.same({}, core.accept(fd, 2))
  end)

  it("gives EADDRINUSE for a second listen on the same port", function()
    local fd, info = core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 0 })
    keep(assert(fd, info))
    local fd2, err, name = core.listen_socket({ type = "tcp", host = "127.0.0.1", port = info.port })
    if fd2 then keep(fd2) end
    assert.is_nil(fd2)
    assert.equal("EADDRINUSE", name)
    assert.matches("^bind 127%.0%.0%.1:" .. info.port .. ": ", err)
  end)

  it("lets two reuseport sockets share a port", function()
    local opts = { type = "tcp", host = "127.0.0.1", port = 0, reuseport = true }
    local fd1, info1 = core.listen_socket(opts)
    keep(assert(fd1, info1))
    opts.port = info1.port
    local fd2, info2 = core.listen_socket(opts)
    keep(assert(fd2, info2))
    assert.equal(info1.port, info2.port)
    -- One without SO_REUSEPORT is still turned away.
    local fd3, _, name = core.listen_socket({ type = "tcp", host = "127.0.0.1", port = info1.port })
    if fd3 then keep(fd3) end
    assert.equal("EADDRINUSE", name)

    -- And udp.
    local u1, uinfo = core.listen_socket({ type = "udp", host = "127.0.0.1", port = 0, reuseport = true })
    keep(assert(u1, uinfo))
    local u2, uinfo2 = core.listen_socket({ type = "udp", host = "127.0.0.1", port = uinfo.port, reuseport = true })
    keep(assert(u2, uinfo2))
    assert.equal(uinfo.port, uinfo2.port)
  end)

  it("binds udp port 0 and receives a datagram there", function()
    local fd, info = core.listen_socket({ type = "udp", host = "127.0.0.1", port = 0 })
    keep(assert(fd, info))
    assert_nonblocking_cloexec(fd)
    assert.equal("inet", info.family)
    assert.is_true(info.port > 0)

    table.remove(fds) -- the luv handle owns fd from here
    local receiver = handle(uv.new_udp())
    assert(receiver:open(fd))
    local got, from
    assert(receiver:recv_start(function(err, data, addr)
      assert.is_nil(err)
      if data then got, from = data, addr end
    end))
    local sender = handle(uv.new_udp())
    assert(sender:bind("127.0.0.1", 0))
    assert(sender:send("ping", "127.0.0.1", info.port, function(err) assert.is_nil(err) end))
    assert.is_true(helper.wait(function() return got ~= nil end, 5000))
    assert.equal("ping", got)
    assert.equal(sender:getsockname().port, from.port)
  end)

  it("listens on a unix path, accepts, and refuses the path twice", function()
    local path = tmpdir .. "/server.sock"
    local fd, info = core.listen_socket({ type = "unix", path = path })
    keep(assert(fd, info))
    assert_nonblocking_cloexec(fd)
    assert.same({ address = path, family = "unix" }, info)
    assert.same(info, core.sockname(fd))

    local fd2, err, name = core.listen_socket({ type = "unix", path = path, backlog = 4 })
    if fd2 then keep(fd2) end
    assert.is_nil(fd2)
    assert.equal("EADDRINUSE", name)
    assert.matches("^bind " .. path:gsub("%p", "%%%0") .. ": ", err)

    -- The failed second listen left the first one's socket file alone.
    local client = handle(uv.new_pipe(false))
    local connected
    client:connect(path, function(cerr) connected = cerr or true end)
    local conns = keep_all(accept_n(fd, 1))
    assert.equal(1, #conns)
    assert_nonblocking_cloexec(conns[1])
    assert.same({ address = path, family = "unix" }, core.sockname(conns[1]))
    assert.is_true(helper.wait(function() return connected ~= nil end, 5000))
    assert.is_true(connected)
    assert(uv.fs_unlink(path))
  end)

  it("refuses a unix path longer than sun_path with ENAMETOOLONG", function()
    local path = tmpdir .. "/" .. string.rep("x", 120)
    local fd, err, name = core.listen_socket({ type = "unix", path = path })
    if fd then keep(fd) end
    assert.is_nil(fd)
    assert.equal("ENAMETOOLONG", name)
    assert.is_string(err)
  end)

  if have_ipv6() then
    it("listens on ::1 as inet6", function()
      local fd, info = core.listen_socket({ type = "tcp", host = "::1", port = 0, ipv6only = true })
      keep(assert(fd, info))
      assert.same({ address = "::1", port = info.port, family = "inet6" }, core.sockname(fd))
      assert.same(core.sockname(fd), info)
      local client = handle(uv.new_tcp())
      local connected
      client:connect("::1", info.port, function(err) connected = err or true end)
      local conns = keep_all(accept_n(fd, 1))
      assert.equal(1, #conns)
      assert.is_true(helper.wait(function() return connected ~= nil end, 5000))
      assert.is_true(connected)
      assert.equal("inet6", core.sockname(conns[1]).family)

      local u, uinfo = core.listen_socket({ type = "udp", host = "::1", port = 0 })
      keep(assert(u, uinfo))
      assert.equal("inet6", uinfo.family)
      assert.is_true(uinfo.port > 0)

      local fd2, err, name = core.listen_socket({ type = "tcp", host = "::1", port = info.port })
      if fd2 then keep(fd2) end
      assert.equal("EADDRINUSE", name)
      assert.matches("^bind %[::1%]:" .. info.port .. ": ", err)
    end)
  else
    pending("listens on ::1 as inet6 (this kernel cannot bind ::1)")
  end

  it("raises on bad arguments, naming the field", function()
    local function raises(pattern, opts)
      local ok, err = pcall(core.listen_socket, opts)
      assert.is_false(ok)
      assert.matches(pattern, err)
    end
    raises("table expected", nil)
    raises("field 'type'", { host = "127.0.0.1", port = 0 })
    raises("field 'type'", { type = "sctp", host = "127.0.0.1", port = 0 })
    raises("field 'host'", { type = "tcp", port = 0 })
    raises("field 'host'", { type = "tcp", host = 127, port = 0 })
    raises("field 'port'", { type = "tcp", host = "127.0.0.1" })
    raises("field 'port'", { type = "tcp", host = "127.0.0.1", port = 65536 })
    raises("field 'port'", { type = "udp", host = "127.0.0.1", port = -1 })
    raises("field 'port'", { type = "tcp", host = "127.0.0.1", port = "80" })
    raises("field 'port'", { type = "tcp", host = "127.0.0.1", port = 1.5 })
    raises("field 'backlog'", { type = "tcp", host = "127.0.0.1", port = 0, backlog = -1 })
    raises("field 'reuseport'", { type = "tcp", host = "127.0.0.1", port = 0, reuseport = 1 })
    raises("field 'ipv6only'", { type = "tcp", host = "::1", port = 0, ipv6only = "yes" })
    raises("field 'path'", { type = "unix" })
    raises("field 'path'", { type = "unix", path = "" })
    raises("field 'path'", { type = "unix", path = tmpdir .. "/a\0b" })

    assert.has_error(function() core.accept(-1) end)
    assert.has_error(function() core.accept(0, 0) end)
    assert.has_error(function() core.sockname("x") end)
    assert.has_error(function() core.set_nonblocking(0, "yes") end)
  end)

  it("returns EINVAL for a host name: numeric addresses only", function()
    local fd, err, name = core.listen_socket({ type = "tcp", host = "localhost", port = 0 })
    if fd then keep(fd) end
    assert.is_nil(fd)
    assert.equal("EINVAL", name)
    assert.matches("localhost", err)
  end)

  it("binds the privileged port 80 only with the right to", function()
    local fd, err, name = core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 80 })
    if fd then keep(fd) end
    if may_bind_port_80() then
      -- Something may already listen there.
      assert.is_true(fd ~= nil or name == "EADDRINUSE", err)
      if fd then assert.equal(80, err.port) end
    else
      assert.is_nil(fd)
      assert.equal("EACCES", name)
      assert.matches("^bind 127%.0%.0%.1:80: ", err)
    end
  end)

  it("reports accept and sockname errors in luv's shape", function()
    local u = keep(assert(core.listen_socket({ type = "udp", host = "127.0.0.1", port = 0 })))
    -- Not a listener: an error, not an endless retry of EOPNOTSUPP.
    local list, err, name = core.accept(u)
    assert.is_nil(list)
    assert.equal("EOPNOTSUPP", name)
    assert.matches("^accept fd " .. u .. ": ", err)

    -- A closed fd.
    local closed = assert(core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 0 }))
    core.close(closed)
    assert.equal("EBADF", select(3, core.accept(closed)))
    assert.equal("EBADF", select(3, core.sockname(closed)))
    assert.equal("EBADF", select(3, core.set_nonblocking(closed, true)))
    assert.equal("EBADF", select(3, core.set_cloexec(closed)))
  end)

  it("switches O_NONBLOCK and sets FD_CLOEXEC", function()
    local fd = keep(assert(core.listen_socket({ type = "tcp", host = "127.0.0.1", port = 0 })))
    assert.is_true(core.set_nonblocking(fd, false))
    assert.is_false(has_bit(fd_flags(fd), O_NONBLOCK))
    assert.is_true(core.set_nonblocking(fd, true))
    assert.is_true(has_bit(fd_flags(fd), O_NONBLOCK))
    assert.is_true(core.set_nonblocking(fd))
    assert.is_true(core.set_cloexec(fd))
    assert_nonblocking_cloexec(fd)
  end)

  it("leaves no fd open", function()
    -- after_each ran for every test above; luv handles are closed too.
    assert.equal(fds_before, helper.fd_count())
  end)
end)
