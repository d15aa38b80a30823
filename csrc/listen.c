/* Listening sockets and the accept loop: the OS half of port sharing. C
 * makes plain non-blocking, close-on-exec fds; the Lua layer decides who
 * binds, wires the fds into luv and passes them to workers.
 *
 * Hosts are numeric addresses only (getaddrinfo with AI_NUMERICHOST), as
 * luv's bind takes them: a name would mean a blocking DNS lookup on the
 * master's loop. luv's bind raises for a name; here it comes back as
 * nil, err, "EINVAL", so a worker's bad request cannot raise in the
 * master (the Lua layer can raise in the worker, as luv does). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "core.h"

/* Node's default backlog; the kernel caps it at net.core.somaxconn. */
#define DEFAULT_BACKLOG 511
#define DEFAULT_ACCEPT_MAX 64
/* The result table of accept is sized up front (see l_accept). */
#define ACCEPT_MAX_LIMIT 4096

/* An address turned into the strings of an info table without Lua
 * allocating, so nothing can raise while an fd is at stake. */
typedef struct {
  const char *family; /* "inet", "inet6", "unix" */
  char address[sizeof(((struct sockaddr_un *)0)->sun_path) + INET6_ADDRSTRLEN];
  size_t address_len;
  int port; /* -1 for unix */
} sockinfo;

/* -------------------------------------------------------------------------
 * Small helpers */

static int check_fd(lua_State *L, int arg) {
  lua_Integer fd = luaL_checkinteger(L, arg);
  luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, arg, "not a file descriptor");
  return (int)fd;
}

/* Close an fd that failed us, keeping the errno that made us give it up. */
static void close_keep_errno(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

static int to_sockinfo(const struct sockaddr_storage *ss, socklen_t len, sockinfo *out) {
  memset(out, 0, sizeof *out);
  switch (ss->ss_family) {
  case AF_INET: {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    out->family = "inet";
    if (!inet_ntop(AF_INET, &sin->sin_addr, out->address, sizeof out->address)) return errno;
    out->address_len = strlen(out->address);
    out->port = ntohs(sin->sin_port);
    return 0;
  }
  case AF_INET6: {
    /* Like luv's getsockname: no %scope suffix. */
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    out->family = "inet6";
    if (!inet_ntop(AF_INET6, &sin6->sin6_addr, out->address, sizeof out->address)) return errno;
    out->address_len = strlen(out->address);
    out->port = ntohs(sin6->sin6_port);
    return 0;
  }
  case AF_UNIX: {
    const struct sockaddr_un *un = (const struct sockaddr_un *)ss;
    size_t n = len > offsetof(struct sockaddr_un, sun_path)
                   ? (size_t)len - offsetof(struct sockaddr_un, sun_path)
                   : 0;
    if (n > sizeof un->sun_path) n = sizeof un->sun_path;
    out->family = "unix";
    out->port = -1;
    /* A path may fill sun_path with no NUL; an abstract name starts with
     * NUL and is kept whole; an unnamed socket gives "". */
    if (n > 0 && un->sun_path[0] != '\0') n = strnlen(un->sun_path, n);
    memcpy(out->address, un->sun_path, n);
    out->address_len = n;
    return 0;
  }
  default:
    return EAFNOSUPPORT;
  }
}

static void push_sockinfo(lua_State *L, const sockinfo *info) {
  lua_createtable(L, 0, 3);
  lua_pushlstring(L, info->address, info->address_len);
  lua_setfield(L, -2, "address");
  if (info->port >= 0) {
    lua_pushinteger(L, info->port);
    lua_setfield(L, -2, "port");
  }
  lua_pushstring(L, info->family);
  lua_setfield(L, -2, "family");
}

/* push_sockinfo under lua_pcall: listen_socket must close its fd if even
 * building the result runs out of memory. */
static int push_sockinfo_protected(lua_State *L) {
  push_sockinfo(L, lua_touserdata(L, 1));
  return 1;
}

/* -------------------------------------------------------------------------
 * Options of listen_socket. Each getter leaves the field's value on the
 * stack, which keeps a string alive while its pointer is in use. */

static const char *opt_string(lua_State *L, const char *field, size_t *len) {
  int t = lua_getfield(L, 1, field);
  if (t == LUA_TNIL) return NULL;
  if (t != LUA_TSTRING)
    luaL_argerror(L, 1, lua_pushfstring(L, "field '%s' must be a string", field));
  return lua_tolstring(L, -1, len);
}

static lua_Integer opt_integer(lua_State *L, const char *field, lua_Integer dflt,
                               lua_Integer min, lua_Integer max) {
  int isint = 0;
  int t = lua_getfield(L, 1, field);
  if (t == LUA_TNIL) return dflt;
  /* lua_tointegerx alone would take "80" too. */
  lua_Integer v = t == LUA_TNUMBER ? lua_tointegerx(L, -1, &isint) : 0;
  if (!isint || v < min || v > max)
    luaL_argerror(L, 1,
                  lua_pushfstring(L, "field '%s' must be an integer " COMPAT_FMT_INTEGER
                                  ".." COMPAT_FMT_INTEGER, field,
                                  COMPAT_ARG_INTEGER(min), COMPAT_ARG_INTEGER(max)));
  return v;
}

static int opt_boolean(lua_State *L, const char *field, int dflt) {
  int t = lua_getfield(L, 1, field);
  if (t == LUA_TNIL) return dflt;
  if (t != LUA_TBOOLEAN)
    luaL_argerror(L, 1, lua_pushfstring(L, "field '%s' must be a boolean", field));
  return lua_toboolean(L, -1);
}

enum { KIND_TCP, KIND_UDP, KIND_UNIX, KIND_UNIXGRAM };

typedef struct {
  int kind;
  int backlog;
  int reuseport;
  int listen; /* 0: bind only (a reuseport group's placeholder) */
  int ipv6only; /* -1: leave the system's default (net.ipv6.bindv6only) */
  struct sockaddr_storage addr;
  socklen_t addrlen;
  char label[128 + INET6_ADDRSTRLEN]; /* "127.0.0.1:80", "[::1]:80", path */
} listen_opts;

static int setsockopt_int(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value);
}

/* core.listen_socket(opts) -> fd, info | nil, err, ENAME
 *   opts: { type = "tcp"|"udp", host = <numeric address>, port = 0..65535,
 *           backlog = n (tcp), reuseport = bool, ipv6only = bool,
 *           listen = bool (default true; false binds only: the master holds
 *           a reuseport port without taking connections) }
 *       | { type = "unix", path = <path>, backlog = n }
 *   info: { address =, port = (not for unix), family = "inet"|"inet6"|"unix" }
 * Fields that do not apply to the type are ignored. */
static int l_listen_socket(lua_State *L) {
  listen_opts o;
  memset(&o, 0, sizeof o);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkstack(L, 24, "listen_socket options"); /* the getters keep values */

  const char *type = opt_string(L, "type", NULL);
  if (!type) return luaL_argerror(L, 1, "field 'type' is missing");
  if (strcmp(type, "tcp") == 0) o.kind = KIND_TCP;
  else if (strcmp(type, "udp") == 0) o.kind = KIND_UDP;
  else if (strcmp(type, "unix") == 0) o.kind = KIND_UNIX;
  else if (strcmp(type, "unixgram") == 0) o.kind = KIND_UNIXGRAM; /* sd_notify's peer, in tests */
  else
    return luaL_argerror(
        L, 1, lua_pushfstring(L, "field 'type' must be tcp, udp or unix, not '%s'", type));

  int datagram = o.kind == KIND_UDP || o.kind == KIND_UNIXGRAM;
  if (!datagram) o.backlog = (int)opt_integer(L, "backlog", DEFAULT_BACKLOG, 0, INT_MAX);
  o.listen = !datagram && opt_boolean(L, "listen", 1);

  if (o.kind == KIND_UNIX || o.kind == KIND_UNIXGRAM) {
    size_t len;
    const char *path = opt_string(L, "path", &len);
    if (!path || len == 0) return luaL_argerror(L, 1, "field 'path' is missing");
    /* Abstract names are not taken: luv 1.44's pipe_bind has none either. */
    luaL_argcheck(L, strlen(path) == len, 1, "field 'path' contains a NUL byte");
    struct sockaddr_un *un = (struct sockaddr_un *)&o.addr;
    if (len >= sizeof un->sun_path) {
      /* Not a misuse: a deep temp dir can do it. luv 1.44 would truncate. */
      char what[64 + sizeof un->sun_path];
      snprintf(what, sizeof what, "bind %.*s...", (int)(sizeof un->sun_path), path);
      return core_push_errno(L, what, ENAMETOOLONG);
    }
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, len + 1);
    o.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    snprintf(o.label, sizeof o.label, "%s", path);
  } else {
    const char *host = opt_string(L, "host", NULL);
    if (!host) return luaL_argerror(L, 1, "field 'host' is missing");
    int port = (int)opt_integer(L, "port", -1, 0, 65535);
    if (port < 0) return luaL_argerror(L, 1, "field 'port' is missing");
    o.reuseport = opt_boolean(L, "reuseport", 0);
    o.ipv6only = opt_boolean(L, "ipv6only", -1);

    char service[12];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = o.kind == KIND_TCP ? SOCK_STREAM : SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
      char what[96];
      snprintf(what, sizeof what, "getaddrinfo %.60s", host);
      if (rc == EAI_SYSTEM) return core_push_errno(L, what, errno);
      if (rc == EAI_MEMORY) return core_push_errno(L, what, ENOMEM);
      lua_pushnil(L);
      lua_pushfstring(L, "%s: %s (numeric addresses only)", what, gai_strerror(rc));
      lua_pushliteral(L, "EINVAL");
      return 3;
    }
    /* One numeric host and one socket type give one result. */
    memcpy(&o.addr, res->ai_addr, res->ai_addrlen);
    o.addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    snprintf(o.label, sizeof o.label, o.addr.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d",
             host, port);
  }

  /* From here on no Lua error may be raised while the fd is open. */
  int sotype = datagram ? SOCK_DGRAM : SOCK_STREAM;
  const char *step = "socket";
  int bound = 0;
  int fd = socket(o.addr.ss_family, sotype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) goto fail_nofd;

  /* As libuv does for TCP: rebind at once over TIME_WAIT connections. */
  step = "setsockopt SO_REUSEADDR";
  if (o.kind == KIND_TCP && setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1) != 0) goto fail;
  step = "setsockopt SO_REUSEPORT";
  if (o.kind != KIND_UNIX && o.reuseport) {
#ifdef SO_REUSEPORT
    if (setsockopt_int(fd, SOL_SOCKET, SO_REUSEPORT, 1) != 0) goto fail;
#else
    errno = ENOTSUP;
    goto fail;
#endif
  }
  /* Only set when asked, so "::" otherwise follows net.ipv6.bindv6only
   * as it does in libuv. Meaningless for IPv4: ignored there. */
  step = "setsockopt IPV6_V6ONLY";
  if (o.addr.ss_family == AF_INET6 && o.ipv6only >= 0 &&
      setsockopt_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, o.ipv6only) != 0)
    goto fail;

  step = "bind";
  if (bind(fd, (struct sockaddr *)&o.addr, o.addrlen) != 0) goto fail;
  bound = 1;
  step = "listen";
  if (o.listen && listen(fd, o.backlog) != 0) goto fail;

  /* The real port when 0 was asked. */
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  sockinfo info;
  step = "getsockname";
  if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) goto fail;
  int err = to_sockinfo(&ss, sslen, &info);
  if (err != 0) {
    errno = err;
    goto fail;
  }

  lua_pushcfunction(L, push_sockinfo_protected);
  lua_pushlightuserdata(L, &info);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    close(fd);
    if (o.kind == KIND_UNIX || o.kind == KIND_UNIXGRAM) unlink(((struct sockaddr_un *)&o.addr)->sun_path);
    return lua_error(L);
  }
  lua_pushinteger(L, fd);
  lua_insert(L, -2);
  return 2;

fail:
  close_keep_errno(fd);
  /* The socket file is ours once bind made it: do not leave it behind. */
  if (bound && (o.kind == KIND_UNIX || o.kind == KIND_UNIXGRAM)) {
    int saved = errno;
    unlink(((struct sockaddr_un *)&o.addr)->sun_path);
    errno = saved;
  }
fail_nofd:;
  int saved = errno;
  char what[sizeof o.label + 32];
  snprintf(what, sizeof what, "%s %s", step, o.label);
  return core_push_errno(L, what, saved);
}

/* -------------------------------------------------------------------------
 * Balancing: a 32-bit hash of a client's IP address (for balance =
 * "source") and the rendezvous pick over the workers' keys. */

/* MurmurHash3's 32-bit finalizer: every input bit reaches every output bit. */
static uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bU;
  h ^= h >> 13;
  h *= 0xc2b2ae35U;
  h ^= h >> 16;
  return h;
}

/* The same finalizer on 64 bits. */
static uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

/* FNV-1a over the address bytes, then mixed. The port is left out: one
 * client, many connections. An IPv4-mapped IPv6 address hashes as its IPv4
 * address, so a client is the same client on a dual-stack listener.
 * Returns 0 and sets *out, or -1 for an address without an IP (unix). */
static int peer_hash_of(const struct sockaddr_storage *ss, uint32_t *out) {
  const unsigned char *bytes;
  size_t n;
  if (ss->ss_family == AF_INET) {
    bytes = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr;
    n = 4;
  } else if (ss->ss_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    bytes = a->s6_addr;
    n = 16;
    if (IN6_IS_ADDR_V4MAPPED(a)) {
      bytes += 12;
      n = 4;
    }
  } else {
    return -1;
  }
  uint32_t h = 2166136261U;
  for (size_t i = 0; i < n; i++) {
    h ^= bytes[i];
    h *= 16777619U;
  }
  *out = fmix32(h);
  return 0;
}

/* core.peer_hash(fd) -> hash | false (not an IP socket) | nil, err, ENAME
 * The client address hash of a connected socket (getpeername). */
static int l_peer_hash(lua_State *L) {
  int fd = check_fd(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) {
    char what[48];
    snprintf(what, sizeof what, "getpeername fd %d", fd);
    return core_push_errno(L, what, errno);
  }
  uint32_t h;
  if (peer_hash_of(&ss, &h) == 0) lua_pushinteger(L, (lua_Integer)h);
  else lua_pushboolean(L, 0);
  return 1;
}

/* core.rendezvous(hash, keys, n) -> i
 * Rendezvous (highest random weight) hashing: of keys[1..n] (integers, the
 * workers' ids, taken modulo 2^32), the index of the one that scores
 * highest with `hash`.
 * Each (key, hash) pair scores independently of the other keys, so adding
 * a key takes about 1/(n+1) of the hashes, all to itself, and removing one
 * moves only the hashes it had. Equal keys score equal: the first wins. */
static int l_rendezvous(lua_State *L) {
  lua_Integer hash = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = luaL_checkinteger(L, 3);
  luaL_argcheck(L, n >= 1 && n <= INT_MAX, 3, "must be 1 or more");
  int best = 0;
  uint64_t best_score = 0;
  for (int i = 1; i <= (int)n; i++) {
    lua_rawgeti(L, 2, i);
    int isint = 0;
    lua_Integer key = lua_tointegerx(L, -1, &isint);
    lua_pop(L, 1);
    if (!isint) return luaL_argerror(L, 2, lua_pushfstring(L, "key %d is not an integer", i));
    /* fmix64 is a bijection: distinct (key, hash) pairs never tie. */
    uint64_t score = fmix64(((uint64_t)(uint32_t)key << 32) | (uint32_t)hash);
    if (best == 0 || score > best_score) {
      best = i;
      best_score = score;
    }
  }
  lua_pushinteger(L, best);
  return 1;
}

/* -------------------------------------------------------------------------
 * Accepting */

/* Errors of a connection that died in the queue, not of the listener:
 * accept(2) says to treat them like EAGAIN and try again. */
static int accept_error_is_transient(int err) {
  switch (err) {
  case ECONNABORTED:
  case ENETDOWN:
  case EPROTO:
  case ENOPROTOOPT:
  case EHOSTDOWN:
#ifdef ENONET
  case ENONET:
#endif
  case EHOSTUNREACH:
  case EOPNOTSUPP:
  case ENETUNREACH:
    return 1;
  default:
    return 0;
  }
}

/* EOPNOTSUPP also means "not a stream socket", which no retry mends. */
static int is_listening(int fd) {
  int on = 0;
  socklen_t len = sizeof on;
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on;
}

/* core.accept(fd[, max[, hashes]]) -> { fd, ... } (empty when nothing is
 *                                     pending)[, { hash, ... }]
 *                                   | nil, err, ENAME
 * Takes up to max (64) connections. Once it has some, an error ends the
 * call with what it has (the next call meets the error again), so no
 * accepted fd is dropped. With `hashes` true, a second table holds each
 * connection's client address hash (as core.peer_hash; false for a unix
 * socket), from the address accept4 fills in anyway: no extra syscall. */
static int l_accept(lua_State *L) {
  int fd = check_fd(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, DEFAULT_ACCEPT_MAX);
  luaL_argcheck(L, max >= 1 && max <= ACCEPT_MAX_LIMIT, 2, "must be 1..4096");
  int want_hashes = lua_toboolean(L, 3);

  /* Sized for max so that storing the fds (and hashes) cannot allocate,
   * and so cannot raise with accepted fds in hand. */
  lua_createtable(L, (int)max, 0);
  if (want_hashes) lua_createtable(L, (int)max, 0);
  int fds_at = want_hashes ? -3 : -2; /* the fds table, below a pushed value */
  int n = 0;
  /* A flood of aborted connections must not keep us here forever: the
   * listener stays readable and the next call goes on. */
  lua_Integer skipped = 0;
  while (n < max) {
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    if (want_hashes) ss.ss_family = AF_UNSPEC;
    int conn = want_hashes ? accept4(fd, (struct sockaddr *)&ss, &sslen, SOCK_CLOEXEC | SOCK_NONBLOCK)
                           : accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (conn >= 0) {
      lua_pushinteger(L, conn);
      lua_rawseti(L, fds_at, ++n);
      if (want_hashes) {
        uint32_t h;
        if (peer_hash_of(&ss, &h) == 0) lua_pushinteger(L, (lua_Integer)h);
        else lua_pushboolean(L, 0);
        lua_rawseti(L, -2, n);
      }
      continue;
    }
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) break;
    if (accept_error_is_transient(err) && !(err == EOPNOTSUPP && !is_listening(fd))) {
      if (++skipped >= max) break;
      continue;
    }
    /* EMFILE, ENFILE, ENOBUFS, EBADF, EINVAL (not listening), ... */
    if (n > 0) break;
    char what[48];
    snprintf(what, sizeof what, "accept fd %d", fd);
    return core_push_errno(L, what, err);
  }
  return want_hashes ? 2 : 1;
}

/* core.sockname(fd) -> { address =, port =, family = } | nil, err, ENAME */
static int l_sockname(lua_State *L) {
  int fd = check_fd(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  sockinfo info;
  int err = 0;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) err = errno;
  else err = to_sockinfo(&ss, len, &info);
  if (err != 0) {
    char what[48];
    snprintf(what, sizeof what, "getsockname fd %d", fd);
    return core_push_errno(L, what, err);
  }
  push_sockinfo(L, &info);
  return 1;
}

/* -------------------------------------------------------------------------
 * fd flags. fcntl's F_GETFL/F_SETFL do not block, but EINTR is retried
 * anyway in case a seccomp or ptrace layer reports it. */

static int push_fcntl_error(lua_State *L, const char *cmd, int fd, int err) {
  char what[48];
  snprintf(what, sizeof what, "fcntl %s fd %d", cmd, fd);
  return core_push_errno(L, what, err);
}

static int fcntl_retry(int fd, int cmd, int arg) {
  int r;
  do r = fcntl(fd, cmd, arg);
  while (r < 0 && errno == EINTR);
  return r;
}

/* core.set_nonblocking(fd[, on = true]) -> true | nil, err, ENAME */
static int l_set_nonblocking(lua_State *L) {
  int fd = check_fd(L, 1);
  int on = 1;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TBOOLEAN);
    on = lua_toboolean(L, 2);
  }
  int fl = fcntl_retry(fd, F_GETFL, 0);
  if (fl < 0) return push_fcntl_error(L, "F_GETFL", fd, errno);
  int want = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
  if (want != fl && fcntl_retry(fd, F_SETFL, want) < 0)
    return push_fcntl_error(L, "F_SETFL", fd, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.set_cloexec(fd) -> true | nil, err, ENAME */
static int l_set_cloexec(lua_State *L) {
  int fd = check_fd(L, 1);
  int fl = fcntl_retry(fd, F_GETFD, 0);
  if (fl < 0) return push_fcntl_error(L, "F_GETFD", fd, errno);
  if (!(fl & FD_CLOEXEC) && fcntl_retry(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
    return push_fcntl_error(L, "F_SETFD", fd, errno);
  lua_pushboolean(L, 1);
  return 1;
}

void listen_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"listen_socket", l_listen_socket},
                                 {"accept", l_accept},
                                 {"sockname", l_sockname},
                                 {"peer_hash", l_peer_hash},
                                 {"rendezvous", l_rendezvous},
                                 {"set_nonblocking", l_set_nonblocking},
                                 {"set_cloexec", l_set_cloexec},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
