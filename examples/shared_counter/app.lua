-- The worker side of the shared-counter example: a plain luv HTTP server
-- in which every request asks the master for the cluster-wide request
-- count and answers with it once the master replies. The count lives in
-- the master, in the master function of luv-cluster.conf.lua: every worker
-- shares it, and it survives a reload (SIGHUP), which replaces only the
-- workers.
--
--   luv-cluster -c examples/shared_counter/luv-cluster.conf.lua
--   curl http://127.0.0.1:8000/          (PORT=8000 by default)
local uv = require("luv")
local cluster = require("cluster")

if not cluster.isWorker then
  io.stderr:write("app.lua is the worker side of this example; run it with\n",
    "  luv-cluster -c examples/shared_counter/luv-cluster.conf.lua\n")
  os.exit(1)
end

local port = tonumber(os.getenv("PORT")) or 8000
-- A request the master has not answered within this time gets a 504
-- (started without the config file, nothing in the master answers).
local ANSWER_TIMEOUT = 5000

local worker = cluster.worker
local pid = uv.os_getpid()

local function respond(client, status, body)
  if client:is_closing() then return end
  client:write(("HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s")
    :format(status, #body, body), function() client:close() end)
end

-- Requests waiting for the master's answer, by the id of their question:
-- { client =, timer = }.
local waiting, last_id = {}, 0

worker:on("message", function(msg)
  if type(msg) ~= "table" or msg.cmd ~= "count" then return end
  local req = waiting[msg.id]
  if not req then return end
  waiting[msg.id] = nil
  req.timer:close()
  respond(req.client, "200 OK", ("request #%d, served by worker %d (pid %d)\n"):format(msg.count, worker.id, pid))
end)

local function ask_master(client)
  last_id = last_id + 1
  local id = last_id
  local timer = uv.new_timer()
  waiting[id] = { client = client, timer = timer }
  timer:start(ANSWER_TIMEOUT, 0, function()
    waiting[id] = nil
    timer:close()
    respond(client, "504 Gateway Timeout", "no answer from the master\n")
  end)
  local ok, err = worker:send({ cmd = "count", id = id })
  if ok == false and err then
    waiting[id] = nil
    timer:close()
    respond(client, "503 Service Unavailable", "cannot reach the master: " .. err .. "\n")
  end
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", port))
assert(server:listen(128, function(err)
  assert(not err, err)
  local client = uv.new_tcp()
  if not server:accept(client) then return client:close() end
  local head = ""
  client:read_start(function(rerr, data)
    if rerr or not data then
      if not client:is_closing() then client:close() end
      return
    end
    head = head .. data
    if head:find("\r\n\r\n", 1, true) then
      client:read_stop()
      ask_master(client)
    end
  end)
end))
uv.run()
