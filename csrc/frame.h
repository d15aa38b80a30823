/* Channel framing. Every message on a channel is one frame:
 *
 *   u32 payload length (little endian) | u8 flags | payload (codec bytes)
 *
 * flags: bit 0 set = an internal (cluster protocol) message rather than a
 * user one; bits 1-3 = the kind of the file descriptor that rides with the
 * frame (FRAME_FD_*); bits 4-7 must be zero. A frame that carries an fd is
 * sent with SCM_RIGHTS on the sendmsg() that writes its first byte. */
#ifndef CLUSTER_FRAME_H
#define CLUSTER_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_HEADER_SIZE 5

#define FRAME_INTERNAL 0x01u

enum frame_fd_kind {
  FRAME_FD_NONE = 0,
  FRAME_FD_RAW = 1, /* an integer fd */
  FRAME_FD_TCP = 2,
  FRAME_FD_PIPE = 3,
  FRAME_FD_UDP = 4,
  FRAME_FD_KIND_MAX = FRAME_FD_UDP
};

typedef struct frame_header {
  uint32_t payload_len;
  unsigned internal; /* 0 or 1 */
  unsigned fd_kind;  /* enum frame_fd_kind */
} frame_header;

enum frame_status { FRAME_BAD = -1, FRAME_MORE = 0, FRAME_OK = 1 };

/* Look at the start of buf. FRAME_OK when a whole frame is there (header
 * filled in), FRAME_MORE when more bytes are needed, FRAME_BAD when the
 * header is malformed or announces a payload over max_payload. */
enum frame_status frame_parse(const char *buf, size_t len, size_t max_payload,
                              frame_header *h);

/* Write a header for a payload of payload_len bytes into out[0..4]. */
void frame_write_header(char *out, uint32_t payload_len, unsigned internal,
                        unsigned fd_kind);

#endif
