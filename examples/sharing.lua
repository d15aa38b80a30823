-- Two workers serve one TCP port with plain luv server code; the master
-- connects to it a few times and prints which worker answered. Ends by
-- itself.
--
--   lua5.4 examples/sharing.lua [rr|shared|reuseport]     (default rr)
local uv = require("luv")
local cluster = require("cluster")

if cluster.isMaster then
  cluster.schedulingPolicy = arg[1] or "rr" -- before the first fork
  -- Advice about this machine's setup (reuseport), instead of stderr.
  cluster:on("warning", function(message) print("warning: " .. message) end)

  local CONNECTIONS = 6
  local served, answered, listening = {}, 0, 0

  -- One connection, one answer: "worker <id>".
  local function connect(port, n)
    local client = uv.new_tcp()
    client:connect("127.0.0.1", port, function(err)
      assert(not err, err)
      local answer = ""
      client:read_start(function(rerr, data)
        assert(not rerr, rerr)
        if data then
          answer = answer .. data
          return
        end
        client:close()
        print(("connection %d answered by %s"):format(n, answer))
        served[answer] = (served[answer] or 0) + 1
        answered = answered + 1
        if answered < CONNECTIONS then return connect(port, n + 1) end
        for _, who in ipairs({ "worker 1", "worker 2" }) do
          print(("%s answered %d of %d"):format(who, served[who] or 0, CONNECTIONS))
        end
        cluster.disconnect()
      end)
    end)
  end

  cluster:on("listening", function(worker, address)
    print(("worker %d listening on %s:%d (policy %s)"):format(worker.id, address.address, address.port,
      cluster.schedulingPolicy))
    listening = listening + 1
    if listening == 2 then connect(address.port, 1) end
  end)
  cluster.fork()
  cluster.fork()
  uv.run()
else
  -- Nothing here knows about the cluster: bind() asks the master. Port 0
  -- in every worker's first port-0 bind is one and the same real port.
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", 0))
  assert(server:listen(128, function(err)
    assert(not err, err)
    local client = uv.new_tcp()
    assert(server:accept(client))
    client:write("worker " .. cluster.worker.id, function() client:close() end)
  end))
  uv.run()
end
