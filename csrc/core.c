/* cluster.core: the module table, built from one open function per topic. */
#include <lauxlib.h>
#include <lua.h>

#include "codec.h"
#include "core.h"

int luaopen_cluster_core(lua_State *L) {
  lua_newtable(L);
  codec_open(L);
  signals_open(L);
  spawn_open(L);
  reap_open(L);
  channel_open(L);
  listen_open(L);
  systemd_open(L);
  limits_open(L);
  proctitle_open(L);
  return 1;
}
