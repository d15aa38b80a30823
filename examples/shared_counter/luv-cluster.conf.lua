-- The runner's config for the shared-counter example: two workers run
-- app.lua (the HTTP side); the master function keeps the one request
-- count they share and answers their questions about it.
--
--   luv-cluster -c examples/shared_counter/luv-cluster.conf.lua
--   curl http://127.0.0.1:8000/          (PORT=8000 by default)
--   kill -HUP <runner pid>               new workers, the same count
--
-- Options given on the command line win over these (-w 4).
return {
  script = "app.lua", -- relative to this file's directory
  workers = 2,
  stop_timeout = "5s",

  -- Runs once in the runner's master, before the first worker starts. A
  -- reload replaces the workers, not this process: `count` and the
  -- listeners stay.
  master = function(sv, cluster)
    local count = 0
    cluster:on("message", function(worker, msg)
      if type(msg) == "table" and msg.cmd == "count" then
        count = count + 1
        worker:send({ cmd = "count", id = msg.id, count = count })
      end
    end)
    sv:on("reload_done", function()
      io.stdout:write(("shared_counter: %d requests so far\n"):format(count))
      io.stdout:flush()
    end)
  end,
}
