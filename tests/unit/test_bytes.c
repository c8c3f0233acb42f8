/* bytes.c: a local kit file read at offsets (short only at its end), its
 * identity taken from the file (inode, mtime, ctime) and changed by a
 * rewrite, a dup that keeps reading the file after its path names another,
 * refusal of what is not a regular file or block device (a FIFO without
 * blocking), and source.c reading a kit through bytes that are not a file
 * at all. */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "bytes.h"
#include "check.h"
#include "source.h"

static char dir[] = "/tmp/stella-test-bytes.XXXXXX";

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	CHECK(write(fd, data, len) == (ssize_t)len);
	close(fd);
}

static void test_file(void)
{
	char path[256], other[256];
	snprintf(path, sizeof(path), "%s/kit", dir);
	snprintf(other, sizeof(other), "%s/other", dir);
	uint8_t data[10000];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7 + 3);
	write_file(path, data, sizeof(data));

	struct bytes *b = NULL;
	struct stella_err e = { 0 };
	CHECK(bytes_open_path(path, &b, &e) == 0);
	if (!b)
		return;
	CHECK(bytes_size(b) == sizeof(data));
	CHECK(!bytes_is_device(b));
	CHECK_STR(bytes_name(b), path);
	struct stat st;
	CHECK(stat(path, &st) == 0);
	char want[96];
	snprintf(want, sizeof(want), "%llu:%lld.%09ld:%lld.%09ld", (unsigned long long)st.st_ino,
		 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	CHECK_STR(bytes_identity(b), want);

	uint8_t buf[4096];
	CHECK(bytes_read_at(b, buf, 100, 5000) == 100);
	CHECK(memcmp(buf, data + 5000, 100) == 0);
	/* short only at the end, 0 past it */
	CHECK(bytes_read_at(b, buf, 4096, sizeof(data) - 10) == 10);
	CHECK(memcmp(buf, data + sizeof(data) - 10, 10) == 0);
	CHECK(bytes_read_at(b, buf, 4096, sizeof(data)) == 0);
	CHECK(bytes_read_full(b, buf, 4096, 0) == 0);
	CHECK(memcmp(buf, data, 4096) == 0);
	CHECK(bytes_read_full(b, buf, 20, sizeof(data) - 10) == -EIO);

	/* A dup reads the file b has open, not what the path names now. */
	struct bytes *d = NULL;
	CHECK(bytes_dup(b, &d, &e) == 0);
	uint8_t zeros[64] = { 0 };
	write_file(other, zeros, sizeof(zeros));
	CHECK(rename(other, path) == 0);
	if (d) {
		CHECK(bytes_size(d) == sizeof(data));
		CHECK_STR(bytes_identity(d), want);
		CHECK(bytes_read_at(d, buf, 64, 0) == 64);
		CHECK(memcmp(buf, data, 64) == 0);
	}
	bytes_close(b);
	bytes_close(d);

	/* The file at the path now: another identity. */
	CHECK(bytes_open_path(path, &b, &e) == 0);
	if (b) {
		CHECK(bytes_size(b) == sizeof(zeros));
		CHECK(strcmp(bytes_identity(b), want) != 0);
		bytes_close(b);
	}
}

static void test_refused(void)
{
	char path[256];
	struct bytes *b = NULL;
	struct stella_err e = { 0 };

	snprintf(path, sizeof(path), "%s/fifo", dir);
	CHECK(mkfifo(path, 0600) == 0);
	/* open(2) of a FIFO without a writer would wait: refused at once */
	CHECK(bytes_open_path(path, &b, &e) == -EINVAL);
	CHECK(strstr(e.msg, "not a regular file or block device") != NULL);

	memset(&e, 0, sizeof(e));
	CHECK(bytes_open_path(dir, &b, &e) == -EINVAL);
	CHECK(strstr(e.msg, "a directory, not a kit file") != NULL);

	memset(&e, 0, sizeof(e));
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sock", dir);
	int sk = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(sk >= 0 && bind(sk, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CHECK(bytes_open_path(sa.sun_path, &b, &e) == -EINVAL);
	CHECK(strstr(e.msg, "a socket") != NULL);
	close(sk);

	memset(&e, 0, sizeof(e));
	snprintf(path, sizeof(path), "%s/absent", dir);
	CHECK(bytes_open_path(path, &b, &e) == -ENOENT);
	CHECK(strstr(e.msg, "absent") != NULL);

	/* bytes_open_fd takes the descriptor over, also when it refuses it */
	memset(&e, 0, sizeof(e));
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	CHECK(fd >= 0);
	CHECK(bytes_open_fd(fd, "somedir", &b, &e) == -EINVAL);
	CHECK(strstr(e.msg, "somedir: a directory") != NULL);
	CHECK(fcntl(fd, F_GETFD) < 0 && errno == EBADF);
}

/* Bytes that are no file: what a remote reader will look like to source.c. */
struct mem {
	struct bytes b;
	const uint8_t *data;
	int reads;
};

static ssize_t mem_read_at(struct bytes *b, void *buf, size_t len, uint64_t off)
{
	struct mem *m = (struct mem *)b;
	m->reads++;
	if (off >= b->size)
		return 0;
	size_t n = len < b->size - off ? len : (size_t)(b->size - off);
	memcpy(buf, m->data + off, n);
	return (ssize_t)n;
}

static void mem_close(struct bytes *b)
{
	free(b->name);
	free(b);
}

static const struct bytes_ops mem_ops = { .read_at = mem_read_at, .close = mem_close };

static void test_source_over_bytes(void)
{
	static uint8_t data[3 * 4096];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i % 251);
	struct mem *m = calloc(1, sizeof(*m));
	m->b.ops = &mem_ops;
	m->b.name = strdup("mem:kit");
	m->b.size = sizeof(data);
	snprintf(m->b.identity, sizeof(m->b.identity), "etag-1");
	m->data = data;

	struct source *s = NULL;
	struct stella_err e = { 0 };
	CHECK(source_open_bytes(&m->b, &s, &e) == 0);
	if (!s)
		return;
	CHECK(source_compression(s) == KIT_COMPRESS_NONE);
	CHECK(source_file_size(s) == sizeof(data));
	CHECK_STR(source_path(s), "mem:kit");
	CHECK(source_bytes(s) == &m->b);
	uint8_t buf[4096];
	CHECK(source_pread(s, buf, 4096, 4096, &e) == 0);
	CHECK(memcmp(buf, data + 4096, 4096) == 0);
	CHECK(source_stream_read(s, buf, sizeof(buf), &e) == (ssize_t)sizeof(buf));
	CHECK(memcmp(buf, data, sizeof(buf)) == 0);
	/* past the end: the message names the kit */
	memset(&e, 0, sizeof(e));
	CHECK(source_pread(s, buf, 4096, sizeof(data) - 100, &e) == -EIO);
	CHECK(strstr(e.msg, "mem:kit") != NULL);
	CHECK(m->reads >= 3);
	source_close(s); /* closes the bytes too (ASan would see a leak) */
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	test_file();
	test_refused();
	test_source_over_bytes();
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
