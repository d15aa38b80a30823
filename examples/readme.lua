-- The example at the top of README.md (spec/60 checks the two are the same).
local uv = require("luv")
local cluster = require("cluster")

if cluster.isMaster then
  local served = 0
  for _ = 1, uv.available_parallelism() do
    cluster.fork():on("message", function(msg)
      served = served + msg.served
      print("requests served: " .. served)
    end)
  end
  cluster:on("exit", function(worker, code, signal)
    print(("worker %d died (%s)"):format(worker.id, signal or code))
  end)
else
  local server = uv.new_tcp()
  server:bind("127.0.0.1", tonumber(os.getenv("PORT")) or 8000) -- one port, all workers
  server:listen(128, function()
    local client = uv.new_tcp()
    server:accept(client)
    client:read_start(function(_, request) -- one request per connection
      if not request then return client:close() end
      client:write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n")
      client:shutdown(function() client:close() end)
      cluster.worker:send({ served = 1 })
    end)
  end)
end
uv.run()
