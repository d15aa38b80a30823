/* The master<->worker channel: a non-blocking AF_UNIX stream socket with
 * length-framed messages. Sends are appended to one output buffer and
 * written in as few sendmsg() calls as the socket takes (the Lua layer
 * flushes once per loop turn; a burst past the high-water mark writes
 * through as it goes), and one recvmsg() brings in as many frames as are
 * waiting. File descriptors ride with SCM_RIGHTS on the sendmsg() that
 * writes their frame's first byte. The channel never calls luv: Lua polls
 * ch:fileno() and calls flush/read/next. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
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
/* A burst of sends writes through once this many bytes are unsent (or
 * sendHighWaterMark, if lower), then at most once per this many newly
 * queued bytes: the reader works while the burst goes on rather than after
 * it, and a full socket costs one failed write per step, not one per
 * message. Smaller bursts go out in one write per loop turn (the flush). */
#define WRITE_THROUGH_STEP (64 * 1024)
/* Queue and receive buffer memory kept after a peak. */
#define KEEP_BYTES (1024 * 1024)
/* Values at least this big are decoded under lua_pcall: running out of
 * memory for one costs that message, not the process. */
#define PROTECTED_DECODE_MIN 4096
/* Received fds not yet claimed by a frame; a peer that sends more is
 * broken. */
#define MAX_PENDING_FDS 64
/* In the received-fd FIFO: an fd the kernel could not give us (we were out
 * of descriptors, MSG_CTRUNC); the frame that announced it is dropped. */
#define LOST_FD (-2)

struct pending_fd {
  uint64_t offset; /* absolute output offset of its frame's first byte */
  int fd;
};

#define CHANNEL_MAGIC 0x4c4e4843u /* "CHNL" */

typedef struct channel {
  uint32_t magic; /* CHANNEL_MAGIC: see to_channel() */
  int fd;         /* the socket; -1 once closed */
  /* An epoll fd watching the socket, and what the loop polls: the loop
   * then sees only "readable", never the socket's POLLERR (a peer that died
   * with messages unread), which luv would print as EBADF. The socket's
   * own read says what happened. */
  int pollfd;
  int watch_out; /* pollfd also waits for the socket to be writable */
  size_t max_payload;
  size_t high_water; /* unwritten bytes from which send says "slow down" */
  size_t max_queue;  /* unwritten bytes from which send refuses */

  buffer out;
  size_t out_head;     /* out.data[out_head..len) is unsent */
  uint64_t out_sent;   /* bytes written since creation */
  size_t through_at;   /* unsent bytes at which a send next writes through */
  int write_err;       /* errno of a failed write, for the next send/flush */
  struct pending_fd *out_fds; /* FIFO, ordered by offset */
  size_t out_fds_head, out_fds_len, out_fds_cap;

  buffer in;
  size_t in_head; /* in.data[in_head..len) is not parsed yet */
  uint64_t skip;  /* bytes of a dropped frame still to be read and discarded */
  int in_fds[MAX_PENDING_FDS]; /* FIFO; LOST_FD marks a lost one */
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

/* Unsent bytes at which the first send of a burst writes through. */
static size_t first_through(const channel *ch) {
  return ch->high_water < WRITE_THROUGH_STEP ? ch->high_water : WRITE_THROUGH_STEP;
}

static int set_fd_flags(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) return -1;
  return 0;
}

/* core.channel(fd, max_payload, high_water, max_queue) -> channel
 *                                                    | nil, err, ENAME
 * Takes ownership of fd on success. */
static int l_channel(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_Integer max = luaL_checkinteger(L, 2);
  lua_Integer high = luaL_checkinteger(L, 3);
  lua_Integer queue = luaL_checkinteger(L, 4);
  luaL_argcheck(L, fd >= 0 && fd <= INT32_MAX, 1, "not a file descriptor");
  luaL_argcheck(L, max > 0 && (uint64_t)max <= UINT32_MAX, 2, "maxMessageSize out of range");
  luaL_argcheck(L, high >= 0, 3, "sendHighWaterMark out of range");
  luaL_argcheck(L, queue > 0, 4, "maxQueueSize out of range");
  if (set_fd_flags((int)fd) != 0) return core_push_errno(L, "channel fd", errno);
  channel *ch = lua_newuserdatauv(L, sizeof *ch, 0);
  memset(ch, 0, sizeof *ch);
  ch->magic = CHANNEL_MAGIC;
  ch->fd = -1; /* not ours until the epoll fd is made */
  ch->pollfd = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN};
  if (ch->pollfd < 0 || epoll_ctl(ch->pollfd, EPOLL_CTL_ADD, (int)fd, &ev) != 0) {
    int err = errno;
    if (ch->pollfd >= 0) close(ch->pollfd);
    ch->pollfd = -1;
    return core_push_errno(L, "channel epoll", err);
  }
  ch->fd = (int)fd;
  ch->max_payload = (size_t)max;
  ch->high_water = (size_t)high;
  ch->max_queue = (size_t)queue;
  ch->through_at = first_through(ch);
  luaL_setmetatable(L, CHANNEL_MT);
  return 1;
}

static void channel_close(channel *ch) {
  if (ch->fd < 0) return;
  close(ch->pollfd);
  close(ch->fd);
  ch->fd = ch->pollfd = -1;
  for (size_t i = ch->out_fds_head; i < ch->out_fds_len; i++) close(ch->out_fds[i].fd);
  for (size_t i = 0; i < ch->in_fds_len; i++) {
    int fd = ch->in_fds[(ch->in_fds_head + i) % MAX_PENDING_FDS];
    if (fd != LOST_FD) close(fd);
  }
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

/* ch:fileno() -> the fd for the loop to poll for reading (the epoll fd:
 * readable when the socket is readable, or writable while ch:watch(true)). */
static int l_fileno(lua_State *L) {
  lua_pushinteger(L, check_channel(L)->pollfd);
  return 1;
}

/* ch:watch(writing) -> true | nil, err, ENAME
 * Whether fileno() also wakes the loop when the socket can take more. */
static int l_watch(lua_State *L) {
  channel *ch = check_channel(L);
  int want = lua_toboolean(L, 2);
  if (want != ch->watch_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0)};
    if (epoll_ctl(ch->pollfd, EPOLL_CTL_MOD, ch->fd, &ev) != 0)
      return core_push_errno(L, "channel epoll", errno);
    ch->watch_out = want;
  }
  lua_pushboolean(L, 1);
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

static size_t unsent(const channel *ch) { return ch->out.len - ch->out_head; }

/* Write until everything is out or the socket is full. 0, or the errno of
 * a failed sendmsg (EAGAIN is not a failure). */
static int channel_write(channel *ch) {
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
      return errno;
    }
    if (attach) {
      close(next->fd); /* the peer has its own copy now */
      ch->out_fds_head++;
    }
    ch->out_head += (size_t)n;
    ch->out_sent += (uint64_t)n;
  }
  if (ch->out_head == ch->out.len) {
    ch->out_head = ch->out.len = 0;
    buffer_trim(&ch->out, KEEP_BYTES);
  }
  return 0;
}

static int push_refused(lua_State *L, const char *what, int err) {
  char text[160];
  snprintf(text, sizeof text, "%s: %s", strerrorname_np(err) ? strerrorname_np(err) : "EIO", what);
  lua_pushnil(L);
  lua_pushstring(L, text);
  lua_pushstring(L, strerrorname_np(err) ? strerrorname_np(err) : "EIO");
  return 3;
}

/* A string at least this long sent on a channel with nothing unsent (the
 * send would write through at once anyway) is written from the Lua string
 * itself, with its frame header alongside: no copy into the queue unless
 * the socket leaves some of it. */
#define DIRECT_MIN WRITE_THROUGH_STEP

/* send() of the string s (of len bytes, an encoding of at most
 * max_payload) on a channel with nothing unsent, no fd with it. Returns
 * send()'s results. */
static int send_direct(lua_State *L, channel *ch, int internal, const char *s, size_t len) {
  unsigned char head[FRAME_HEADER_SIZE + CODEC_STRING_HEAD_MAX];
  size_t hlen = FRAME_HEADER_SIZE + codec_string_head(head + FRAME_HEADER_SIZE, len);
  size_t total = hlen + len;
  /* Room for all of it first: once a byte is written the rest must queue. */
  ch->out_head = ch->out.len = 0;
  if (buffer_reserve(&ch->out, total) != 0)
    return push_refused(L, "not enough memory to queue the message", ENOMEM);
  frame_write_header((char *)head, (uint32_t)(total - FRAME_HEADER_SIZE), internal, FRAME_FD_NONE);
  struct iovec iov[2] = {{head, hlen}, {(void *)s, len}};
  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
  ssize_t n;
  do n = sendmsg(ch->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    /* As a send that writes through: the message is queued, and the next
     * flush reports the error. */
    if (errno != EAGAIN && errno != EWOULDBLOCK) ch->write_err = errno;
    n = 0;
  }
  size_t sent = (size_t)n;
  ch->out_sent += sent;
  if (sent < hlen) {
    memcpy(ch->out.data, head + sent, hlen - sent);
    memcpy(ch->out.data + (hlen - sent), s, len);
    ch->out.len = total - sent;
  } else if (sent < total) {
    memcpy(ch->out.data, s + (sent - hlen), total - sent);
    ch->out.len = total - sent;
  }
  size_t pending = unsent(ch);
  if (pending == 0) buffer_trim(&ch->out, KEEP_BYTES);
  ch->through_at = pending + WRITE_THROUGH_STEP;
  lua_pushinteger(L, (lua_Integer)(ch->out_sent + pending));
  lua_pushboolean(L, pending >= ch->high_water);
  return 2;
}

/* ch:send(value, internal[, fd_kind, fd[, take]])
 *   -> end_offset, above_high_water | nil, err, ENAME
 * Raises when the value cannot be sent (a function, a cycle, over
 * maxMessageSize...); then nothing was queued. nil, err, ENAME when the
 * message was refused: the queue holds maxQueueSize bytes or this message
 * would take a queue that is not empty past it (ENOBUFS), an earlier write failed (its errno), or fd could
 * not be duplicated or memory ran out. The channel keeps its own duplicate
 * of fd, so the caller may close it at once; with `take`, the channel takes
 * fd itself instead (no descriptor is needed to pass it), and on a refusal
 * fd is still the caller's. end_offset is compared with flush()'s written
 * total to know when this message has left. */
static int l_send(lua_State *L) {
  channel *ch = check_channel(L);
  luaL_checkany(L, 2);
  int internal = lua_toboolean(L, 3);
  lua_Integer kind = luaL_optinteger(L, 4, FRAME_FD_NONE);
  luaL_argcheck(L, kind >= FRAME_FD_NONE && kind <= FRAME_FD_KIND_MAX, 4, "bad fd kind");
  int fd = -1, take = 0;
  if (kind != FRAME_FD_NONE) {
    lua_Integer given = luaL_checkinteger(L, 5);
    luaL_argcheck(L, given >= 0 && given <= INT32_MAX, 5, "not a file descriptor");
    fd = (int)given;
    take = lua_toboolean(L, 6);
  }
  if (ch->write_err) return push_refused(L, "the channel cannot be written to", ch->write_err);
  size_t pending = unsent(ch);
  if (pending >= ch->max_queue)
    return push_refused(L, "send queue full (maxQueueSize bytes unwritten)", ENOBUFS);
  if (pending == 0 && fd < 0 && lua_type(L, 2) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, 2, &len);
    /* Anything over maxMessageSize goes the usual way, to its error. */
    if (len >= DIRECT_MIN && ch->max_payload >= CODEC_STRING_HEAD_MAX &&
        len <= ch->max_payload - CODEC_STRING_HEAD_MAX)
      return send_direct(L, ch, internal, s, len);
  }
  if (!take && fd >= 0) {
    fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return push_refused(L, "cannot duplicate the handle's file descriptor", errno);
  }

  /* Compact when more of the buffer is sent than unsent. */
  if (ch->out_head > 0 && ch->out_head >= pending) {
    buffer_consume(&ch->out, ch->out_head);
    ch->out_head = 0;
  }
  /* The message may not take a queue that holds something past
   * maxQueueSize. An empty queue takes any message up to maxMessageSize:
   * otherwise one bigger than maxQueueSize could never be sent, and an
   * idle channel would refuse it as "queue full" with no 'drain' to come. */
  size_t room = ch->max_queue - pending;
  size_t limit = ch->max_payload;
  int limited_by_queue = 0;
  if (pending > 0 && room < (size_t)FRAME_HEADER_SIZE + limit) {
    limit = room > FRAME_HEADER_SIZE ? room - FRAME_HEADER_SIZE : 0;
    limited_by_queue = 1;
  }
  size_t start = ch->out.len;
  int status = CODEC_NOMEM;
  if (buffer_reserve(&ch->out, FRAME_HEADER_SIZE) == 0) {
    ch->out.len += FRAME_HEADER_SIZE;
    status = codec_encode(L, 2, &ch->out, limit);
    if (status == CODEC_OK && fd >= 0 && push_fd(ch, fd, ch->out_sent + (start - ch->out_head)) != 0)
      status = CODEC_NOMEM;
    if (status != CODEC_OK) ch->out.len = start;
  }
  if (status != CODEC_OK) {
    buffer_trim(&ch->out, KEEP_BYTES); /* a failed encode gives its peak back */
    if (fd >= 0 && !take) close(fd);
    if (status == CODEC_NOMEM) return push_refused(L, "not enough memory to queue the message", ENOMEM);
    if (status == CODEC_TOO_BIG && limited_by_queue)
      return push_refused(L, "send queue full (the message would pass maxQueueSize)", ENOBUFS);
    return lua_error(L); /* codec_encode pushed the message */
  }
  frame_write_header(ch->out.data + start, (uint32_t)(ch->out.len - start - FRAME_HEADER_SIZE),
                     internal, (unsigned)kind);

  /* A long burst starts writing while it runs. */
  pending = unsent(ch);
  if (pending >= ch->through_at) {
    int err = channel_write(ch);
    if (err) ch->write_err = err; /* this message is queued; the next flush reports it */
    pending = unsent(ch);
    ch->through_at = pending + WRITE_THROUGH_STEP;
  }
  lua_pushinteger(L, (lua_Integer)(ch->out_sent + pending));
  lua_pushboolean(L, pending >= ch->high_water);
  return 2;
}

/* ch:flush() -> written_total, pending_bytes | nil, err, ENAME
 * Writes until everything is out or the socket is full. */
static int l_flush(lua_State *L) {
  channel *ch = check_channel(L);
  int err = ch->write_err ? ch->write_err : channel_write(ch);
  if (err) {
    ch->write_err = err;
    return core_push_errno(L, "channel write", err);
  }
  size_t pending = unsent(ch);
  ch->through_at = pending > 0 ? pending + WRITE_THROUGH_STEP : first_through(ch);
  lua_pushinteger(L, (lua_Integer)ch->out_sent);
  lua_pushinteger(L, (lua_Integer)pending);
  return 2;
}

static int push_in_fd(channel *ch, int fd) {
  if (ch->in_fds_len == MAX_PENDING_FDS) return -1;
  ch->in_fds[(ch->in_fds_head + ch->in_fds_len++) % MAX_PENDING_FDS] = fd;
  return 0;
}

static int pop_in_fd(channel *ch) {
  int fd = ch->in_fds[ch->in_fds_head];
  ch->in_fds_head = (ch->in_fds_head + 1) % MAX_PENDING_FDS;
  ch->in_fds_len--;
  return fd;
}

/* Queue the fds a recvmsg brought. Our sender puts one fd on a sendmsg, and
 * the kernel ends a read after the data that carried fds, so one read has
 * at most one. MSG_CTRUNC with none means the kernel could not give it to
 * us (we are out of descriptors): a LOST_FD stands in for it. -1 when the
 * peer is broken (more fds than that, or more than we keep). */
static int take_fds(channel *ch, struct msghdr *msg) {
  int broken = 0;
  size_t got = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      got++;
      if (push_in_fd(ch, fd) != 0) {
        close(fd);
        broken = 1;
      }
    }
  }
  if (msg->msg_flags & MSG_CTRUNC) {
    if (got > 0 || push_in_fd(ch, LOST_FD) != 0) broken = 1;
  }
  return broken ? -1 : 0;
}

/* The frame header at the start of the unparsed input, if 5 bytes are in. */
static int peek_header(const channel *ch, uint32_t *payload_len, unsigned *fd_kind) {
  if (ch->in.len - ch->in_head < FRAME_HEADER_SIZE) return 0;
  const unsigned char *p = (const unsigned char *)ch->in.data + ch->in_head;
  *payload_len = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
  *fd_kind = (p[4] >> 1) & 0x7u;
  return 1;
}

/* No memory to take in the frame at the head of the input: drop it. Its
 * bytes in the buffer go now, the rest as they arrive (ch->skip), and so
 * does its fd. */
static int drop_incoming_frame(lua_State *L, channel *ch, uint32_t payload_len, unsigned fd_kind) {
  size_t have = ch->in.len - ch->in_head;
  ch->skip = (uint64_t)FRAME_HEADER_SIZE + payload_len - have;
  ch->in.len = ch->in_head = 0;
  buffer_trim(&ch->in, READ_CHUNK);
  if (fd_kind != FRAME_FD_NONE && ch->in_fds_len > 0) {
    int fd = pop_in_fd(ch);
    if (fd != LOST_FD) close(fd);
  }
  lua_pushnil(L);
  lua_pushfstring(L, "ENOMEM: a message of %d bytes was dropped: not enough memory to receive it",
                  (int)(payload_len > INT32_MAX ? INT32_MAX : payload_len));
  lua_pushliteral(L, "ENOMEM");
  return 3;
}

/* ch:read() -> true, filled (got bytes) | false (nothing yet) | nil, err, ENAME
 * err is "EOF" when the peer has closed its end; ENAME "ENOMEM" when a
 * message had to be dropped for want of memory (the channel goes on).
 * `filled` is true when the read took all the room it had, so more may be
 * waiting: after a short read the caller can skip the read that would
 * only say EAGAIN. */
static int l_read(lua_State *L) {
  channel *ch = check_channel(L);
  if (ch->in_head > 0) {
    buffer_consume(&ch->in, ch->in_head);
    ch->in_head = 0;
  }
  /* Read a whole announced frame in one go when it is large. */
  size_t want = READ_CHUNK;
  uint32_t payload_len = 0;
  unsigned fd_kind = 0;
  int have_header = ch->skip == 0 && peek_header(ch, &payload_len, &fd_kind) &&
                    payload_len <= ch->max_payload;
  if (have_header) {
    size_t total = FRAME_HEADER_SIZE + (size_t)payload_len;
    if (total > ch->in.len && total - ch->in.len > want) want = total - ch->in.len;
  }
  if (buffer_reserve(&ch->in, want) != 0) {
    if (have_header) return drop_incoming_frame(L, ch, payload_len, fd_kind);
    return core_push_errno(L, "channel read", ENOMEM);
  }

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
    if (take_fds(ch, &msg) != 0) {
      lua_pushnil(L);
      lua_pushstring(L, "peer error: file descriptors lost (more than announced)");
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
    if (ch->skip > 0) { /* the rest of a dropped frame */
      size_t d = ch->skip < ch->in.len ? (size_t)ch->skip : ch->in.len;
      buffer_consume(&ch->in, d);
      ch->skip -= d;
    }
    lua_pushboolean(L, 1);
    lua_pushboolean(L, (size_t)n == iov.iov_len);
    return 2;
  }
}

/* Decode under lua_pcall: (pointer, length) -> true, value | false, err */
static int decode_protected(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  lua_settop(L, 0);
  int ok = codec_decode(L, p, len) == 0;
  lua_pushboolean(L, ok);
  lua_insert(L, -2);
  return 2;
}

/* Decode one payload onto the stack: 1 and the value; 0 and an error
 * message (malformed); -1 and an error message (no memory: the frame is to
 * be dropped). */
static int decode_payload(lua_State *L, const char *p, size_t len) {
  if (len < PROTECTED_DECODE_MIN) return codec_decode(L, p, len) == 0 ? 1 : 0;
  lua_pushcfunction(L, decode_protected);
  lua_pushlightuserdata(L, (void *)p);
  lua_pushinteger(L, (lua_Integer)len);
  if (lua_pcall(L, 2, 2, 0) != 0) {
    lua_pushfstring(L, "ENOMEM: a message of %d bytes was dropped: not enough memory to decode it",
                    (int)(len > INT32_MAX ? INT32_MAX : len));
    lua_remove(L, -2);
    return -1;
  }
  int ok = lua_toboolean(L, -2);
  lua_remove(L, -2);
  return ok;
}

/* ch:next() -> true, value, internal[, fd_kind, fd]  (one whole frame)
 *            | false                                 (need more bytes)
 *            | nil, err                              (malformed: drop the peer)
 *            | "dropped", err, internal[, value]     (a frame that could not be
 *              delivered: its fd was lost, or no memory for its value) */
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
  int decoded = decode_payload(L, p + FRAME_HEADER_SIZE, h.payload_len);
  if (decoded == 0) { /* malformed: the error message is on the stack */
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  /* From here the frame is consumed, delivered or dropped. */
  if (fd != -1) pop_in_fd(ch);
  ch->in_head += FRAME_HEADER_SIZE + h.payload_len;
  if (ch->in_head == ch->in.len) {
    ch->in_head = ch->in.len = 0;
    if (h.payload_len >= PROTECTED_DECODE_MIN) buffer_trim(&ch->in, KEEP_BYTES);
  }
  if (decoded < 0 || fd == LOST_FD) {
    if (fd >= 0) close(fd);
    if (decoded > 0) { /* the value, kept for the caller to see what was lost */
      lua_pushliteral(L, "dropped");
      lua_insert(L, -2);
      lua_pushliteral(L, "EMFILE: a message was dropped: the file descriptor sent with it "
                         "could not be received (out of file descriptors)");
      lua_insert(L, -2);
      lua_pushboolean(L, h.internal);
      lua_insert(L, -2);
      return 4;
    }
    lua_pushliteral(L, "dropped");
    lua_insert(L, -2);
    lua_pushboolean(L, h.internal);
    return 3;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -2);
  lua_pushboolean(L, h.internal);
  if (fd < 0) return 3;
  lua_pushinteger(L, h.fd_kind);
  lua_pushinteger(L, fd);
  return 5;
}

/* ch:take(t) -> n, more[, value]
 * Decodes the whole frames at the head of the input that are plain user
 * messages (not internal, no fd, a small payload, not nil), at most
 * TAKE_MAX of them, in order: one call per batch rather than one next()
 * per message. One alone is returned as `value` (a round trip's message:
 * no table work); two or more go to t[1..n]. n is 0 when the head frame
 * is anything else, or not all in yet: next() deals with it (and reports
 * what is wrong with it). `more` is false when no byte is left unparsed
 * (no next() needed to learn it). */
#define TAKE_MAX 64
static int l_take(lua_State *L) {
  channel *ch = check_channel(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_Integer n = 0;
  while (n < TAKE_MAX) {
    frame_header h;
    const char *p = ch->in.data + ch->in_head;
    if (frame_parse(p, ch->in.len - ch->in_head, ch->max_payload, &h) != FRAME_OK) break;
    if (h.internal || h.fd_kind != FRAME_FD_NONE || h.payload_len >= PROTECTED_DECODE_MIN) break;
    /* A nil message (its payload is the nil tag alone) goes through next():
     * in t, nil marks an entry already dispatched. */
    if (h.payload_len == 1 && p[FRAME_HEADER_SIZE] == 0) break;
    if (codec_decode(L, p + FRAME_HEADER_SIZE, h.payload_len) != 0) {
      lua_pop(L, 1); /* malformed: left for next() */
      break;
    }
    ch->in_head += FRAME_HEADER_SIZE + h.payload_len;
    if (++n == 1) continue; /* the first stays at index 3 */
    if (n == 2) {           /* a batch: the first goes to t too */
      lua_pushvalue(L, 3);
      lua_rawseti(L, 2, 1);
    }
    lua_rawseti(L, 2, n);
  }
  int more = ch->in_head < ch->in.len;
  if (!more) ch->in_head = ch->in.len = 0;
  lua_pushinteger(L, n);
  lua_pushboolean(L, more);
  if (n != 1) return 2;
  lua_pushvalue(L, 3);
  return 3;
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
      {"next", l_next},   {"fileno", l_fileno},   {"watch", l_watch},
      {"pending", l_pending}, {"close", l_close}, {"is_closed", l_is_closed},
      {"wait", l_wait},   {"take", l_take},           {NULL, NULL}};
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
