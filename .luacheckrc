-- luacheck over lua/, bin/ and spec/ (`make lint`; CI runs it).
-- Code runs on 5.1-5.4 and LuaJIT: the union of their standard globals,
-- version differences go through cluster.compat.
std = "max"
max_line_length = 120
-- Fields of a Worker or Supervisor named _x are the module's own; an
-- unused self/callback argument is normal in luv callbacks.
unused_args = false

files["spec/"] = { std = "+busted" }
files["bin/luv-cluster"] = {}
files["examples/*_spec.lua"] = { std = "+busted" }
