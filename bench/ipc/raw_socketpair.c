/* Raw C baseline for bench/ipc: a socketpair(AF_UNIX, SOCK_STREAM) between
 * a parent and a forked child, framing only, no serialization.
 *
 * Frames are laid out like luv-cluster's: u32 payload length (little
 * endian) | u8 flags | payload.
 *
 *   oneway_small  child -> parent, N frames of a 28 byte payload; the
 *                 sender fills a 64 KiB batch with frames and writes it with
 *                 large write() calls; the receiver reads up to 4 MiB at a
 *                 time and parses frame by frame (checking the sequence
 *                 number).
 *   oneway_64k    child -> parent, N frames of a 64 KiB payload, written 16
 *                 frames (~1 MiB) per write(); the receiver copies each
 *                 payload out into its own buffer (as a message value
 *                 would be).
 *   pingpong      parent writes one small frame, the child reads it and
 *                 writes it back, the parent reads it: N round trips with
 *                 blocking I/O, per round trip latency via clock_gettime.
 *                 This is the reference figure.
 *   pingpong_epoll  the same over non-blocking sockets, each side waiting in
 *                 epoll_wait() and reading until EAGAIN, as an event loop
 *                 does (for comparison only: what the event loop costs).
 *
 * Every mode is timed by the receiver (the parent): from the moment it tells
 * the child to start until the last frame has been parsed. In the one-way
 * modes the child (the sender) also prints its peak RSS (VmHWM).
 *
 * Usage: raw_socketpair [small_n [big_n [pingpong_n [pingpong_epoll_n]]]]
 * (a count of 0 skips that mode)
 * Output: one line per figure, `raw <metric> key=value ...`. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HDR 5
#define SMALL_PAYLOAD 28 /* "seq=XXXXXXXX text=hello world" -ish */
#define BIG_PAYLOAD 65536
/* Sender batches: 64 KiB of small frames, or 16 big frames (~1 MiB) per
 * write(); the receiver reads up to 4 MiB at a time. */
#define BATCH_BYTES 65536
#define BIG_BATCH_FRAMES 16
#define RBUF_BYTES (4 * 1024 * 1024)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += n;
    len -= (size_t)n;
  }
}

static void read_all(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (n == 0) {
      fprintf(stderr, "raw_socketpair: unexpected EOF\n");
      exit(1);
    }
    p += n;
    len -= (size_t)n;
  }
}

static void put_u32le(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32le(const unsigned char *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}

/* Writes a frame of `plen` payload bytes whose first 4 payload bytes are
 * `seq`; the rest is filled from `fill`. Returns the frame size. */
static size_t put_frame(unsigned char *out, uint32_t seq, size_t plen,
                        const unsigned char *fill) {
  put_u32le(out, (uint32_t)plen);
  out[4] = 0;
  put_u32le(out + HDR, seq);
  memcpy(out + HDR + 4, fill, plen - 4);
  return HDR + plen;
}

/* ---- child side (the sender in the one-way modes, the echo in pingpong) */

static void child_oneway(int fd, long n, size_t plen) {
  char go;
  read_all(fd, &go, 1);
  static unsigned char fill[BIG_PAYLOAD];
  memset(fill, 'x', sizeof fill);
  memcpy(fill, " text=hello world.......", 24);
  size_t cap = BATCH_BYTES > HDR + plen ? BATCH_BYTES : BIG_BATCH_FRAMES * (HDR + plen);
  unsigned char *batch = malloc(cap);
  if (!batch) die("malloc");
  size_t used = 0;
  for (long i = 1; i <= n; i++) {
    if (used + HDR + plen > cap) {
      write_all(fd, batch, used);
      used = 0;
    }
    used += put_frame(batch + used, (uint32_t)i, plen, fill);
  }
  if (used) write_all(fd, batch, used);
  free(batch);
}

/* One small ping-pong frame. ep < 0: blocking reads of the header, then
 * the payload. ep >= 0: a non-blocking socket read until EAGAIN, waiting in
 * epoll_wait() while the frame is incomplete. */
static void recv_small_frame(int fd, int ep, unsigned char *frame) {
  if (ep < 0) {
    read_all(fd, frame, HDR);
    if (get_u32le(frame) != SMALL_PAYLOAD) {
      fprintf(stderr, "raw_socketpair: bad ping-pong frame length\n");
      exit(1);
    }
    read_all(fd, frame + HDR, SMALL_PAYLOAD);
    return;
  }
  unsigned char buf[4096];
  size_t have = 0;
  for (;;) {
    ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
    if (r > 0) {
      have += (size_t)r;
      continue;
    }
    if (r == 0) {
      /* The echoing child exits after its last reply: EOF after a whole
       * frame is the end, not an error. */
      if (have >= HDR + SMALL_PAYLOAD) break;
      fprintf(stderr, "raw_socketpair: unexpected EOF\n");
      exit(1);
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) die("recv");
    if (have >= HDR + SMALL_PAYLOAD) break;
    struct epoll_event ev;
    if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR) die("epoll_wait");
  }
  if (have != HDR + SMALL_PAYLOAD || get_u32le(buf) != SMALL_PAYLOAD) {
    fprintf(stderr, "raw_socketpair: bad ping-pong frame\n");
    exit(1);
  }
  memcpy(frame, buf, have);
}

/* ep >= 0: fd is non-blocking; a 33-byte frame always fits in the socket
 * buffer of a ping-pong, so a would-block here is an error. */
static void send_small_frame(int fd, const unsigned char *frame) {
  write_all(fd, frame, HDR + SMALL_PAYLOAD);
}

static int setup_epoll(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN, .data = {.fd = fd}};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
  return ep;
}

static void child_pingpong(int fd, long n, int use_epoll) {
  int ep = use_epoll ? setup_epoll(fd) : -1;
  unsigned char frame[HDR + SMALL_PAYLOAD];
  for (long i = 0; i < n; i++) {
    recv_small_frame(fd, ep, frame);
    send_small_frame(fd, frame);
  }
}

/* ---- parent side (the receiver / the pinger) */

/* Reads and parses n frames of plen payload bytes; copies each payload into
 * `msg` when copy is set. Returns the elapsed seconds since the go byte. */
static double parent_oneway(int fd, long n, size_t plen, int copy) {
  unsigned char *rbuf = malloc(RBUF_BYTES);
  unsigned char *msg = malloc(plen);
  if (!rbuf || !msg) die("malloc");
  size_t have = 0, off = 0;
  long got = 0;
  uint64_t sum = 0;
  double t0 = now_s();
  write_all(fd, "g", 1);
  while (got < n) {
    /* parse whole frames in the buffer */
    for (;;) {
      if (have - off < HDR) break;
      uint32_t len = get_u32le(rbuf + off);
      if (len != plen || rbuf[off + 4] != 0) {
        fprintf(stderr, "raw_socketpair: bad frame\n");
        exit(1);
      }
      if (have - off < HDR + len) break;
      uint32_t seq = get_u32le(rbuf + off + HDR);
      if (seq != (uint32_t)(got + 1)) {
        fprintf(stderr, "raw_socketpair: out of order %u\n", seq);
        exit(1);
      }
      if (copy) {
        memcpy(msg, rbuf + off + HDR, len);
        sum += msg[len - 1];
      }
      got++;
      off += HDR + len;
    }
    if (got >= n) break;
    /* keep the partial frame, refill */
    if (off > 0) {
      memmove(rbuf, rbuf + off, have - off);
      have -= off;
      off = 0;
    }
    ssize_t r = read(fd, rbuf + have, RBUF_BYTES - have);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (r == 0) {
      fprintf(stderr, "raw_socketpair: EOF after %ld frames\n", got);
      exit(1);
    }
    have += (size_t)r;
  }
  double dt = now_s() - t0;
  if (sum == 1) fprintf(stderr, "%llu\n", (unsigned long long)sum);
  free(rbuf);
  free(msg);
  return dt;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *sorted, long n, double p) {
  long i = (long)(p * (double)(n - 1) + 0.5);
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return sorted[i];
}

typedef enum { M_SMALL, M_BIG, M_PINGPONG, M_PINGPONG_EPOLL } mode_t_;

/* The sender's (this child's) peak RSS, VmHWM, once it has sent all. */
static void print_sender_hwm(const char *what) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %ld", &kb) == 1) break;
  fclose(f);
  if (kb >= 0) printf("raw sender_hwm_%s kb=%ld mb=%.2f\n", what, kb, (double)kb / 1024);
  fflush(stdout);
}

static void run_mode(mode_t_ mode, long n) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    close(sv[0]);
    if (mode == M_SMALL) child_oneway(sv[1], n, SMALL_PAYLOAD);
    else if (mode == M_BIG) child_oneway(sv[1], n, BIG_PAYLOAD);
    else child_pingpong(sv[1], n, mode == M_PINGPONG_EPOLL);
    if (mode == M_SMALL || mode == M_BIG) print_sender_hwm(mode == M_SMALL ? "small" : "64k");
    _exit(0);
  }
  close(sv[1]);
  int fd = sv[0];
  if (mode == M_SMALL) {
    double dt = parent_oneway(fd, n, SMALL_PAYLOAD, 0);
    printf("raw oneway_small msgs=%ld seconds=%.6f msgs_per_s=%.0f\n", n, dt,
           (double)n / dt);
  } else if (mode == M_BIG) {
    double dt = parent_oneway(fd, n, BIG_PAYLOAD, 1);
    double bytes = (double)n * BIG_PAYLOAD;
    printf("raw oneway_64k msgs=%ld seconds=%.6f msgs_per_s=%.0f "
           "bytes_per_s=%.0f gb_per_s=%.3f\n",
           n, dt, (double)n / dt, bytes / dt, bytes / dt / 1e9);
  } else {
    int ep = mode == M_PINGPONG_EPOLL ? setup_epoll(fd) : -1;
    double *lat = malloc(sizeof(double) * (size_t)n);
    if (!lat) die("malloc");
    unsigned char frame[HDR + SMALL_PAYLOAD], back[HDR + SMALL_PAYLOAD];
    unsigned char fill[SMALL_PAYLOAD];
    memset(fill, '.', sizeof fill);
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
      double a = now_s();
      put_frame(frame, (uint32_t)i, SMALL_PAYLOAD, fill);
      send_small_frame(fd, frame);
      recv_small_frame(fd, ep, back);
      if (get_u32le(back + HDR) != (uint32_t)i) {
        fprintf(stderr, "raw_socketpair: bad pong seq\n");
        exit(1);
      }
      lat[i] = now_s() - a;
    }
    double dt = now_s() - t0;
    qsort(lat, (size_t)n, sizeof(double), cmp_double);
    printf("raw %s rts=%ld seconds=%.6f rt_per_s=%.0f p50_us=%.2f "
           "p99_us=%.2f\n",
           ep < 0 ? "pingpong" : "pingpong_epoll", n, dt, (double)n / dt,
           pct(lat, n, 0.50) * 1e6,
           pct(lat, n, 0.99) * 1e6);
    free(lat);
    if (ep >= 0) close(ep);
  }
  fflush(stdout);
  close(fd);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "raw_socketpair: child failed\n");
    exit(1);
  }
}

int main(int argc, char **argv) {
  long small_n = argc > 1 ? atol(argv[1]) : 20000000;
  long big_n = argc > 2 ? atol(argv[2]) : 40000;
  long pp_n = argc > 3 ? atol(argv[3]) : 20000;
  long ppe_n = argc > 4 ? atol(argv[4]) : 20000;
  signal(SIGPIPE, SIG_IGN);
  /* A fixed mmap threshold: with glibc's dynamic one, the 4 MiB read buffer
   * freed after a mode moves the next modes' buffers onto the heap, which
   * made a second mode in the same process run up to 5x slower here. */
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  if (small_n > 0) run_mode(M_SMALL, small_n);
  if (big_n > 0) run_mode(M_BIG, big_n);
  if (pp_n > 0) run_mode(M_PINGPONG, pp_n);
  if (ppe_n > 0) run_mode(M_PINGPONG_EPOLL, ppe_n);
  return 0;
}
