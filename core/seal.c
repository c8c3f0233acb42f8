#include "seal.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "hasher.h"
#include "util.h"

#define RECHECK_SECONDS 5

struct seal {
	int fd;
	char *sum_path;            /* PATH.sum; NULL: the seal is only in memory */
	uint8_t digest[32];
	pthread_mutex_t lock;      /* the verdict below */
	bool changed;
	bool broken;               /* seal_break ran */
	int64_t checked_at;        /* CLOCK_MONOTONIC seconds of the last good check */
};

static int64_t mono_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec;
}

static char *sum_name(const char *path)
{
	size_t n = strlen(path) + 5;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s.sum", path);
	return p;
}

static struct seal *seal_new(void)
{
	struct seal *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->fd = -1;
	pthread_mutex_init(&s->lock, NULL);
	/* the first question after opening is always answered by a hash */
	s->checked_at = INT64_MIN / 2;
	return s;
}

void seal_free(struct seal *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	pthread_mutex_destroy(&s->lock);
	free(s->sum_path);
	free(s);
}

int seal_create(const char *file, const char *sum_for, struct seal **out, struct stella_err *e)
{
	struct seal *s = seal_new();
	int r = s ? 0 : -ENOMEM;
	if (r == 0 && (s->fd = open(file, O_RDONLY | O_CLOEXEC)) < 0)
		r = stella_fail_errno(e, -errno, "%s", file);
	if (r == 0 && (r = sha256_fd(s->fd, s->digest)) < 0)
		r = stella_fail_errno(e, r, "%s: digest", file);
	if (r == 0 && sum_for && !(s->sum_path = sum_name(sum_for)))
		r = -ENOMEM;
	if (r == 0 && s->sum_path) {
		char line[66];
		hex_encode(s->digest, 32, line);
		line[64] = '\n';
		line[65] = 0;
		if ((r = write_file_atomic(s->sum_path, line, 65, 0600)) < 0)
			r = stella_fail_errno(e, r, "%s", s->sum_path);
	}
	if (r < 0) {
		seal_free(s);
		return r;
	}
	*out = s;
	return 0;
}

int seal_open(const char *path, struct seal **out, struct stella_err *e)
{
	struct seal *s = seal_new();
	if (!s || !(s->sum_path = sum_name(path))) {
		seal_free(s);
		return -ENOMEM;
	}
	char *text = NULL;
	uint8_t want[32];
	int r = read_file(s->sum_path, 128, &text, NULL);
	if (r == -ENOENT)
		r = stella_fail(e, r, "%s: no digest beside it", path);
	else if (r < 0)
		r = stella_fail_errno(e, r, "%s", s->sum_path);
	else if (strlen(text) != 65 || text[64] != '\n' || (text[64] = 0, hex_decode(text, want, 32) < 0))
		r = stella_fail(e, -EBADMSG, "%s: not a digest", s->sum_path);
	free(text);
	if (r == 0 && (s->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		r = stella_fail_errno(e, -errno, "%s", path);
	if (r == 0 && (r = sha256_fd(s->fd, s->digest)) < 0)
		r = stella_fail_errno(e, r, "%s: digest", path);
	if (r == 0 && memcmp(s->digest, want, 32))
		r = stella_fail(e, -EBADMSG, "%s: its bytes do not match the digest written when it was built", path);
	if (r < 0) {
		seal_free(s);
		return r;
	}
	*out = s;
	return 0;
}

bool seal_intact(struct seal *s)
{
	pthread_mutex_lock(&s->lock);
	if (!s->changed && mono_now() - s->checked_at >= RECHECK_SECONDS) {
		uint8_t d[32];
		/* a digest that could not be computed is no verdict */
		if (sha256_fd(s->fd, d) == 0) {
			s->changed = memcmp(d, s->digest, 32) != 0;
			s->checked_at = mono_now();
		}
	}
	bool ok = !s->changed;
	pthread_mutex_unlock(&s->lock);
	return ok;
}

bool seal_break(struct seal *s)
{
	pthread_mutex_lock(&s->lock);
	bool first = !s->broken;
	s->broken = true;
	pthread_mutex_unlock(&s->lock);
	if (first && s->sum_path)
		unlink(s->sum_path);
	return first;
}
