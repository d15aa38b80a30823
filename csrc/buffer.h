/* A growable byte buffer: the send queue, the receive buffer and the
 * encoder's output are all one of these. */
#ifndef CLUSTER_BUFFER_H
#define CLUSTER_BUFFER_H

#include <stddef.h>

typedef struct buffer {
  char *data;
  size_t len; /* bytes in use, from data[0] */
  size_t cap; /* bytes allocated */
} buffer;

/* Make room for `extra` more bytes after len. 0 on success, -1 when the
 * allocation fails (the buffer is unchanged). */
int buffer_reserve(buffer *b, size_t extra);

/* Drop the first n bytes (n <= len). */
void buffer_consume(buffer *b, size_t n);

/* Give memory back after a peak: when more than `keep` bytes are allocated
 * and at most half of them are in use, shrink to what is in use (at least
 * `keep`). A failed shrink leaves the buffer as it was. */
void buffer_trim(buffer *b, size_t keep);

void buffer_free(buffer *b);

#endif
