-- An HTTP/1.1 keep-alive app made to sit behind a load balancer (HAProxy,
-- a Kubernetes Service), run by the runner:
--
--   luv-cluster -w 2 examples/health_app.lua      (BIND=0.0.0.0 PORT=8080)
--
--   GET /healthz  200 "ok" while this worker serves; 503 "draining" once
--                 it drains (the balancer's health check)
--   anything else 200 "host <name> worker <id> pid <pid> path <path>"
--                 (APP_HOST_NAME names the host; default: the hostname)
--
-- Draining: when the runner lets a worker go (SIGHUP reload, SIGTERM
-- stop, scale down), cluster.worker's 'draining' event fires, before the
-- worker's servers close. A keep-alive server must then end its own
-- connections, or they keep the worker's loop alive until the runner's
-- --stop-timeout SIGKILLs it, mid-request. Here, once draining:
--   - every response says `Connection: close` and its connection is then
--     ended (FIN, see `finish`): a connection in use ends after its next
--     answer, and the peer knows not to send more on it;
--   - a connection quiet between requests for DRAIN_QUIET_MS is ended
--     (one quiet that long already is ended at once), and one stalled
--     mid-request for DRAIN_STALL_MS.
-- When the last connection is gone the loop has nothing left and the
-- worker exits 0, long before the stop timeout. Ending a quiet connection
-- races with a request the peer may be sending on it (HTTP/1.1's
-- keep-alive race): that request gets no answer and the client or
-- balancer must retry it (HAProxy: `retry-on conn-failure
-- empty-response`, deploy/haproxy.cfg). Answering the next request with
-- `Connection: close` instead of ending busy connections at once keeps
-- that race to connections that were really idle: behind HAProxy under
-- load, deploy/test-hosts.sh lost 27 requests in a rolling reload when
-- every connection was ended at once and HAProxy did not retry, none this
-- way.
local uv = require("luv")
local cluster = require("cluster")

local BIND = os.getenv("BIND") or "0.0.0.0"
local PORT = tonumber(os.getenv("PORT")) or 8080
local HOST = os.getenv("APP_HOST_NAME") or uv.os_gethostname()
local IDLE_MS = 30000       -- a keep-alive connection idle this long is ended
local DRAIN_QUIET_MS = 500  -- while draining: quiet between requests this long
local DRAIN_STALL_MS = 5000 -- ... or stalled mid-request this long
local LINGER_MS = 2000      -- after our FIN, wait this long for the peer's
local MAX_HEAD = 8192       -- bytes of request line and headers
local MAX_BODY = 65536      -- bytes of a request body (read and dropped)

local me = cluster.worker -- nil when run without the runner: no draining
local WHO = ("host %s worker %s pid %d"):format(HOST, me and tostring(me.id) or "-", uv.os_getpid())

local draining = false
local conns = {} -- tcp handle -> { buf =, ending =, last =, deadline = }

local function response(status, body, close)
  return ("HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"):format(
    status, #body, close and "Connection: close\r\n" or "", body)
end

local function close(tcp)
  conns[tcp] = nil
  if not tcp:is_closing() then tcp:close() end
end

-- End a connection gracefully: FIN once what is queued is written, then
-- read (and drop) until the peer closes too, for at most LINGER_MS. A
-- close() with unread input would send a RST, which can destroy the last
-- response before the client reads it.
local function finish(tcp, c)
  if c.ending then return end
  c.ending = true
  c.deadline = uv.now() + LINGER_MS
  tcp:shutdown(function(err) if err then close(tcp) end end)
end

local function route(path)
  if path == "/healthz" then
    if draining then return "503 Service Unavailable", "draining\n" end
    return "200 OK", "ok\n"
  end
  return "200 OK", WHO .. " path " .. path .. "\n"
end

-- Answer every complete request in the buffer.
local function serve(tcp, c)
  while not c.ending do
    local head_end = c.buf:find("\r\n\r\n", 1, true)
    if not head_end then
      if #c.buf > MAX_HEAD then
        tcp:write(response("431 Request Header Fields Too Large", "too large\n", true))
        return finish(tcp, c)
      end
      return
    end
    local head = c.buf:sub(1, head_end - 1)
    local method, path, version = head:match("^(%u+) (%S+) HTTP/(%d%.%d)\r?\n?")
    local lower = head:lower()
    local length = tonumber(lower:match("\r\ncontent%-length:%s*(%d+)") or "0")
    if not method or lower:find("\r\ntransfer%-encoding:") then
      tcp:write(response("400 Bad Request", "bad request\n", true))
      return finish(tcp, c)
    end
    if length > MAX_BODY then
      tcp:write(response("413 Content Too Large", "too large\n", true))
      return finish(tcp, c)
    end
    if #c.buf < head_end + 3 + length then return end -- the body is not all here yet
    c.buf = c.buf:sub(head_end + 4 + length)
    local connection = lower:match("\r\nconnection:%s*([%w%-]+)")
    local keep = version == "1.1" and connection ~= "close" or version == "1.0" and connection == "keep-alive"
    local last = draining or not keep
    local status, body = route(path)
    local text = response(status, body, last)
    if method == "HEAD" then text = text:sub(1, #text - #body) end
    tcp:write(text)
    if last then return finish(tcp, c) end
  end
end

local server = uv.new_tcp()
assert(server:bind(BIND, PORT))
assert(server:listen(511, function(err)
  if err then return end
  local tcp = uv.new_tcp()
  if not server:accept(tcp) then return tcp:close() end
  local c = { buf = "", last = uv.now() }
  conns[tcp] = c
  tcp:read_start(function(rerr, data)
    if rerr or not data then return close(tcp) end
    if c.ending then return end -- lingering: the peer's late bytes are dropped
    c.last = uv.now()
    c.buf = c.buf .. data
    serve(tcp, c)
  end)
end))

-- Ends connections quiet for too long and lingering ones past their time.
-- Unreferenced: it never keeps the loop (and so a draining worker) alive
-- by itself.
local function sweep_connections()
  local now = uv.now()
  for tcp, c in pairs(conns) do
    if c.ending then
      if now >= c.deadline then close(tcp) end
    else
      local quiet = now - c.last
      if quiet >= IDLE_MS or draining and quiet >= (c.buf == "" and DRAIN_QUIET_MS or DRAIN_STALL_MS) then
        finish(tcp, c)
      end
    end
  end
end
local sweep = uv.new_timer()
sweep:start(100, 100, sweep_connections)
sweep:unref()

if me then
  me:on("draining", function()
    draining = true
    local open, mid = 0, 0
    for _, c in pairs(conns) do
      if not c.ending then
        open = open + 1
        if c.buf ~= "" then mid = mid + 1 end
      end
    end
    sweep_connections()
    io.stdout:write(("health_app: %s draining: %d connections open, %d mid-request\n"):format(WHO, open, mid))
    io.stdout:flush()
  end)
end

uv.run()
