/* The disk cache of remote kit bytes: rcache.h says what is kept where and
 * what survives a crash. */
#include "rcache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#define MAGIC "stlrc001"
#define HDR 64
#define LOW_WATER_PCT 90

struct entry {
	uint64_t idx;
	uint64_t len;
	uint64_t used;
};

struct rcache {
	pthread_mutex_t mu;
	int dfd;                /* the kit's directory */
	uint64_t size, head_len, bound;
	uint32_t chunk;
	struct entry *ents;
	size_t n, cap;
	uint64_t tick, bytes, unpinned, hits;
};

static void sha256(const void *p, size_t n, unsigned char md[32])
{
	unsigned len = 0;
	EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
}

static void hex(const unsigned char *md, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static bool pinned(const struct rcache *c, uint64_t idx)
{
	/* every chunk holding a byte of the head */
	return idx * c->chunk < c->head_len;
}

static int mkdirs(const char *path)
{
	char buf[4096];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0700) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Write DATA to NAME in DFD: a temporary name first, then rename, so that
 * NAME is never half written by us (a crash may still leave the rename
 * without the data: readers check). */
static int write_atomic(int dfd, const char *name, const void *h, size_t hn, const void *data, size_t n)
{
	char tmp[96];
	snprintf(tmp, sizeof(tmp), ".tmp.%s.%d.%lx", name, getpid(), (unsigned long)pthread_self());
	int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int r = 0;
	const void *parts[2] = { h, data };
	size_t lens[2] = { hn, n };
	for (int i = 0; i < 2 && r == 0; i++) {
		const char *p = parts[i];
		size_t left = lens[i];
		while (left > 0) {
			ssize_t w = write(fd, p, left);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				r = w < 0 ? -errno : -ENOSPC;
				break;
			}
			p += w;
			left -= (size_t)w;
		}
	}
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && renameat(dfd, tmp, dfd, name) < 0)
		r = -errno;
	if (r < 0)
		unlinkat(dfd, tmp, 0);
	return r;
}

/* ------------------------------------------------------------ table */

static struct entry *find(struct rcache *c, uint64_t idx)
{
	for (size_t i = 0; i < c->n; i++)
		if (c->ents[i].idx == idx)
			return &c->ents[i];
	return NULL;
}

static void forget(struct rcache *c, struct entry *en)
{
	c->bytes -= en->len;
	if (!pinned(c, en->idx))
		c->unpinned -= en->len;
	*en = c->ents[--c->n];
}

static int remember(struct rcache *c, uint64_t idx, uint64_t len)
{
	struct entry *en = find(c, idx);
	if (en) {
		en->used = ++c->tick;
		return 0;
	}
	if (c->n == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 64;
		struct entry *e = realloc(c->ents, cap * sizeof(*e));
		if (!e)
			return -ENOMEM;
		c->ents = e;
		c->cap = cap;
	}
	c->ents[c->n++] = (struct entry){ idx, len, ++c->tick };
	c->bytes += len;
	if (!pinned(c, idx))
		c->unpinned += len;
	return 0;
}

static void chunk_name(uint64_t idx, char *out, size_t n)
{
	snprintf(out, n, "c%" PRIu64, idx);
}

/* Under c->mu: least recently used unpinned entries out, down to the
 * low-water mark, once over the bound. */
static void evict_locked(struct rcache *c)
{
	if (c->unpinned <= c->bound)
		return;
	uint64_t low = c->bound / 100 * LOW_WATER_PCT + c->bound % 100 * LOW_WATER_PCT / 100;
	while (c->unpinned > low) {
		struct entry *lru = NULL;
		for (size_t i = 0; i < c->n; i++)
			if (!pinned(c, c->ents[i].idx) && (!lru || c->ents[i].used < lru->used))
				lru = &c->ents[i];
		if (!lru)
			break;
		char name[32];
		chunk_name(lru->idx, name, sizeof(name));
		unlinkat(c->dfd, name, 0);
		forget(c, lru);
	}
}

/* ------------------------------------------------------------ open */

/* Empty the kit's directory (damaged or foreign metadata). */
static void wipe(int dfd)
{
	int fd = dup(dfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(dfd, de->d_name, 0);
	closedir(d);
}

static int check_meta(struct rcache *c)
{
	char want[128], got[128] = "";
	snprintf(want, sizeof(want), "stellafs-rcache 1 %" PRIu64 " %u %" PRIu64 "\n", c->size, c->chunk,
		 c->head_len);
	int fd = openat(c->dfd, "meta", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, got, sizeof(got) - 1);
		close(fd);
		if (n > 0 && strcmp(got, want) == 0)
			return 0;
	}
	wipe(c->dfd);
	return write_atomic(c->dfd, "meta", want, strlen(want), "", 0);
}

/* The entries on disk: their sizes, and leftovers of interrupted writes
 * removed.  Contents are checked on read, not here. */
static int scan(struct rcache *c)
{
	int fd = dup(c->dfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	uint64_t nchunks = (c->size + c->chunk - 1) / c->chunk;
	struct dirent *de;
	int r = 0;
	while (r == 0 && (de = readdir(d))) {
		const char *nm = de->d_name;
		if (!strcmp(nm, ".") || !strcmp(nm, "..") || !strcmp(nm, "meta"))
			continue;
		char *end;
		struct stat st;
		uint64_t idx = nm[0] == 'c' ? strtoull(nm + 1, &end, 10) : UINT64_MAX;
		bool ok = nm[0] == 'c' && nm[1] >= '0' && nm[1] <= '9' && *end == 0 && idx < nchunks &&
			  fstatat(c->dfd, nm, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
			  st.st_size > HDR;
		if (!ok) {
			unlinkat(c->dfd, nm, 0);
			continue;
		}
		r = remember(c, idx, (uint64_t)st.st_size - HDR);
		/* older files first: their access order is lost with the mount */
		c->ents[c->n - 1].used = (uint64_t)st.st_mtim.tv_sec;
	}
	closedir(d);
	uint64_t maxu = 0;
	for (size_t i = 0; i < c->n; i++)
		if (c->ents[i].used > maxu)
			maxu = c->ents[i].used;
	c->tick = maxu;
	return r;
}

/* ------------------------------------------------------------ other kits */

/* A kit no longer mounted (a URL republished, a kit mounted once) would
 * keep its directory forever: the bound of one kit's cache does not see
 * the others.  So each open makes room: the directories of other kits
 * that no open rcache holds (each holds a shared flock on its directory
 * for its life) go, least recently written first, until what is left of
 * them fits beside this kit's data in the bound.  The cache directory
 * thus holds at most about twice cache_size: this kit's bound, and others
 * that fitted in what it left free when it was opened. */
#define PRUNE_MAX 1024

struct other_kit {
	char name[65];
	int64_t written;      /* the directory's mtime: its last entry's write */
	uint64_t bytes;
};

static bool is_key(const char *s)
{
	return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

static uint64_t dir_bytes(int dfd)
{
	int fd = dup(dfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	uint64_t n = 0;
	struct dirent *de;
	struct stat st;
	while ((de = readdir(d)))
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
			n += (uint64_t)st.st_size;
	closedir(d);
	return n;
}

/* NAME under KITS, locked for removal: its fd, or -1 when it is in use
 * (or gone). */
static int lock_other(int kits, const char *name)
{
	int fd = openat(kits, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int by_written(const void *a, const void *b)
{
	const struct other_kit *x = a, *y = b;
	return (x->written > y->written) - (x->written < y->written);
}

static void prune_others(const char *kitsdir, const char *key, uint64_t room)
{
	int kits = open(kitsdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int fd = kits >= 0 ? dup(kits) : -1;
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct other_kit *o = d ? calloc(PRUNE_MAX, sizeof(*o)) : NULL;
	size_t n = 0;
	uint64_t total = 0;
	struct dirent *de;
	while (o && n < PRUNE_MAX && (de = readdir(d))) {
		if (!is_key(de->d_name) || !strcmp(de->d_name, key))
			continue;
		int kfd = lock_other(kits, de->d_name);
		struct stat st;
		if (kfd < 0)
			continue; /* in use: not ours to judge */
		if (fstat(kfd, &st) == 0) {
			snprintf(o[n].name, sizeof(o[n].name), "%s", de->d_name);
			o[n].written = (int64_t)st.st_mtim.tv_sec;
			o[n].bytes = dir_bytes(kfd);
			total += o[n++].bytes;
		}
		close(kfd);
	}
	qsort(o, n, sizeof(*o), by_written);
	for (size_t i = 0; i < n && total > room; i++) {
		int kfd = lock_other(kits, o[i].name);
		if (kfd < 0)
			continue; /* opened since */
		wipe(kfd);
		if (unlinkat(kits, o[i].name, AT_REMOVEDIR) == 0)
			total -= o[i].bytes;
		close(kfd);
	}
	free(o);
	if (d)
		closedir(d);
	else if (fd >= 0)
		close(fd);
	if (kits >= 0)
		close(kits);
}

/* The kit's directory, open and held (shared flock) against prune_others;
 * made again if a pruner removed it between our open and our lock. */
static int open_held(const char *path)
{
	for (int tries = 0; tries < 3; tries++) {
		int r = mkdirs(path);
		if (r < 0)
			return r;
		int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		struct stat st;
		if (flock(fd, LOCK_SH) == 0 && fstat(fd, &st) == 0 && st.st_nlink > 0)
			return fd;
		close(fd);
	}
	return -EAGAIN;
}

int rcache_open(const char *dir, const char *key, uint64_t size, uint32_t chunk, uint64_t head_len,
		uint64_t bound, struct rcache **out, struct stella_err *e)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/remote/kits/%s", dir, key) >= (int)sizeof(path))
		return stella_fail(e, -ENAMETOOLONG, "%s: name too long", dir);
	struct rcache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->mu, NULL);
	c->size = size;
	c->chunk = chunk;
	c->head_len = head_len;
	c->bound = bound;
	int r = c->dfd = open_held(path);
	if (r < 0)
		stella_fail_errno(e, r, "%s", path);
	else
		r = 0;
	if (r == 0 && (r = check_meta(c)) < 0)
		stella_fail_errno(e, r, "%s/meta", path);
	if (r == 0 && (r = scan(c)) < 0)
		stella_fail_errno(e, r, "%s", path);
	if (r < 0) {
		rcache_close(c);
		return r;
	}
	evict_locked(c);
	*strrchr(path, '/') = 0;
	prune_others(path, key, c->bytes < bound ? bound - c->bytes : 0);
	*out = c;
	return 0;
}

void rcache_close(struct rcache *c)
{
	if (!c)
		return;
	if (c->dfd >= 0)
		close(c->dfd);
	free(c->ents);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* ------------------------------------------------------------ entries */

static void header(uint64_t idx, const void *buf, size_t len, unsigned char h[HDR])
{
	memset(h, 0, HDR);
	memcpy(h, MAGIC, 8);
	uint64_t v[2] = { idx, len };
	memcpy(h + 8, v, sizeof(v));
	sha256(buf, len, h + 24);
}

int rcache_get(struct rcache *c, uint64_t idx, void *buf, size_t len)
{
	char name[32];
	chunk_name(idx, name, sizeof(name));
	pthread_mutex_lock(&c->mu);
	bool have = find(c, idx) != NULL;
	pthread_mutex_unlock(&c->mu);
	if (!have)
		return -ENOENT;
	int fd = openat(c->dfd, name, O_RDONLY | O_CLOEXEC);
	bool ok = false;
	if (fd >= 0) {
		unsigned char h[HDR], want[HDR];
		ssize_t n = pread(fd, h, HDR, 0);
		ssize_t m = n == HDR ? pread(fd, buf, len, HDR) : -1;
		char extra;
		ok = m == (ssize_t)len && pread(fd, &extra, 1, HDR + (off_t)len) == 0;
		if (ok) {
			header(idx, buf, len, want);
			ok = memcmp(h, want, HDR) == 0;
		}
		close(fd);
	}
	pthread_mutex_lock(&c->mu);
	struct entry *en = find(c, idx);
	if (ok) {
		c->hits++;
		if (en)
			en->used = ++c->tick;
	} else {
		/* torn, damaged or gone: never served; fetched again */
		unlinkat(c->dfd, name, 0);
		if (en)
			forget(c, en);
	}
	pthread_mutex_unlock(&c->mu);
	return ok ? 0 : -ENOENT;
}

bool rcache_keeps(const struct rcache *c, uint64_t idx)
{
	/* A bound below two chunks keeps no file data: each chunk written
	 * would push out the one before it, so its write (and the digest of
	 * its header) would be pure cost on every read.  The head is kept
	 * whatever the bound: a remount with every mirror down needs it. */
	return pinned(c, idx) || c->bound >= 2 * (uint64_t)c->chunk;
}

void rcache_put(struct rcache *c, uint64_t idx, const void *buf, size_t len)
{
	if (!rcache_keeps(c, idx))
		return;
	char name[32];
	unsigned char h[HDR];
	chunk_name(idx, name, sizeof(name));
	header(idx, buf, len, h);
	if (write_atomic(c->dfd, name, h, HDR, buf, len) < 0)
		return;   /* a full disk: simply not kept */
	pthread_mutex_lock(&c->mu);
	if (remember(c, idx, len) < 0)
		unlinkat(c->dfd, name, 0);
	evict_locked(c);
	pthread_mutex_unlock(&c->mu);
}

void rcache_drop(struct rcache *c, uint64_t idx)
{
	char name[32];
	chunk_name(idx, name, sizeof(name));
	pthread_mutex_lock(&c->mu);
	unlinkat(c->dfd, name, 0);
	struct entry *en = find(c, idx);
	if (en)
		forget(c, en);
	pthread_mutex_unlock(&c->mu);
}

void rcache_counts(struct rcache *c, uint64_t *bytes, uint64_t *hits)
{
	pthread_mutex_lock(&c->mu);
	*bytes = c->bytes;
	*hits = c->hits;
	pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------ URLs */

static int url_path(const char *dir, const char *url, char *path, size_t n)
{
	unsigned char md[32];
	char h[65];
	sha256(url, strlen(url), md);
	hex(md, 32, h);
	return snprintf(path, n, "%s/remote/urls/%s", dir, h) < (int)n ? 0 : -ENAMETOOLONG;
}

int rcache_remember_url(const char *dir, const char *url, const char *key, uint64_t size,
			uint64_t head_len, const char *validator)
{
	char path[4096], d[4096], line[320];
	if (url_path(dir, url, path, sizeof(path)) < 0)
		return -ENAMETOOLONG;
	snprintf(d, sizeof(d), "%s/remote/urls", dir);
	int r = mkdirs(d);
	if (r < 0)
		return r;
	int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	/* the validator is the rest of the line (a Last-Modified has blanks) */
	snprintf(line, sizeof(line), "%s %" PRIu64 " %" PRIu64 " %.127s\n", key, size, head_len,
		 validator ? validator : "");
	r = write_atomic(dfd, strrchr(path, '/') + 1, line, strlen(line), "", 0);
	close(dfd);
	return r;
}

int rcache_lookup_url(const char *dir, const char *url, char key[65], uint64_t *size,
		      uint64_t *head_len, char validator[128])
{
	char path[4096], line[320] = "";
	if (url_path(dir, url, path, sizeof(path)) < 0)
		return -ENOENT;
	FILE *f = fopen(path, "re");
	if (!f)
		return -ENOENT;
	bool ok = fgets(line, sizeof(line), f) != NULL;
	fclose(f);
	char k[65];
	uint64_t s, h;
	int used = 0;
	if (!ok || sscanf(line, "%64[0-9a-f] %" SCNu64 " %" SCNu64 "%n", k, &s, &h, &used) != 3 || strlen(k) != 64 ||
	    s == 0)
		return -ENOENT;
	memcpy(key, k, 65);
	*size = s;
	*head_len = h;
	if (validator) {
		const char *v = line + used;
		if (*v == ' ')
			v++;
		snprintf(validator, 128, "%.*s", (int)strcspn(v, "\n"), v);
	}
	return 0;
}

bool rcache_has(struct rcache *c, uint64_t idx)
{
	pthread_mutex_lock(&c->mu);
	bool have = find(c, idx) != NULL;
	pthread_mutex_unlock(&c->mu);
	return have;
}
