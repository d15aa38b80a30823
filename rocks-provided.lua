-- LuaRocks configuration for `make install`: luv comes from Debian's
-- lua-luv package, which LuaRocks cannot see as a rock. Declaring it
-- provided satisfies the rockspec's dependency without a download (the
-- LuaRocks server is not used at all).
rocks_trees = { { name = "system", root = "/usr/local" } }
rocks_provided = { luv = "1.44.2-1" }
