/* A read-only mapping trimmed behind its reader: mapview.h says why. */
#include "mapview.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static void *trim_main(void *arg)
{
	struct mapview *v = arg;
	pthread_mutex_lock(&v->lock);
	while (!v->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += MAPVIEW_TRIM_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		if (pthread_cond_timedwait(&v->cond, &v->lock, &ts) == ETIMEDOUT && !v->stop)
			(void)madvise((void *)v->base, v->size, MADV_DONTNEED);
	}
	pthread_mutex_unlock(&v->lock);
	return NULL;
}

static bool trim_start(struct mapview *v)
{
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0)
		return false;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	bool ok = pthread_cond_init(&v->cond, &ca) == 0;
	pthread_condattr_destroy(&ca);
	if (!ok)
		return false;
	pthread_mutex_init(&v->lock, NULL);
	if (pthread_create(&v->thread, NULL, trim_main, v) == 0)
		return true;
	pthread_mutex_destroy(&v->lock);
	pthread_cond_destroy(&v->cond);
	return false;
}

int mapview_open(int fd, uint64_t size, struct mapview *v)
{
	memset(v, 0, sizeof(*v));
	if (size == 0)
		return 0;
	if (size > SIZE_MAX)
		return -EFBIG;
	void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED)
		return -errno;
	(void)madvise(map, (size_t)size, MADV_SEQUENTIAL);
	v->base = map;
	v->size = (size_t)size;
	v->trimming = trim_start(v);
	return 0;
}

void mapview_close(struct mapview *v)
{
	if (v->trimming) {
		pthread_mutex_lock(&v->lock);
		v->stop = true;
		pthread_cond_signal(&v->cond);
		pthread_mutex_unlock(&v->lock);
		pthread_join(v->thread, NULL);
		pthread_mutex_destroy(&v->lock);
		pthread_cond_destroy(&v->cond);
		v->trimming = false;
	}
	if (v->base)
		munmap((void *)v->base, v->size);
	v->base = NULL;
}
