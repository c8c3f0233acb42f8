/* snapshot.c through its public API: a kit packed by core/kitwrite (none,
 * gzip, zstd) is opened, every file read back in odd-sized pieces equals
 * the source; the second open reuses the index; a flipped byte in the kit
 * file fails exactly the reads that cover its block, with -EIO. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>

#include "check.h"
#include "kitwrite.h"
#include "sig.h"
#include "snapshot.h"
#include "util.h"

static char dir[] = "/tmp/stella-test-snap.XXXXXX";

static uint8_t byte_at(uint64_t i, int seed) { return (uint8_t)((i * 131 + seed * 7 + (i >> 12)) % 251); }

static void make_file(const char *name, uint64_t size, int seed)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/src/%s", dir, name);
	FILE *f = fopen(path, "wb");
	for (uint64_t i = 0; i < size; i++)
		fputc(byte_at(i, seed), f);
	fclose(f);
}

static const struct { const char *name; uint64_t size; } files[] = {
	{ "zero", 0 }, { "one", 1 }, { "block", 4096 }, { "d/block1", 4097 },
	{ "d/e/big", (3u << 20) + 5 }, { "d/e/two-levels", 128 * 4096 + 77 },
};

static uint64_t find_ino(struct snapshot *s, const char *path)
{
	uint64_t ino = INDEX_ROOT_INO;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", path);
	struct index_node *n = malloc(sizeof(*n));
	for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (snapshot_lookup(s, ino, c, n) < 0) {
			free(n);
			return 0;
		}
		ino = n->ino;
	}
	free(n);
	return ino;
}

static void read_all(struct snapshot *s, int seed_base)
{
	uint8_t *buf = malloc(200000);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		uint64_t ino = find_ino(s, files[i].name);
		CHECK(ino != 0);
		struct snap_file *f;
		struct stella_err e = { 0 };
		CHECK(snapshot_file_open(s, ino, &f, &e) == 0);
		uint64_t off = 0;
		bool same = true;
		for (;;) {
			ssize_t n = snapshot_read(f, buf, 99991, off);
			CHECK(n >= 0);
			if (n <= 0)
				break;
			for (ssize_t k = 0; k < n; k++)
				if (buf[k] != byte_at(off + (uint64_t)k, seed_base + (int)i))
					same = false;
			off += (uint64_t)n;
		}
		CHECK(same && off == files[i].size);
		snapshot_file_close(f);
	}
	free(buf);
}

static void run(const char *kitname, enum kit_compression comp, EVP_PKEY *key, struct trust *trust)
{
	char kit[512], cache[512];
	snprintf(kit, sizeof(kit), "%s/%s", dir, kitname);
	snprintf(cache, sizeof(cache), "%s/cache", dir);
	char srcdir[512];
	snprintf(srcdir, sizeof(srcdir), "%s/src", dir);
	struct manifest *m = calloc(1, sizeof(*m));
	m->schema_version = 1;
	m->kit_id = strdup("k");
	m->version = strdup("v1");
	m->channel = strdup("stable");
	m->sequence = 1;
	m->created_at = 1736899200;
	m->expires_at = m->created_at + 86400 * 30;
	struct kitwrite_opts wo = { .src_dir = srcdir, .out_path = kit, .keys = &key, .nkeys = 1,
				    .manifest = m, .compression = comp };
	struct kitwrite_result wr;
	struct stella_err e = { 0 };
	CHECK(kit_write(&wo, &wr, &e) == 0);
	manifest_free(m);

	struct snapshot_opts o = { .kit = kit, .trust = trust, .threshold = 1, .now = 1736899200 + 10,
				   .cache_dir = cache };
	struct snapshot *s = NULL;
	CHECK(snapshot_open_kit(&o, &s, &e) == 0);
	if (!s) {
		fprintf(stderr, "open: %s\n", e.msg);
		return;
	}
	CHECK(!s->index_cached);
	CHECK(s->files == 6);
	read_all(s, 0);
	snapshot_unref(s);

	/* again: the index is reused and reads are the same */
	s = NULL;
	CHECK(snapshot_open_kit(&o, &s, &e) == 0 && s && s->index_cached);
	if (s) {
		read_all(s, 0);
		snapshot_unref(s);
	}

	/* expired, judged again on a cached open */
	o.now = 1736899200 + 86400 * 31;
	memset(&e, 0, sizeof(e));
	s = NULL;
	CHECK(snapshot_open_kit(&o, &s, &e) == -EKEYEXPIRED && !s);
	o.now = 1736899200 + 10;

	if (comp != KIT_COMPRESS_NONE)
		return;
	/* Tamper: flip one byte in block 300 of d/e/big inside the kit file. */
	s = NULL;
	CHECK(snapshot_open_kit(&o, &s, &e) == 0 && s);
	if (!s)
		return;
	uint64_t ino = find_ino(s, "d/e/big");
	struct index_node *n = malloc(sizeof(*n));
	CHECK(snapshot_getattr(s, ino, n) == 0);
	int fd = open(kit, O_RDWR);
	uint8_t b;
	uint64_t at = s->data_base + n->data_off + 300 * 4096 + 17; /* relative in a carried index */
	CHECK(pread(fd, &b, 1, (off_t)at) == 1);
	b ^= 0xff;
	CHECK(pwrite(fd, &b, 1, (off_t)at) == 1);
	close(fd);
	struct snap_file *f;
	CHECK(snapshot_file_open(s, ino, &f, &e) == 0);
	uint8_t *buf = malloc(1 << 20);
	CHECK(snapshot_read(f, buf, 4096, 299 * 4096) == 4096);           /* before: fine */
	CHECK(snapshot_read(f, buf, 4096, 300 * 4096) == -EIO);           /* that block: EIO */
	CHECK(snapshot_read(f, buf, 8192, 299 * 4096) == -EIO);           /* a range over it: EIO, never short */
	CHECK(snapshot_read(f, buf, 4096, 301 * 4096) == 4096);           /* after: fine */
	CHECK(atomic_load(&s->failures) >= 2);
	snapshot_file_close(f);
	uint64_t nf, nb;
	memset(&e, 0, sizeof(e));
	CHECK(snapshot_verify_all(s, &nf, &nb, &e) == -EIO && strstr(e.msg, "d/e/big") && strstr(e.msg, "block 300"));
	free(buf);
	free(n);
	snapshot_unref(s);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	char path[512];
	snprintf(path, sizeof(path), "%s/src/d/e", dir);
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "mkdir -p %s", path);
	CHECK(system(cmd) == 0);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		make_file(files[i].name, files[i].size, (int)i);
	struct stella_err e = { 0 };
	snprintf(path, sizeof(path), "%s/key", dir);
	CHECK(key_generate("ed25519", path, &e) == 0);
	EVP_PKEY *key = NULL;
	snprintf(path, sizeof(path), "%s/key.key", dir);
	CHECK(key_load_private(path, &key, &e) == 0);
	struct trust *trust = NULL;
	snprintf(path, sizeof(path), "%s/key.pub", dir);
	CHECK(trust_load(path, &trust, &e) == 0);

	run("kit.tar.gz", KIT_COMPRESS_GZIP, key, trust);
	run("kit.tar.zst", KIT_COMPRESS_ZSTD, key, trust);
	run("kit.tar", KIT_COMPRESS_NONE, key, trust);

	trust_free(trust);
	EVP_PKEY_free(key);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
