/* seal.c: a finished file's seal is the SHA-256 sha256sum prints, written
 * beside the name the file is about to get; it opens only while the bytes
 * are the sealed ones (-EBADMSG after one byte changed in place, -ENOENT
 * without a seal); a seal kept open sees the change on a later check; a
 * broken seal is gone from disk, and says so once. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "seal.h"

static char dir[] = "/tmp/stella-test-seal.XXXXXX";

static void put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);
}

static void poke(const char *path, off_t off, char c)
{
	int fd = open(path, O_WRONLY);
	CHECK(fd >= 0 && pwrite(fd, &c, 1, off) == 1);
	close(fd);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	char tmp[256], final[256], sum[300], cmd[800];
	snprintf(tmp, sizeof(tmp), "%s/x.db.tmp", dir);
	snprintf(final, sizeof(final), "%s/x.db", dir);
	snprintf(sum, sizeof(sum), "%s/x.db.sum", dir);
	put(tmp, "an index, finished\n");

	struct seal *s = NULL;
	struct stella_err e = { 0 };
	CHECK(seal_create(tmp, final, &s, &e) == 0);
	CHECK(s && seal_intact(s));
	seal_free(s);
	CHECK(rename(tmp, final) == 0);
	/* the seal is what sha256sum says, one line */
	snprintf(cmd, sizeof(cmd), "test \"$(cat %s)\" = \"$(sha256sum < %s | cut -d' ' -f1)\"", sum, final);
	CHECK(system(cmd) == 0);

	s = NULL;
	CHECK(seal_open(final, &s, &e) == 0);
	CHECK(s && seal_intact(s));

	/* one byte changed in place: a new open refuses it, naming the file */
	poke(final, 3, 'X');
	struct seal *s2 = NULL;
	memset(&e, 0, sizeof(e));
	CHECK(seal_open(final, &s2, &e) == -EBADMSG);
	CHECK(strstr(e.msg, "x.db") != NULL);
	/* the seal held open sees it at its next check (not more often than
	 * every few seconds) */
	sleep(6);
	if (s) {
		CHECK(!seal_intact(s));
		CHECK(seal_break(s));
		CHECK(!seal_break(s)); /* said once */
		CHECK(access(sum, F_OK) < 0 && errno == ENOENT);
		seal_free(s);
	}
	memset(&e, 0, sizeof(e));
	CHECK(seal_open(final, &s2, &e) == -ENOENT);

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
