/* hasher.c: both digests of files of awkward sizes (empty, one byte, one
 * block, one block and a byte, several chunks and a bit), handed over in
 * chunks, against sha256sum and `fsverity digest`; the tree it returns
 * checks against its root; a file that gets fewer bytes than announced is
 * -EIO, and the hasher is usable again afterwards. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "hasher.h"
#include "merkle.h"
#include "util.h"

static char dir[] = "/tmp/stella-test-hasher.XXXXXX";

static uint8_t byte_at(uint64_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

static void oracle(const char *cmd, char out[65])
{
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL);
	out[0] = 0;
	if (p) {
		CHECK(fscanf(p, "%64s", out) == 1);
		pclose(p);
	}
}

static void one(struct hasher *h, uint64_t size)
{
	char path[256], cmd[400], want_sha[65], want_fsv[65], got[65];
	snprintf(path, sizeof(path), "%s/f", dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	CHECK(hasher_begin(h, size) == 0);
	for (uint64_t off = 0; off < size;) {
		size_t n = (size_t)MIN(size - off, (uint64_t)HASHER_CHUNK);
		uint8_t *buf = hasher_buf(h);
		for (size_t i = 0; i < n; i++)
			buf[i] = byte_at(off + i);
		CHECK(write(fd, buf, n) == (ssize_t)n);
		hasher_put(h, n);
		off += n;
	}
	close(fd);
	struct hasher_result res;
	CHECK(hasher_end(h, &res) == 0);
	snprintf(cmd, sizeof(cmd), "sha256sum %s", path);
	oracle(cmd, want_sha);
	snprintf(cmd, sizeof(cmd), "fsverity digest --compact %s", path);
	oracle(cmd, want_fsv);
	hex_encode(res.sha256, 32, got);
	CHECK_STR(got, want_sha);
	hex_encode(res.fsverity, 32, got);
	CHECK_STR(got, want_fsv);
	if (res.geom.levels)
		CHECK(merkle_check_tree(&res.geom, res.tree, res.root));
	else
		CHECK(size <= 4096);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	struct hasher *h = NULL;
	CHECK(hasher_new(&h, 2) == 0);
	if (!h)
		return CHECK_DONE();
	uint64_t sizes[] = { 0, 1, 4096, 4097, 3 * (uint64_t)HASHER_CHUNK + 5 };
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		one(h, sizes[i]);

	/* announced 10000 bytes, put 5000: no digest */
	struct hasher_result res;
	CHECK(hasher_begin(h, 10000) == 0);
	memset(hasher_buf(h), 7, 5000);
	hasher_put(h, 5000);
	CHECK(hasher_end(h, &res) == -EIO);
	one(h, 4097); /* and it is idle again */
	hasher_free(h);

	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
