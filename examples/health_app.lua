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
-- --stop-timeout SIGKILLs it, mid-request. Here:
--   - idle connections are ended at once (FIN, see `finish`);
--   - a connection with a request under way gets its response with
--     `Connection: close`, then is ended;
--   - so is any later request on a connection still open.
-- When the last connection is gone the loop has nothing left and the
-- worker exits 0, long before the stop timeout. A request that was still
-- on the wire to an idle connection when it was ended gets no answer
-- (HTTP/1.1's keep-alive race): clients and balancers retry those
-- (HAProxy: `retry-on conn-failure empty-response`, deploy/haproxy.cfg).
local uv = require("luv")
local cluster = require("cluster")

local BIND = os.getenv("BIND") or "0.0.0.0"
local PORT = tonumber(os.getenv("PORT")) or 8080
local HOST = os.getenv("APP_HOST_NAME") or uv.os_gethostname()
local IDLE_MS = 30000       -- a keep-alive connection idle this long is ended
local DRAIN_IDLE_MS = 5000  -- ... while draining, a stalled request this long
local LINGER_MS = 2000      -- after our FIN, wait this long for the peer's
local MAX_HEAD = 8192       -- bytes of request line and headers

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

-- Ends idle connections and lingering ones past their time. Unreferenced:
-- it never keeps the loop (and so a draining worker) alive by itself.
local sweep = uv.new_timer()
sweep:start(250, 250, function()
  local now = uv.now()
  for tcp, c in pairs(conns) do
    if c.ending then
      if now >= c.deadline then close(tcp) end
    elseif now - c.last >= (draining and DRAIN_IDLE_MS or IDLE_MS) then
      finish(tcp, c)
    end
  end
end)
sweep:unref()

if me then
  me:on("draining", function()
    draining = true
    local idle, busy = 0, 0
    for tcp, c in pairs(conns) do
      if not c.ending then
        if c.buf == "" then
          -- Between requests (a response may still be on its way out:
          -- the FIN follows it).
          idle = idle + 1
          finish(tcp, c)
        else
          busy = busy + 1 -- part of a request is in: answered with Connection: close
        end
      end
    end
    io.stdout:write(("health_app: %s draining: %d idle connections ended, %d busy\n"):format(WHO, idle, busy))
    io.stdout:flush()
  end)
end

uv.run()
