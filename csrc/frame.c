#include "frame.h"

enum frame_status frame_parse(const char *buf, size_t len, size_t max_payload,
                              frame_header *h) {
  if (len < FRAME_HEADER_SIZE) return FRAME_MORE;
  const unsigned char *p = (const unsigned char *)buf;
  uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
               (uint32_t)p[3] << 24;
  unsigned flags = p[4];
  unsigned kind = (flags >> 1) & 0x7u;
  if ((flags & 0xF0u) || kind > FRAME_FD_KIND_MAX) return FRAME_BAD;
  if (n == 0 || n > max_payload) return FRAME_BAD; /* a value is >= 1 byte */
  if (len - FRAME_HEADER_SIZE < n) return FRAME_MORE;
  h->payload_len = n;
  h->internal = flags & FRAME_INTERNAL;
  h->fd_kind = kind;
  return FRAME_OK;
}

void frame_write_header(char *out, uint32_t payload_len, unsigned internal,
                        unsigned fd_kind) {
  unsigned char *p = (unsigned char *)out;
  p[0] = (unsigned char)payload_len;
  p[1] = (unsigned char)(payload_len >> 8);
  p[2] = (unsigned char)(payload_len >> 16);
  p[3] = (unsigned char)(payload_len >> 24);
  p[4] = (unsigned char)((internal ? FRAME_INTERNAL : 0u) | fd_kind << 1);
}
