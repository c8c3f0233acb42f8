/* Small helpers shared by core/: cleanup attributes in the style of systemd's
 * src/basic, checked allocation, full reads and writes, and hex/base64. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static inline void freep(void *p) { free(*(void **)p); }
static inline void closep(int *fd) { if (*fd >= 0) close(*fd); }
static inline void fclosep(FILE **f) { if (*f) fclose(*f); }

/* Read exactly len bytes at off; -EIO on a short read (the file shrank). */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
/* Write all of buf; negative errno on failure. */
int write_full(int fd, const void *buf, size_t len);
/* Read a whole small regular file (at most max bytes) into a NUL-terminated
 * buffer; anything else is -EINVAL, refused without waiting (a FIFO). */
int read_file(const char *path, size_t max, char **out, size_t *len);
/* Write buf to path atomically: a temporary beside it, fsync, rename. */
int write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode);

/* Per-thread scratch buffers, kept between calls and freed with the thread:
 * reads are up to 1 MiB, and a fresh malloc of that size is an mmap and
 * page faults every time.  One slot per user that may nest with another. */
enum { SCRATCH_SNAPSHOT, SCRATCH_REPLY, SCRATCH_SOURCE, SCRATCH_SLOTS };
void *thread_scratch(unsigned slot, size_t need);

void hex_encode(const uint8_t *in, size_t n, char *out /* 2n+1 */);
/* Decode exactly n bytes of lowercase or uppercase hex; -EINVAL otherwise. */
int hex_decode(const char *in, uint8_t *out, size_t n);
/* Base64 (RFC 4648, with padding).  Returns a malloc'ed NUL-terminated string. */
char *base64_encode(const uint8_t *in, size_t n);
/* Strict decode of one base64 line: padding required where due, no stray
 * characters.  Returns the decoded length or -EINVAL. */
ssize_t base64_decode(const char *in, size_t n, uint8_t *out, size_t cap);

/* A decimal unsigned integer, the whole string; -EINVAL otherwise. */
int parse_u64(const char *s, uint64_t *out);

/* RFC 3339 UTC times ("2025-01-15T00:00:00Z"); fractional seconds and
 * numeric offsets are accepted on input, output is always whole-second Z.
 * Years 1970 to 9999 only, so that every time read can be written again. */
int time_parse(const char *s, int64_t *out);
void time_format(int64_t t, char out[32]);

/* IN as one line of text that cannot pass for more: every control
 * character (a newline, a carriage return, a terminal escape, DEL) written
 * as \xNN, the rest as is.  For untrusted text (file names, manifest
 * fields, paths) where it enters a journal, a log or a reason file.  OUT
 * (N bytes, N > 0) is always terminated; cut short when too small. */
void text_escape(const char *in, char *out, size_t n);
