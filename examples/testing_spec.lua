-- Testing a clustered app with busted and cluster.testing (docs/testing.md).
-- The app is examples/hello.lua, a plain luv HTTP server (port from $PORT).
--
--   busted examples/testing_spec.lua      (from the checkout's root)
--
-- `make test` runs this file with the project's own specs, under every Lua.
local testing = require("cluster.testing")

describe("examples/hello.lua", function()
  -- The app as it runs in production: under the luv-cluster runner, with
  -- two workers, in a subprocess. Nothing here blocks: every call runs
  -- this process's loop with a timeout.
  it("serves through the runner", function()
    local app = testing.spawn("examples/hello.lua", {}, {
      runner = { "-w", "2" }, -- options for luv-cluster
      env = { PORT = 0 },     -- any free port: wait_listening finds it
    })
    finally(function() app:stop() end)

    local port = assert(app:wait_listening(10000))
    local status, headers, body = assert(testing.http_get(port, "/", 3000))
    assert.equal(200, status)
    assert.equal("12", headers["content-length"])
    assert.equal("hello world\n", body)

    -- SIGTERM: the runner stops its workers gracefully and exits 0.
    assert.equal(0, app:stop())
  end)

  -- The master in the test process itself. Under busted the running
  -- script is busted, so the worker's script must be named with `exec`
  -- (fork() refuses otherwise). The master accepts the connections
  -- (policy "rr") in this process's loop: the client must not block it,
  -- hence testing.http_get and not io.popen("curl ...").
  it("serves from a worker forked by the test", function()
    local cluster = require("cluster")
    local port = assert(testing.free_port())
    cluster.setup({ exec = "examples/hello.lua" })
    local worker = cluster.fork({ PORT = port })
    finally(function() if not worker:isDead() then worker:kill("SIGKILL") end end)

    assert(testing.wait_event(worker, "listening", 5000))
    local status, _, body = assert(testing.http_get(port, "/", 3000))
    assert.equal(200, status)
    assert.equal("hello world\n", body)

    -- A graceful end: the worker closes its server and exits with code 0.
    worker:disconnect()
    local _, code, signal = assert(testing.wait_event(worker, "exit", 5000))
    assert.equal(0, code)
    assert.is_nil(signal)
  end)
end)
