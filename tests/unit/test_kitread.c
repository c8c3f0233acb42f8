/* kitread.c on archives GNU tar wrote (an independent writer): members in
 * order with their types, sizes, modes and symlink targets; a member's data
 * read back, and found at its data_offset in the tar file; gzip and zstd
 * archives read the same; refused (-EBADMSG, naming the member): a hard
 * link, a FIFO, a name with "..", and bytes after the archive's end. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "kitread.h"

static char dir[] = "/tmp/stella-test-kitread.XXXXXX";

/* A shell script with $D the test's directory. */
static void sh(const char *script)
{
	CHECK(system(script) == 0);
}

static void walk_good(const char *kit)
{
	struct kitread *kr = NULL;
	struct stella_err e = { 0 };
	CHECK(kitread_open(kit, &kr, &e) == 0);
	if (!kr) {
		fprintf(stderr, "  %s: %s\n", kit, e.msg);
		return;
	}
	const char *names[] = { "a.txt", "d", "d/link", "d/x.bin" };
	struct kit_member m;
	int r, i = 0;
	char raw[600];
	snprintf(raw, sizeof(raw), "%s/plain.tar", dir);
	int rawfd = open(raw, O_RDONLY);
	while ((r = kitread_next(kr, &m, &e)) == 1 && i < 4) {
		CHECK_STR(m.name, names[i]);
		if (i == 0) {
			CHECK(m.type == ARTIFACT_FILE && m.size == 6 && m.mode == 0640);
			char buf[16] = "";
			CHECK(kitread_data(kr, buf, sizeof(buf), &e) == 6);
			CHECK(!memcmp(buf, "hello\n", 6));
			CHECK(kitread_data(kr, buf, sizeof(buf), &e) == 0);
			char at[6];
			CHECK(rawfd >= 0 && pread(rawfd, at, 6, (off_t)m.data_offset) == 6 && !memcmp(at, "hello\n", 6));
		} else if (i == 1) {
			CHECK(m.type == ARTIFACT_DIR && m.mode == 0700);
		} else if (i == 2) {
			CHECK(m.type == ARTIFACT_SYMLINK);
			CHECK_STR(m.target, "x.bin");
		} else {
			CHECK(m.type == ARTIFACT_FILE && m.size == 70000);
		}
		i++;
	}
	CHECK(r == 0 && i == 4);
	if (rawfd >= 0)
		close(rawfd);
	kitread_close(kr);
}

static void refused(const char *kit, const char *needle)
{
	struct kitread *kr = NULL;
	struct stella_err e = { 0 };
	int r = kitread_open(kit, &kr, &e);
	struct kit_member m;
	while (r >= 0 && (r = kitread_next(kr, &m, &e)) == 1) {
		char buf[4096];
		while (kitread_data(kr, buf, sizeof(buf), &e) > 0)
			;
	}
	CHECK(r == -EBADMSG);
	if (!strstr(e.msg, needle)) {
		fprintf(stderr, "  %s: \"%s\" lacks \"%s\"\n", kit, e.msg, needle);
		CHECK(!"the message names it");
	}
	kitread_close(kr);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	setenv("D", dir, 1);
	sh("cd $D && mkdir -p t/d && printf 'hello\\n' > t/a.txt && chmod 640 t/a.txt && chmod 700 t/d && "
	   "head -c 70000 /dev/urandom > t/d/x.bin && ln -s x.bin t/d/link");
	sh("cd $D/t && tar --format=pax --no-recursion -cf $D/plain.tar a.txt d d/link d/x.bin && "
	   "gzip -c $D/plain.tar > $D/k.tar.gz && zstd -q -c $D/plain.tar -o $D/k.tar.zst");
	char p[600];
	snprintf(p, sizeof(p), "%s/plain.tar", dir);
	walk_good(p);
	snprintf(p, sizeof(p), "%s/k.tar.gz", dir);
	walk_good(p);
	snprintf(p, sizeof(p), "%s/k.tar.zst", dir);
	walk_good(p);

	sh("cd $D/t && ln a.txt hard && tar --format=pax -cf $D/hard.tar a.txt hard");
	snprintf(p, sizeof(p), "%s/hard.tar", dir);
	refused(p, "hard");
	sh("cd $D/t && mkfifo fifo && tar --format=pax -cf $D/fifo.tar fifo");
	snprintf(p, sizeof(p), "%s/fifo.tar", dir);
	refused(p, "fifo");
	sh("cd $D/t && tar --format=pax -cf $D/dots.tar --transform='s,^a.txt,x/../../a.txt,' a.txt");
	snprintf(p, sizeof(p), "%s/dots.tar", dir);
	refused(p, "unsafe name");
	sh("cp $D/plain.tar $D/trail.tar && head -c 20480 /dev/zero >> $D/trail.tar && printf 'junk' >> $D/trail.tar");
	snprintf(p, sizeof(p), "%s/trail.tar", dir);
	refused(p, "");

	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
