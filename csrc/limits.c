/* The process's file descriptor limit (RLIMIT_NOFILE): the runner checks
 * that its workers leave the master room to accept and pass connections,
 * and may raise the soft limit to the hard one. */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/resource.h>

#include <lauxlib.h>
#include <lua.h>

#include "core.h"

/* "No limit" comes out as 2^53: exact in every Lua's numbers. */
#define UNLIMITED ((rlim_t)1 << 53)

static void push_limit(lua_State *L, rlim_t v) {
  lua_pushinteger(L, (lua_Integer)(v == RLIM_INFINITY || v > UNLIMITED ? UNLIMITED : v));
}

/* core.fd_limit([soft]) -> soft, hard | nil, err, ENAME
 * With soft, sets the soft limit first (at most the hard one). */
static int l_fd_limit(lua_State *L) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return core_push_errno(L, "getrlimit", errno);
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer soft = luaL_checkinteger(L, 1);
    luaL_argcheck(L, soft >= 0, 1, "must be >= 0");
    rl.rlim_cur = (rlim_t)soft;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return core_push_errno(L, "setrlimit", errno);
  }
  push_limit(L, rl.rlim_cur);
  push_limit(L, rl.rlim_max);
  return 2;
}

void limits_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"fd_limit", l_fd_limit}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
