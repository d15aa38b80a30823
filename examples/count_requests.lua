-- The HTTP example of Node's original cluster document, in Lua: one worker
-- per core serves HTTP hello-world on the shared port 8000 and tells the
-- master about each request; the master prints the count every second.
--
--   lua5.4 examples/count_requests.lua [seconds]    (PORT=8000 by default)
--
-- Ctrl-C (or the optional run time) disconnects the workers and ends it.
local uv = require("luv")
local cluster = require("cluster")

-- One line at a time even into a pipe (| tee, a log collector).
io.stdout:setvbuf("line")

local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n"

if cluster.isMaster then
  local numReqs = 0
  for _ = 1, uv.available_parallelism() do
    local worker = cluster.fork()
    worker:on("message", function(msg)
      if type(msg) ~= "table" then return end
      if msg.cmd == "notifyRequest" then numReqs = numReqs + 1 end
    end)
  end
  cluster:on("listening", function(worker, address)
    print(("worker %d (pid %d) serving http://%s:%d/"):format(worker.id, worker.pid, address.address, address.port))
  end)
  cluster:on("exit", function(worker, code, signal)
    print(("worker %d (pid %d) ended: %s"):format(worker.id, worker.pid, signal or ("code " .. code)))
  end)

  local ticker, sigint, deadline = uv.new_timer(), uv.new_signal(), uv.new_timer()
  ticker:start(1000, 1000, function() print("numReqs =", numReqs) end)
  local function stop()
    ticker:close()
    sigint:close()
    deadline:close()
    cluster.disconnect(function() print("all workers disconnected") end)
  end
  sigint:start("sigint", stop)
  local seconds = tonumber(arg[1])
  if seconds then deadline:start(seconds * 1000, 0, stop) end
  uv.run()
else
  -- Plain luv server code: with cluster loaded, the bind goes to the
  -- master and every worker serves the same port.
  local port = tonumber(os.getenv("PORT")) or 8000
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", port))
  assert(server:listen(128, function(err)
    assert(not err, err)
    local client = uv.new_tcp()
    server:accept(client)
    client:read_start(function(rerr, data)
      if rerr or not data then
        client:close()
      elseif data:find("\r\n\r\n", 1, true) then
        client:write(RESPONSE, function() client:close() end)
        cluster.worker:send({ cmd = "notifyRequest" })
      end
    end)
  end))
  -- Ctrl-C reaches the whole process group: leave it to the master.
  local sigint = uv.new_signal()
  sigint:start("sigint", function() end)
  -- disconnect closes the shared server itself; the rest is ours.
  cluster.worker:on("disconnect", function() sigint:close() end)
  uv.run()
end
