/* The master<->worker channel: a non-blocking AF_UNIX stream socket with
 * length-framed messages. Sends are appended to one output buffer and
 * written in as few sendmsg() calls as the socket takes (the Lua layer
 * flushes once per loop turn), and one recvmsg() brings in as many frames
 * as are waiting. File descriptors ride with SCM_RIGHTS on the sendmsg()
 * that writes their frame's first byte. The channel never calls luv: Lua
 * polls ch:fileno() and calls flush/read/next. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "buffer.h"
#include "codec.h"
#include "core.h"
#include "frame.h"

#define CHANNEL_MT "cluster.channel"
#define READ_CHUNK (64 * 1024)
/* A flush moves at most this much per sendmsg so one huge message cannot
 * starve the loop. */
#define WRITE_CHUNK (4 * 1024 * 1024)
/* Received fds not yet claimed by a frame; a peer that sends more is
 * broken. */
#define MAX_PENDING_FDS 64

struct pending_fd {
  uint64_t offset; /* absolute output offset of its frame's first byte */
  int fd;
};

#define CHANNEL_MAGIC 0x4c4e4843u /* "CHNL" */

typedef struct channel {
  uint32_t magic; /* CHANNEL_MAGIC: see to_channel() */
  int fd;         /* -1 once closed */
  size_t max_payload;

  buffer out;
  size_t out_head;     /* out.data[out_head..len) is unsent */
  uint64_t out_sent;   /* bytes written since creation */
  struct pending_fd *out_fds; /* FIFO, ordered by offset */
  size_t out_fds_head, out_fds_len, out_fds_cap;

  buffer in;
  size_t in_head; /* in.data[in_head..len) is not parsed yet */
  int in_fds[MAX_PENDING_FDS];
  size_t in_fds_head, in_fds_len;
} channel;

/* Every message sent and received passes here, and luaL_checkudata's
 * registry lookup by name was a tenth of the cost of a send: a channel is
 * known instead by its size and a magic number (light userdata has size 0). */
static channel *to_channel(lua_State *L) {
  channel *ch = lua_touserdata(L, 1);
  if (!ch || lua_type(L, 1) != LUA_TUSERDATA || lua_rawlen(L, 1) != sizeof *ch ||
      ch->magic != CHANNEL_MAGIC)
    luaL_typeerror(L, 1, CHANNEL_MT);
  return ch;
}

static channel *check_channel(lua_State *L) {
  channel *ch = to_channel(L);
  if (ch->fd < 0) luaL_error(L, "channel is closed");
  return ch;
}

static int set_fd_flags(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) return -1;
  return 0;
}

/* core.channel(fd, max_payload) -> channel. Takes ownership of fd. */
static int l_channel(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, fd >= 0, 1, "not a file descriptor");
  luaL_argcheck(L, max > 0 && (uint64_t)max <= UINT32_MAX, 2, "maxMessageSize out of range");
  if (set_fd_flags((int)fd) != 0) return core_push_errno(L, "channel fd", errno);
  channel *ch = lua_newuserdatauv(L, sizeof *ch, 0);
  memset(ch, 0, sizeof *ch);
  ch->magic = CHANNEL_MAGIC;
  ch->fd = (int)fd;
  ch->max_payload = (size_t)max;
  luaL_setmetatable(L, CHANNEL_MT);
  return 1;
}

static void channel_close(channel *ch) {
  if (ch->fd < 0) return;
  close(ch->fd);
  ch->fd = -1;
  for (size_t i = ch->out_fds_head; i < ch->out_fds_len; i++) close(ch->out_fds[i].fd);
  for (size_t i = 0; i < ch->in_fds_len; i++)
    close(ch->in_fds[(ch->in_fds_head + i) % MAX_PENDING_FDS]);
  free(ch->out_fds);
  ch->out_fds = NULL;
  ch->out_fds_head = ch->out_fds_len = ch->out_fds_cap = 0;
  ch->in_fds_len = 0;
  buffer_free(&ch->out);
  buffer_free(&ch->in);
}

static int l_close(lua_State *L) {
  channel_close(to_channel(L));
  return 0;
}

/* __gc and __close: only ever called on a channel. */
static int l_gc(lua_State *L) {
  channel_close(lua_touserdata(L, 1));
  return 0;
}

static int l_is_closed(lua_State *L) {
  channel *ch = to_channel(L);
  lua_pushboolean(L, ch->fd < 0);
  return 1;
}

static int l_fileno(lua_State *L) {
  lua_pushinteger(L, check_channel(L)->fd);
  return 1;
}

static int push_fd(channel *ch, int fd, uint64_t offset) {
  if (ch->out_fds_head > 0 && ch->out_fds_head == ch->out_fds_len)
    ch->out_fds_head = ch->out_fds_len = 0;
  if (ch->out_fds_len == ch->out_fds_cap) {
    size_t cap = ch->out_fds_cap ? ch->out_fds_cap * 2 : 4;
    struct pending_fd *p = realloc(ch->out_fds, cap * sizeof *p);
    if (!p) return -1;
    ch->out_fds = p;
    ch->out_fds_cap = cap;
  }
  ch->out_fds[ch->out_fds_len++] = (struct pending_fd){offset, fd};
  return 0;
}

/* ch:send(value, internal[, fd_kind, fd]) -> end offset
 * Raises when the value cannot be sent; then nothing was queued. The
 * channel keeps its own duplicate of fd, so the caller may close it at
 * once. The end offset is compared with flush()'s written total to know
 * when this message has left. */
static int l_send(lua_State *L) {
  channel *ch = check_channel(L);
  luaL_checkany(L, 2);
  int internal = lua_toboolean(L, 3);
  lua_Integer kind = luaL_optinteger(L, 4, FRAME_FD_NONE);
  luaL_argcheck(L, kind >= FRAME_FD_NONE && kind <= FRAME_FD_KIND_MAX, 4, "bad fd kind");
  int dup_fd = -1;
  if (kind != FRAME_FD_NONE) {
    lua_Integer fd = luaL_checkinteger(L, 5);
    luaL_argcheck(L, fd >= 0 && fd <= INT32_MAX, 5, "not a file descriptor");
    dup_fd = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) return luaL_error(L, "cannot send fd %d: %s", (int)fd, strerror(errno));
  }

  /* Compact when more of the buffer is sent than unsent. */
  if (ch->out_head > 0 && ch->out_head >= ch->out.len - ch->out_head) {
    buffer_consume(&ch->out, ch->out_head);
    ch->out_head = 0;
  }
  size_t start = ch->out.len;
  if (buffer_reserve(&ch->out, FRAME_HEADER_SIZE) != 0) goto nomem;
  ch->out.len += FRAME_HEADER_SIZE;
  if (codec_encode(L, 2, &ch->out, ch->max_payload) != 0) {
    ch->out.len = start;
    if (dup_fd >= 0) close(dup_fd);
    return lua_error(L);
  }
  uint64_t frame_offset = ch->out_sent + (start - ch->out_head);
  if (dup_fd >= 0 && push_fd(ch, dup_fd, frame_offset) != 0) {
    ch->out.len = start;
    goto nomem;
  }
  frame_write_header(ch->out.data + start, (uint32_t)(ch->out.len - start - FRAME_HEADER_SIZE),
                     internal, (unsigned)kind);
  lua_pushinteger(L, (lua_Integer)(ch->out_sent + (ch->out.len - ch->out_head)));
  return 1;

nomem:
  if (dup_fd >= 0) close(dup_fd);
  return luaL_error(L, "not enough memory to queue the message");
}

/* ch:flush() -> written_total, pending_bytes | nil, err, ENAME
 * Writes until everything is out or the socket is full. */
static int l_flush(lua_State *L) {
  channel *ch = check_channel(L);
  while (ch->out_head < ch->out.len) {
    size_t len = ch->out.len - ch->out_head;
    if (len > WRITE_CHUNK) len = WRITE_CHUNK;
    struct pending_fd *next =
        ch->out_fds_head < ch->out_fds_len ? &ch->out_fds[ch->out_fds_head] : NULL;
    int attach = next && next->offset == ch->out_sent;
    /* An fd must go with its own frame's first byte: stop short of the
     * next frame that carries one. */
    struct pending_fd *limit = attach ? (ch->out_fds_head + 1 < ch->out_fds_len ? next + 1 : NULL)
                                      : next;
    if (limit && limit->offset - ch->out_sent < len) len = (size_t)(limit->offset - ch->out_sent);

    struct iovec iov = {ch->out.data + ch->out_head, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    union {
      char buf[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } control;
    if (attach) {
      memset(&control, 0, sizeof control);
      msg.msg_control = control.buf;
      msg.msg_controllen = sizeof control.buf;
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(c), &next->fd, sizeof(int));
    }
    ssize_t n = sendmsg(ch->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return core_push_errno(L, "channel write", errno);
    }
    if (attach) {
      close(next->fd); /* the peer has its own copy now */
      ch->out_fds_head++;
    }
    ch->out_head += (size_t)n;
    ch->out_sent += (uint64_t)n;
  }
  if (ch->out_head == ch->out.len) ch->out_head = ch->out.len = 0;
  lua_pushinteger(L, (lua_Integer)ch->out_sent);
  lua_pushinteger(L, (lua_Integer)(ch->out.len - ch->out_head));
  return 2;
}

static int take_fds(channel *ch, struct msghdr *msg) {
  int broken = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (ch->in_fds_len == MAX_PENDING_FDS) {
        close(fd);
        broken = 1;
        continue;
      }
      ch->in_fds[(ch->in_fds_head + ch->in_fds_len++) % MAX_PENDING_FDS] = fd;
    }
  }
  return broken ? -1 : 0;
}

/* ch:read() -> true, filled (got bytes) | false (nothing yet) | nil, err, ENAME
 * err is "EOF" when the peer has closed its end. `filled` is true when the
 * read took all the room it had, so more may be waiting: after a short read
 * the caller can skip the read that would only say EAGAIN. */
static int l_read(lua_State *L) {
  channel *ch = check_channel(L);
  if (ch->in_head > 0) {
    buffer_consume(&ch->in, ch->in_head);
    ch->in_head = 0;
  }
  /* Read a whole announced frame in one go when it is large. */
  size_t want = READ_CHUNK;
  frame_header h;
  if (frame_parse(ch->in.data, ch->in.len, ch->max_payload, &h) == FRAME_MORE &&
      ch->in.len >= FRAME_HEADER_SIZE) {
    const unsigned char *p = (const unsigned char *)ch->in.data;
    size_t total = FRAME_HEADER_SIZE + ((size_t)p[0] | (size_t)p[1] << 8 |
                                        (size_t)p[2] << 16 | (size_t)p[3] << 24);
    if (total - ch->in.len > want) want = total - ch->in.len;
  }
  if (buffer_reserve(&ch->in, want) != 0) return luaL_error(L, "not enough memory to read");

  for (;;) {
    struct iovec iov = {ch->in.data + ch->in.len, ch->in.cap - ch->in.len};
    union {
      char buf[CMSG_SPACE(sizeof(int) * 8)];
      struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(ch->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        lua_pushboolean(L, 0);
        return 1;
      }
      return core_push_errno(L, "channel read", errno);
    }
    int fds_ok = take_fds(ch, &msg) == 0;
    if (!fds_ok || (msg.msg_flags & MSG_CTRUNC)) {
      lua_pushnil(L);
      lua_pushstring(L, "peer error: file descriptors lost (control data truncated or too many unclaimed)");
      lua_pushstring(L, "EPROTO");
      return 3;
    }
    if (n == 0) {
      lua_pushnil(L);
      lua_pushstring(L, "EOF");
      lua_pushstring(L, "EOF");
      return 3;
    }
    ch->in.len += (size_t)n;
    lua_pushboolean(L, 1);
    lua_pushboolean(L, (size_t)n == iov.iov_len);
    return 2;
  }
}

/* ch:next() -> true, value, internal, fd_kind, fd  (one whole frame)
 *            | false                               (need more bytes)
 *            | nil, err                            (malformed: drop the peer) */
static int l_next(lua_State *L) {
  channel *ch = check_channel(L);
  frame_header h;
  const char *p = ch->in.data + ch->in_head;
  switch (frame_parse(p, ch->in.len - ch->in_head, ch->max_payload, &h)) {
  case FRAME_MORE:
    lua_pushboolean(L, 0);
    return 1;
  case FRAME_BAD:
    lua_pushnil(L);
    lua_pushfstring(L, "malformed frame from peer (bad header or over maxMessageSize %d)",
                    (int)(ch->max_payload > INT32_MAX ? INT32_MAX : ch->max_payload));
    return 2;
  case FRAME_OK:
    break;
  }
  int fd = -1;
  if (h.fd_kind != FRAME_FD_NONE) {
    if (ch->in_fds_len == 0) {
      lua_pushnil(L);
      lua_pushstring(L, "malformed frame from peer: announced fd did not arrive");
      return 2;
    }
    fd = ch->in_fds[ch->in_fds_head];
  }
  lua_pushboolean(L, 1);
  if (codec_decode(L, p + FRAME_HEADER_SIZE, h.payload_len) != 0) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  if (fd >= 0) {
    ch->in_fds_head = (ch->in_fds_head + 1) % MAX_PENDING_FDS;
    ch->in_fds_len--;
  }
  ch->in_head += FRAME_HEADER_SIZE + h.payload_len;
  if (ch->in_head == ch->in.len) ch->in_head = ch->in.len = 0;
  lua_pushboolean(L, h.internal);
  if (fd < 0) return 3;
  lua_pushinteger(L, h.fd_kind);
  lua_pushinteger(L, fd);
  return 5;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ch:wait(events, timeout_ms) -> true (ready) | false (timed out) | nil, err
 * Blocks outside the event loop: a worker's bind asks the master and must
 * answer before it returns, as a kernel bind does. events: "r" or "w". */
static int l_wait(lua_State *L) {
  channel *ch = check_channel(L);
  const char *events = luaL_checkstring(L, 2);
  lua_Integer timeout = luaL_checkinteger(L, 3);
  struct pollfd p = {.fd = ch->fd, .events = events[0] == 'w' ? POLLOUT : POLLIN};
  int64_t deadline = now_ms() + timeout;
  for (;;) {
    int64_t left = deadline - now_ms();
    int n = poll(&p, 1, left > 0 ? (int)(left > INT32_MAX ? INT32_MAX : left) : 0);
    if (n > 0) {
      lua_pushboolean(L, 1);
      return 1;
    }
    if (n == 0) {
      lua_pushboolean(L, 0);
      return 1;
    }
    if (errno != EINTR) return core_push_errno(L, "channel wait", errno);
  }
}

/* ch:pending() -> unsent bytes */
static int l_pending(lua_State *L) {
  channel *ch = to_channel(L);
  lua_pushinteger(L, (lua_Integer)(ch->out.len - ch->out_head));
  return 1;
}

void channel_open(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"send", l_send},   {"flush", l_flush},     {"read", l_read},
      {"next", l_next},   {"fileno", l_fileno},   {"pending", l_pending},
      {"close", l_close}, {"is_closed", l_is_closed}, {"wait", l_wait}, {NULL, NULL}};
  luaL_newmetatable(L, CHANNEL_MT);
  luaL_newlib(L, methods);
  /* Also core.channel_methods: the Lua hot paths call these directly. */
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "channel_methods");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_channel);
  lua_setfield(L, -2, "channel");
  static const char *kinds[] = {"NONE", "RAW", "TCP", "PIPE", "UDP"};
  lua_newtable(L);
  for (int i = 0; i <= FRAME_FD_KIND_MAX; i++) {
    lua_pushinteger(L, i);
    lua_setfield(L, -2, kinds[i]);
  }
  lua_setfield(L, -2, "FD_KIND");
}
