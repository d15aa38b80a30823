rockspec_format = "3.0"
package = "luv-cluster"
version = "scm-1"
source = {
   -- Installed from a checkout with `luarocks make` (make install). A rock
   -- to install elsewhere comes from the versioned rockspec: `make rock`.
   url = "git+file:///dev/null",
}
description = {
   summary = "Node's cluster module for Lua on luv: workers, messages, shared ports",
   detailed = [[
A master process forks Lua workers that exchange messages with it over a
fast framed channel; the master sees workers come online, disconnect and
exit. The C core does the process work (fork/exec, the channel, message
serialization, fd passing, reaping); the Lua layer is the event API.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1, < 5.5",
   -- Debian's lua-luv is not a rock: rocks-provided.lua declares it (README).
   "luv",
}
build = {
   type = "builtin",
   modules = {
      ["cluster"] = "lua/cluster/init.lua",
      ["cluster.channel"] = "lua/cluster/channel.lua",
      ["cluster.child"] = "lua/cluster/child.lua",
      ["cluster.compat"] = "lua/cluster/compat.lua",
      ["cluster.control"] = "lua/cluster/control.lua",
      ["cluster.defer"] = "lua/cluster/defer.lua",
      ["cluster.emitter"] = "lua/cluster/emitter.lua",
      ["cluster.master"] = "lua/cluster/master.lua",
      ["cluster.proctitle"] = "lua/cluster/proctitle.lua",
      ["cluster.protocol"] = "lua/cluster/protocol.lua",
      ["cluster.runner.commands"] = "lua/cluster/runner/commands.lua",
      ["cluster.runner.options"] = "lua/cluster/runner/options.lua",
      ["cluster.runner.output"] = "lua/cluster/runner/output.lua",
      ["cluster.settings"] = "lua/cluster/settings.lua",
      ["cluster.share_master"] = "lua/cluster/share_master.lua",
      ["cluster.share_worker"] = "lua/cluster/share_worker.lua",
      ["cluster.supervise"] = "lua/cluster/supervise.lua",
      ["cluster.supervise.heartbeat"] = "lua/cluster/supervise/heartbeat.lua",
      ["cluster.supervise.options"] = "lua/cluster/supervise/options.lua",
      ["cluster.supervise.pool"] = "lua/cluster/supervise/pool.lua",
      ["cluster.supervise.recycle"] = "lua/cluster/supervise/recycle.lua",
      ["cluster.supervise.rolling"] = "lua/cluster/supervise/rolling.lua",
      ["cluster.supervise.stopping"] = "lua/cluster/supervise/stopping.lua",
      ["cluster.supervise.timers"] = "lua/cluster/supervise/timers.lua",
      ["cluster.testing"] = "lua/cluster/testing.lua",
      ["cluster.upgrade"] = "lua/cluster/upgrade.lua",
      ["cluster.worker"] = "lua/cluster/worker.lua",
      ["cluster.core"] = {
         sources = {
            "csrc/buffer.c", "csrc/channel.c", "csrc/codec.c", "csrc/core.c",
            "csrc/frame.c", "csrc/limits.c", "csrc/listen.c", "csrc/proctitle.c", "csrc/reap.c", "csrc/signals.c",
            "csrc/spawn.c", "csrc/systemd.c",
         },
      },
   },
   install = {
      bin = { ["luv-cluster"] = "bin/luv-cluster" },
   },
}
