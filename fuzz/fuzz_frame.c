/* libFuzzer harness for the receive path: bytes off a channel go through
 * frame_parse, then each frame's payload through codec_decode.
 *
 * Pass 1 parses straight from the fuzzer's buffer (ASan knows its exact
 * end) and decodes each payload from an exact-size copy, so a read past the
 * frame or past the payload is caught. Pass 2 feeds the same bytes in small
 * chunks through a receive buffer, as the channel does, and must see the
 * same frames. */
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffer.h"
#include "codec.h"
#include "frame.h"

#define MAX_PAYLOAD 1024
#define MAX_FRAMES 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct seen_frame {
  size_t offset; /* of the header in the input */
  frame_header h;
} seen_frame;

static seen_frame frames[MAX_FRAMES];

static void fail(const char *what) {
  fprintf(stderr, "fuzz_frame: %s\n", what);
  abort();
}

static void check_header(const frame_header *h) {
  if (h->payload_len == 0 || h->payload_len > MAX_PAYLOAD)
    fail("frame_parse accepted a bad payload length");
  if (h->internal > 1 || h->fd_kind > FRAME_FD_KIND_MAX)
    fail("frame_parse returned bad flags");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lua_State *L;
  if (!L) L = luaL_newstate();
  const char *in = (const char *)data;

  /* Pass 1: parse in place, decode each payload. */
  size_t off = 0, nframes = 0;
  enum frame_status last = FRAME_MORE;
  while (nframes < MAX_FRAMES) {
    frame_header h;
    last = frame_parse(in + off, size - off, MAX_PAYLOAD, &h);
    if (last != FRAME_OK) break;
    check_header(&h);
    if (h.payload_len > size - off - FRAME_HEADER_SIZE)
      fail("frame_parse returned a frame longer than its input");
    frames[nframes].offset = off;
    frames[nframes].h = h;
    nframes++;

    char *payload = malloc(h.payload_len);
    if (!payload) fail("out of memory");
    memcpy(payload, in + off + FRAME_HEADER_SIZE, h.payload_len);
    codec_decode(L, payload, h.payload_len);
    if (lua_gettop(L) != 1) fail("codec_decode did not push exactly one value");
    lua_settop(L, 0);
    free(payload);

    off += FRAME_HEADER_SIZE + h.payload_len;
  }

  /* Pass 2: the same bytes arriving 1, 2, 3 ... 7 bytes at a time. */
  buffer rb = {0};
  size_t fed = 0, consumed = 0, n2 = 0, chunk = 1;
  while (n2 < nframes) {
    frame_header h;
    enum frame_status st = frame_parse(rb.data, rb.len, MAX_PAYLOAD, &h);
    if (st == FRAME_OK) {
      check_header(&h);
      if (consumed != frames[n2].offset ||
          h.payload_len != frames[n2].h.payload_len ||
          h.internal != frames[n2].h.internal ||
          h.fd_kind != frames[n2].h.fd_kind)
        fail("streamed parse saw a different frame");
      if (memcmp(rb.data + FRAME_HEADER_SIZE, in + consumed + FRAME_HEADER_SIZE,
                 h.payload_len) != 0)
        fail("streamed payload differs");
      buffer_consume(&rb, FRAME_HEADER_SIZE + h.payload_len);
      consumed += FRAME_HEADER_SIZE + h.payload_len;
      n2++;
      continue;
    }
    if (st == FRAME_BAD) fail("streamed parse failed where pass 1 did not");
    if (fed == size) fail("streamed parse wants more than pass 1 needed");
    size_t n = chunk < size - fed ? chunk : size - fed;
    chunk = chunk % 7 + 1;
    if (buffer_reserve(&rb, n) != 0) fail("out of memory");
    memcpy(rb.data + rb.len, in + fed, n);
    rb.len += n;
    fed += n;
  }
  /* With everything fed, what is left must end the same way as pass 1. */
  if (nframes < MAX_FRAMES) {
    if (buffer_reserve(&rb, size - fed) != 0) fail("out of memory");
    if (size > fed) memcpy(rb.data + rb.len, in + fed, size - fed);
    rb.len += size - fed;
    frame_header h;
    if (frame_parse(rb.data, rb.len, MAX_PAYLOAD, &h) != last)
      fail("streamed parse ended differently");
  }
  buffer_free(&rb);
  return 0;
}
