#include "bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/fs.h>

/* A local regular file or block device, read with pread(2). */
struct local {
	struct bytes b;
	int fd;
};

static ssize_t local_read_at(struct bytes *b, void *buf, size_t len, uint64_t off)
{
	int fd = ((struct local *)b)->fd;
	ssize_t n;
	do
		n = pread(fd, buf, len, (off_t)off);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

static void local_advise_sequential(struct bytes *b)
{
	posix_fadvise(((struct local *)b)->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
}

static int local_dup(const struct bytes *b, struct bytes **out, struct stella_err *e)
{
	/* a descriptor of its own: reads are preads, so it shares nothing
	 * with b but the open file, the one b reads */
	int fd = fcntl(((const struct local *)b)->fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return stella_fail_errno(e, -errno, "%s", b->name);
	return bytes_open_fd(fd, b->name, out, e);
}

static void local_close(struct bytes *b)
{
	struct local *l = (struct local *)b;
	if (l->fd >= 0)
		close(l->fd);
	free(b->name);
	free(l);
}

static const struct bytes_ops local_ops = {
	.read_at = local_read_at,
	.advise_sequential = local_advise_sequential,
	.dup = local_dup,
	.close = local_close,
};

int bytes_check_type(const char *name, const struct stat *st, struct stella_err *e)
{
	if (S_ISDIR(st->st_mode))
		return stella_fail(e, -EINVAL, "%s: a directory, not a kit file", name);
	if (S_ISSOCK(st->st_mode))
		return stella_fail(e, -EINVAL, "%s: a socket, not a regular file or block device, so not a kit file", name);
	if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode))
		return stella_fail(e, -EINVAL, "%s: not a regular file or block device, so not a kit file", name);
	return 0;
}

int bytes_open_fd(int fd, const char *name, struct bytes **out, struct stella_err *e)
{
	struct local *l = calloc(1, sizeof(*l));
	if (!l) {
		close(fd);
		return -ENOMEM;
	}
	l->fd = fd;
	l->b.ops = &local_ops;
	int r = 0;
	struct stat st;
	if (!(l->b.name = strdup(name)))
		r = -ENOMEM;
	else if (fstat(fd, &st) < 0)
		r = stella_fail_errno(e, -errno, "%s", name);
	else
		r = bytes_check_type(name, &st, e);
	if (r == 0) {
		l->b.size = (uint64_t)st.st_size;
		l->b.device = S_ISBLK(st.st_mode);
		if (l->b.device && ioctl(fd, BLKGETSIZE64, &l->b.size) < 0)
			r = stella_fail_errno(e, -errno, "%s: device size", name);
		snprintf(l->b.identity, sizeof(l->b.identity), "%llu:%lld.%09ld:%lld.%09ld",
			 (unsigned long long)st.st_ino, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
			 (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	}
	if (r < 0) {
		local_close(&l->b);
		return r;
	}
	*out = &l->b;
	return 0;
}

int bytes_open_path(const char *path, struct bytes **out, struct stella_err *e)
{
	/* O_NONBLOCK: a FIFO (or a device whose open waits) named where a kit
	 * is expected would block open(2) until a writer came, and in the
	 * daemon an `import` of it would hold the command lock for good.  A
	 * kit is read at offsets, so only regular files and block devices
	 * qualify; the flag is cleared again for them. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	struct stat st;
	if (fd < 0) {
		/* A socket cannot be opened at all (ENXIO), nor can a device
		 * node without a driver: name what it is, as for a FIFO, rather
		 * than report a runtime error about a path that is not a kit. */
		int err = errno;
		if (err == ENXIO && stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
			return bytes_check_type(path, &st, e);
		return stella_fail_errno(e, -err, "%s", path);
	}
	int r = 0;
	if (fstat(fd, &st) < 0)
		r = stella_fail_errno(e, -errno, "%s", path);
	else
		r = bytes_check_type(path, &st, e);
	if (r == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		r = stella_fail_errno(e, -errno, "%s", path);
	if (r < 0) {
		close(fd);
		return r;
	}
	return bytes_open_fd(fd, path, out, e);
}

int bytes_read_full(struct bytes *b, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = bytes_read_at(b, p, len, off);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

void bytes_close(struct bytes *b)
{
	if (b)
		b->ops->close(b);
}
