#include "fdcache.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define NONE UINT32_MAX
#define NAME_LEN 68

/* One cached descriptor; every field under C.lock. */
struct entry {
	dev_t dev;              /* the directory ... */
	ino_t ino;
	char name[NAME_LEN];    /* ... and the name in it */
	int fd;                 /* -1 while being opened, or free */
	bool ready;             /* fd is open (else a thread is opening it, pinned) */
	unsigned pins;          /* reads using fd now: never closed while > 0 */
	bool doomed;            /* flushed while pinned: out of the hash, closed
				 * and freed at the last put */
	uint64_t gen;           /* new at each use of the entry: stale hints miss */
	uint32_t prev, next;    /* the LRU of unpinned ready entries */
	uint32_t hnext;         /* hash chain */
};

/* All of it under lock.  Entries are allocated once, at the first use, and
 * never freed: a hint may name any of them. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;    /* an entry was unpinned, opened or freed */
	unsigned max;
	struct entry *e;
	uint32_t *bucket, nbuckets;
	uint32_t *freel;        /* entries holding nothing */
	unsigned nfree;
	uint32_t lru_head, lru_tail; /* head: most recently used */
	uint64_t gen;
} C = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .max = FDCACHE_DEFAULT };

int fdcache_dir_init(struct fdcache_dir *d, int fd)
{
	struct stat st;
	d->fd = fd;
	if (fstat(fd, &st) < 0)
		return -errno;
	d->dev = st.st_dev;
	d->ino = st.st_ino;
	return 0;
}

void fdcache_digest_name(const uint8_t digest[32], char out[68])
{
	char hex[65];
	hex_encode(digest, 32, hex);
	snprintf(out, 68, "%.2s/%s", hex, hex);
}

void fdcache_set_max(unsigned max)
{
	pthread_mutex_lock(&C.lock);
	if (!C.e)
		C.max = max < 2 ? 2 : max;
	pthread_mutex_unlock(&C.lock);
}

unsigned fdcache_max(void)
{
	pthread_mutex_lock(&C.lock);
	unsigned m = C.max;
	pthread_mutex_unlock(&C.lock);
	return m;
}

unsigned fdcache_open_count(void)
{
	unsigned n = 0;
	pthread_mutex_lock(&C.lock);
	for (unsigned i = 0; C.e && i < C.max; i++)
		n += C.e[i].fd >= 0;
	pthread_mutex_unlock(&C.lock);
	return n;
}

static int init_locked(void)
{
	if (C.e)
		return 0;
	uint32_t nb = 16;
	while (nb < 2 * C.max)
		nb *= 2;
	C.e = calloc(C.max, sizeof(*C.e));
	C.bucket = malloc(nb * sizeof(*C.bucket));
	C.freel = malloc(C.max * sizeof(*C.freel));
	if (!C.e || !C.bucket || !C.freel) {
		free(C.e);
		free(C.bucket);
		free(C.freel);
		C.e = NULL;
		C.bucket = C.freel = NULL;
		return -ENOMEM;
	}
	C.nbuckets = nb;
	for (uint32_t i = 0; i < nb; i++)
		C.bucket[i] = NONE;
	for (unsigned i = 0; i < C.max; i++) {
		C.e[i].fd = -1;
		C.freel[i] = C.max - 1 - i;
	}
	C.nfree = C.max;
	C.lru_head = C.lru_tail = NONE;
	return 0;
}

static uint32_t hash(dev_t dev, ino_t ino, const char *name)
{
	uint64_t h = 1469598103934665603ull ^ (uint64_t)dev ^ ((uint64_t)ino << 17);
	for (const char *p = name; *p; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ull;
	return (uint32_t)(h ^ (h >> 32)) & (C.nbuckets - 1);
}

static uint32_t find(const struct fdcache_dir *d, const char *name)
{
	for (uint32_t i = C.bucket[hash(d->dev, d->ino, name)]; i != NONE; i = C.e[i].hnext)
		if (C.e[i].dev == d->dev && C.e[i].ino == d->ino && !strcmp(C.e[i].name, name))
			return i;
	return NONE;
}

static void unhash(uint32_t i)
{
	struct entry *x = &C.e[i];
	for (uint32_t *p = &C.bucket[hash(x->dev, x->ino, x->name)]; *p != NONE; p = &C.e[*p].hnext)
		if (*p == i) {
			*p = x->hnext;
			return;
		}
}

static void lru_remove(uint32_t i)
{
	struct entry *x = &C.e[i];
	if (x->prev != NONE)
		C.e[x->prev].next = x->next;
	else
		C.lru_head = x->next;
	if (x->next != NONE)
		C.e[x->next].prev = x->prev;
	else
		C.lru_tail = x->prev;
}

static void lru_push(uint32_t i)
{
	struct entry *x = &C.e[i];
	x->prev = NONE;
	x->next = C.lru_head;
	if (C.lru_head != NONE)
		C.e[C.lru_head].prev = i;
	else
		C.lru_tail = i;
	C.lru_head = i;
}

static void pin_locked(uint32_t i)
{
	if (C.e[i].pins++ == 0)
		lru_remove(i);
}

/* An entry to fill: a free one, or the least recently used unpinned one
 * (its descriptor to close in *victim).  NONE when every entry is pinned. */
static uint32_t take_entry(int *victim)
{
	*victim = -1;
	if (C.nfree)
		return C.freel[--C.nfree];
	uint32_t i = C.lru_tail;
	if (i == NONE)
		return NONE;
	lru_remove(i);
	unhash(i);
	*victim = C.e[i].fd;
	C.e[i].fd = -1;
	C.e[i].ready = false;
	return i;
}

int fdcache_get(const struct fdcache_dir *d, const char *name, struct fdcache_hint *hint, uint32_t *pin)
{
	if (strlen(name) >= NAME_LEN)
		return -ENAMETOOLONG;
	pthread_mutex_lock(&C.lock);
	int r = init_locked();
	if (r < 0) {
		pthread_mutex_unlock(&C.lock);
		return r;
	}
	uint32_t i;
	int victim = -1;
	for (;;) {
		i = hint->slot;
		/* the common case: this file's entry is where it was (the name
		 * compared too: a hint is only a hint) */
		if (i < C.max && C.e[i].gen == hint->gen && C.e[i].ready && !C.e[i].doomed && C.e[i].dev == d->dev &&
		    C.e[i].ino == d->ino && !strcmp(C.e[i].name, name))
			break;
		i = find(d, name);
		if (i != NONE && C.e[i].ready)
			break;
		if (i == NONE && (i = take_entry(&victim)) != NONE)
			goto fill;
		/* being opened by another thread, or every descriptor in use */
		pthread_cond_wait(&C.cond, &C.lock);
	}
	pin_locked(i);
	hint->slot = i;
	hint->gen = C.e[i].gen;
	*pin = i;
	int fd = C.e[i].fd;
	pthread_mutex_unlock(&C.lock);
	return fd;

fill:;
	/* Reserved and pinned: the same name waits for us, nobody takes it. */
	struct entry *x = &C.e[i];
	x->dev = d->dev;
	x->ino = d->ino;
	snprintf(x->name, sizeof(x->name), "%s", name);
	x->pins = 1;
	x->gen = ++C.gen;
	uint32_t b = hash(d->dev, d->ino, name);
	x->hnext = C.bucket[b];
	C.bucket[b] = i;
	pthread_mutex_unlock(&C.lock);
	/* Close the victim before opening: never more than max open. */
	if (victim >= 0)
		close(victim);
	fd = openat(d->fd, name, O_RDONLY | O_CLOEXEC);
	r = fd < 0 ? -errno : 0;
	pthread_mutex_lock(&C.lock);
	if (r < 0) {
		if (!x->doomed)
			unhash(i);
		x->pins = 0;
		x->doomed = false;
		x->gen = ++C.gen;
		C.freel[C.nfree++] = i;
	} else {
		x->fd = fd;
		x->ready = true;
		hint->slot = i;
		hint->gen = x->gen;
		*pin = i;
	}
	pthread_cond_broadcast(&C.cond);
	pthread_mutex_unlock(&C.lock);
	return r < 0 ? r : fd;
}

void fdcache_put(uint32_t pin)
{
	pthread_mutex_lock(&C.lock);
	struct entry *x = &C.e[pin];
	if (--x->pins == 0) {
		if (x->doomed) {
			close(x->fd);
			x->fd = -1;
			x->ready = false;
			x->doomed = false;
			x->gen = ++C.gen;
			C.freel[C.nfree++] = pin;
		} else {
			lru_push(pin);
		}
		pthread_cond_broadcast(&C.cond);
	}
	pthread_mutex_unlock(&C.lock);
}

void fdcache_flush(void)
{
	pthread_mutex_lock(&C.lock);
	while (C.e && C.lru_tail != NONE) {
		uint32_t i = C.lru_tail;
		lru_remove(i);
		unhash(i);
		close(C.e[i].fd);
		C.e[i].fd = -1;
		C.e[i].ready = false;
		C.e[i].gen = ++C.gen;
		C.freel[C.nfree++] = i;
	}
	/* Entries in use (or being opened) are taken out of the hash: the
	 * next get of the name opens it again (a repair renamed a good file
	 * over a damaged one: the damaged inode must not be served on), and
	 * the last put closes them. */
	for (uint32_t i = 0; C.e && i < C.max; i++)
		if (C.e[i].pins && !C.e[i].doomed) {
			unhash(i);
			C.e[i].doomed = true;
			C.e[i].gen = ++C.gen;
		}
	if (C.e)
		pthread_cond_broadcast(&C.cond);
	pthread_mutex_unlock(&C.lock);
}
