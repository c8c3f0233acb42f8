/* core/fdcache.c: the bound holds (counted in /proc/self/fd, not by the
 * cache's own count), a pinned descriptor is never closed, an evicted name
 * opens again, hints find their entry, a missing name is its openat's
 * errno, and flush closes what nobody uses. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "fdcache.h"

#define MAXFD 3
#define NAMES 10


static struct fdcache_dir dir;
static atomic_int got_fourth;

static void *fourth(void *arg)
{
	struct fdcache_hint h = { 0 };
	uint32_t pin;
	int fd = fdcache_get(&dir, (const char *)arg, &h, &pin);
	atomic_store(&got_fourth, fd >= 0 ? 1 : -1);
	if (fd >= 0)
		fdcache_put(pin);
	return NULL;
}

static char content(int fd)
{
	char c = 0;
	return pread(fd, &c, 1, 0) == 1 ? c : 0;
}

int main(void)
{
	char tmpl[] = "/tmp/test-fdcache.XXXXXX";
	CHECK(mkdtemp(tmpl) != NULL);
	int dfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK(dfd >= 0);
	char names[NAMES][8];
	for (int i = 0; i < NAMES; i++) {
		snprintf(names[i], sizeof(names[i]), "f%d", i);
		int fd = openat(dfd, names[i], O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		char c = (char)('a' + i);
		CHECK(fd >= 0 && write(fd, &c, 1) == 1);
		close(fd);
	}
	CHECK(fdcache_dir_init(&dir, dfd) == 0);
	fdcache_set_max(MAXFD);
	CHECK(fdcache_max() == MAXFD);
	int base = count_fds();

	/* every name, three rounds: right bytes, never more than MAXFD open */
	struct fdcache_hint h[NAMES] = { 0 };
	for (int round = 0; round < 3; round++)
		for (int i = 0; i < NAMES; i++) {
			uint32_t pin;
			int fd = fdcache_get(&dir, names[i], &h[i], &pin);
			CHECK(fd >= 0 && content(fd) == 'a' + i);
			CHECK(count_fds() - base <= MAXFD);
			fdcache_put(pin);
		}
	CHECK(fdcache_open_count() == MAXFD);

	/* a hint finds its entry: the same descriptor while not evicted */
	uint32_t p1, p2;
	int a = fdcache_get(&dir, names[9], &h[9], &p1);
	fdcache_put(p1);
	int b = fdcache_get(&dir, names[9], &h[9], &p2);
	CHECK(a >= 0 && a == b);
	fdcache_put(p2);
	/* and a stale hint (another file's entry) still gets the right file */
	struct fdcache_hint stale = h[9];
	int c = fdcache_get(&dir, names[0], &stale, &p1);
	CHECK(c >= 0 && content(c) == 'a');
	fdcache_put(p1);

	/* pinned descriptors stay open and valid; a fourth name waits for a put */
	uint32_t pins[MAXFD];
	int fds[MAXFD];
	for (int i = 0; i < MAXFD; i++) {
		struct fdcache_hint x = { 0 };
		fds[i] = fdcache_get(&dir, names[i + 1], &x, &pins[i]);
		CHECK(fds[i] >= 0);
	}
	pthread_t t;
	CHECK(pthread_create(&t, NULL, fourth, names[8]) == 0);
	usleep(100 * 1000);
	CHECK(atomic_load(&got_fourth) == 0); /* every descriptor in use: it waits */
	for (int i = 0; i < MAXFD; i++)
		CHECK(content(fds[i]) == 'b' + i); /* none closed under us */
	fdcache_put(pins[0]);
	pthread_join(t, NULL);
	CHECK(atomic_load(&got_fourth) == 1);
	CHECK(content(fds[1]) == 'c' && content(fds[2]) == 'd');
	fdcache_put(pins[1]);
	fdcache_put(pins[2]);
	CHECK(count_fds() - base <= MAXFD);

	/* a missing name: its errno, nothing kept */
	struct fdcache_hint m = { 0 };
	uint32_t pm;
	CHECK(fdcache_get(&dir, "missing", &m, &pm) == -ENOENT);

	/* flush: nothing unpinned stays open */
	fdcache_flush();
	CHECK(fdcache_open_count() == 0);
	CHECK(count_fds() == base);
	uint32_t pf;
	int f = fdcache_get(&dir, names[5], &h[5], &pf);
	CHECK(f >= 0 && content(f) == 'f');

	/* a flush while the entry is in use (a repair renamed a good file over
	 * the one a read has open): the reader keeps its descriptor, the next
	 * get opens the new file, and the last put closes the old one */
	int nfd = openat(dfd, "f5.new", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	CHECK(nfd >= 0 && write(nfd, "F", 1) == 1);
	close(nfd);
	CHECK(renameat(dfd, "f5.new", dfd, names[5]) == 0);
	fdcache_flush();
	CHECK(content(f) == 'f');
	uint32_t pg;
	struct fdcache_hint h5 = h[5];
	int g = fdcache_get(&dir, names[5], &h5, &pg);
	CHECK(g >= 0 && g != f && content(g) == 'F');
	fdcache_put(pf);
	fdcache_put(pg);
	CHECK(fdcache_open_count() == 1);

	for (int i = 0; i < NAMES; i++)
		unlinkat(dfd, names[i], 0);
	fdcache_flush();
	close(dfd);
	rmdir(tmpl);
	return CHECK_DONE();
}
