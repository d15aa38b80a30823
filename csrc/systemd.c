/* What a service under systemd needs: sd_notify() without libsystemd, and
 * the type of an inherited socket (LISTEN_FDS) to match it to a bind. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "core.h"

/* core.sd_notify(state) -> true | false (NOTIFY_SOCKET unset) | nil, err, ENAME
 * state: "READY=1", "RELOADING=1", "STOPPING=1", ... */
static int l_sd_notify(lua_State *L) {
  size_t len;
  const char *state = luaL_checklstring(L, 1, &len);
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) {
    lua_pushboolean(L, 0);
    return 1;
  }
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t plen = strlen(path);
  if (plen >= sizeof sa.sun_path) return core_push_errno(L, "sd_notify: NOTIFY_SOCKET", ENAMETOOLONG);
  memcpy(sa.sun_path, path, plen);
  if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0'; /* abstract namespace */
  socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return core_push_errno(L, "sd_notify: socket", errno);
  ssize_t n;
  do n = sendto(fd, state, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
  while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n < 0) return core_push_errno(L, "sd_notify: sendto", err);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.socket_type(fd) -> "stream" | "dgram" | "other" | nil, err, ENAME */
static int l_socket_type(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "not a file descriptor");
  int type;
  socklen_t len = sizeof type;
  if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
    return core_push_errno(L, "getsockopt SO_TYPE", errno);
  lua_pushstring(L, type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "dgram" : "other");
  return 1;
}

void systemd_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"sd_notify", l_sd_notify}, {"socket_type", l_socket_type}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
