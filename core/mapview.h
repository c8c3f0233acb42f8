/* A file mapped read-only for one pass by a consumer that needs the bytes
 * in one piece (Ed25519 signs and verifies a message in one call in
 * OpenSSL 3.0), without the file counting in our resident set.
 *
 * The clean page-cache pages a pass over a mapping touches count in RSS
 * until it is unmapped: a 1.4 GB kit signed, or a 300 MB manifest
 * verified, would cost that much.  So a trimmer thread drops the whole
 * range from our page tables every MAPVIEW_TRIM_MS (MADV_DONTNEED).  For a
 * private mapping never written, that drops nothing but the page-table
 * entries: the next touch maps the same page-cache page again, and the
 * bytes read are the file's whatever the timing.  RSS then holds what the
 * consumer read in the last few milliseconds, not the file. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAPVIEW_TRIM_MS 20

struct mapview {
	const void *base;     /* SIZE bytes of the file; NULL for an empty one */
	size_t size;
	/* the trimmer's; when none could be started, the pass still works,
	 * only the pages stay in RSS until mapview_close */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;  /* CLOCK_MONOTONIC */
	bool trimming, stop;
};

/* Map the first SIZE bytes of FD: 0 or a negative errno. */
int mapview_open(int fd, uint64_t size, struct mapview *v);
void mapview_close(struct mapview *v);
