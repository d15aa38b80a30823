#include "buffer.h"

#include <stdlib.h>
#include <string.h>

int buffer_reserve(buffer *b, size_t extra) {
  if (extra <= b->cap - b->len) return 0;
  if (extra > (size_t)-1 / 2 - b->len) return -1;
  size_t want = b->len + extra;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < want) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

void buffer_consume(buffer *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

void buffer_trim(buffer *b, size_t keep) {
  if (b->cap <= keep || b->len > b->cap / 2) return;
  size_t cap = b->len > keep ? b->len : keep;
  if (cap == 0) {
    buffer_free(b);
    return;
  }
  char *p = realloc(b->data, cap);
  if (!p) return;
  b->data = p;
  b->cap = cap;
}

void buffer_free(buffer *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
