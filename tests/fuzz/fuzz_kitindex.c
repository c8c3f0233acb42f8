/* libFuzzer target: the index a kit carries (kit format 1.1, member
 * manifest/index), as the kit carries it.
 *
 * At start-up the harness packs a small tree (with a multi-block file,
 * whose tree is in merkle.bin) into an uncompressed kit with a fixed
 * Ed25519 key, and keeps its manifest, merkle.bin and body.  Each input is
 * the index member: the harness puts it in a kit of its own, between the
 * signature and merkle.bin, with the manifest's "index" set to its size and
 * SHA-256 and signed again (a validly signed hostile index), and mounts
 * that kit as the daemon does: snapshot_open_kit with an empty cache, which
 * reads the head only and runs every check on the index.  What it accepts
 * is walked as FUSE would (readdir, lookup, getattr, open, verified reads of
 * every file).  A hostile index must be refused, or give -EIO reads, never
 * crash, hang, allocate without bound, or return bytes that are not the
 * file's: every read is compared with the source file.
 *
 * STELLA_FUZZ_SEEDS=DIR fuzz_kitindex -runs=0 writes the packer's own index
 * (the seed) to DIR/index.db. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzzkeys.h"
#include "kitread.h"
#include "kitwrite.h"
#include "merkle.h"
#include "sig.h"
#include "snapshot.h"
#include "util.h"
#include "workdir.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CREATED 1736899200
#define NOW (CREATED + 3600)
#define WALK_NODES 256

static char work[64], src[600], kit[600], cache[600];
static struct trust *trust;
static EVP_PKEY *key;
static struct manifest *man;            /* the packed kit's manifest */
static uint8_t *merkle, *body;
static size_t merkle_len, body_len;

static void die(const char *what, const struct stella_err *e, int r)
{
	fprintf(stderr, "fuzz_kitindex setup: %s: %s\n", what, e ? stella_err_text(e, r) : strerror(-r));
	abort();
}

static void quiet(int prio, const char *line)
{
	(void)prio;
	(void)line;
}

static void put_file(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0 || write_full(fd, data, len) < 0)
		die(path, NULL, -errno);
	close(fd);
}

static void make_tree(void)
{
	char p[700];
	snprintf(p, sizeof p, "%s/d", src);
	if (mkdir(src, 0755) < 0 || mkdir(p, 0755) < 0)
		die(src, NULL, -errno);
	snprintf(p, sizeof p, "%s/a.json", src);
	put_file(p, "{\"id\":1}\n", 9, 0644);
	snprintf(p, sizeof p, "%s/a!x", src);
	put_file(p, "bang\n", 5, 0644);
	static uint8_t big[3 * 4096 + 11];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 131 % 251);
	snprintf(p, sizeof p, "%s/d/big", src);
	put_file(p, big, sizeof big, 0644);
	snprintf(p, sizeof p, "%s/d/e", src);
	put_file(p, "", 0, 0600);
	snprintf(p, sizeof p, "%s/l", src);
	if (symlink("d/big", p) < 0)
		die(p, NULL, -errno);
}

static void load_key(void)
{
	char p[700];
	struct stella_err e = { 0 };
	snprintf(p, sizeof p, "%s/ed.key", work);
	put_file(p, fuzzkey_ed25519_key, strlen(fuzzkey_ed25519_key), 0600);
	int r = key_load_private(p, &key, &e);
	if (r < 0)
		die("key", &e, r);
	snprintf(p, sizeof p, "%s/ed.pub", work);
	put_file(p, fuzzkey_ed25519_pub, strlen(fuzzkey_ed25519_pub), 0644);
	if ((r = trust_load(p, &trust, &e)) < 0)
		die("trust", &e, r);
}

/* Pack the tree, then keep the manifest, the index (seed), merkle.bin and
 * the body (everything from the first artifact's header on). */
static void pack_and_split(void)
{
	struct manifest *m = calloc(1, sizeof(*m));
	m->schema_version = 1;
	m->kit_id = strdup("fuzz");
	m->version = strdup("v1");
	m->channel = strdup("stable");
	m->sequence = 1;
	m->created_at = CREATED;
	m->expires_at = CREATED + 86400 * 365;
	char packed[700];
	snprintf(packed, sizeof packed, "%s/packed.kit", work);
	struct kitwrite_opts wo = { .src_dir = src, .out_path = packed, .keys = &key, .nkeys = 1, .manifest = m };
	struct kitwrite_result wr;
	struct stella_err e = { 0 };
	int r = kit_write(&wo, &wr, &e);
	manifest_free(m);
	if (r < 0)
		die("pack", &e, r);
	struct kitread *kr;
	if ((r = kitread_open(packed, &kr, &e)) < 0)
		die("kitread", &e, r);
	struct kit_member km;
	char *json = NULL, *idx = NULL, *mk = NULL;
	uint64_t head_end = 0;
	while ((r = kitread_next(kr, &km, &e)) > 0 && !strncmp(km.name, "manifest/", 9)) {
		char **dst = !strcmp(km.name, KIT_MANIFEST_NAME) ? &json : !strcmp(km.name, KIT_INDEX_NAME) ? &idx :
			     !strcmp(km.name, KIT_MERKLE_NAME) ? &mk : NULL;
		size_t len = km.size;
		if (dst && (r = kitread_slurp(kr, &km, 64u << 20, dst, &e)) < 0)
			die("member", &e, r);
		if (dst == &json && (r = manifest_parse(json, len, &man, &e)) < 0)
			die("manifest", &e, r);
		if (dst == &mk)
			merkle_len = len;
		if (dst == &idx) {
			const char *seeds = getenv("STELLA_FUZZ_SEEDS");
			if (seeds && *seeds) {
				char p[700];
				snprintf(p, sizeof p, "%s/index.db", seeds);
				put_file(p, idx, len, 0644);
			}
		}
		head_end = (km.data_offset + km.size + 511) & ~(uint64_t)511;
	}
	kitread_close(kr);
	merkle = (uint8_t *)mk;
	free(json);
	free(idx);
	char *all = NULL;
	size_t alen = 0;
	if ((r = read_file(packed, 64u << 20, &all, &alen)) < 0 || !merkle || head_end > alen)
		die("split", NULL, r < 0 ? r : -EINVAL);
	body_len = alen - head_end;
	body = malloc(body_len);
	memcpy(body, all + head_end, body_len);
	free(all);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (!getenv("FUZZ_VERBOSE"))
		stella_log_set(quiet);
	snprintf(work, sizeof work, "%s", workdir_make("fuzz_kitindex"));
	snprintf(src, sizeof src, "%s/src", work);
	snprintf(kit, sizeof kit, "%s/kit", work);
	snprintf(cache, sizeof cache, "%s/cache", work);
	if (mkdir(cache, 0700) < 0)
		die(cache, NULL, -errno);
	make_tree();
	load_key();
	pack_and_split();
	return 0;
}

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static la_ssize_t buf_write(struct archive *a, void *ctx, const void *data, size_t len)
{
	(void)a;
	struct buf *b = ctx;
	if (b->len + len > b->cap) {
		size_t cap = (b->len + len) * 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p)
			return -1;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
	return (la_ssize_t)len;
}

static void add(struct archive *ar, const char *name, const void *data, size_t len)
{
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, name);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)len);
	archive_entry_set_mtime(e, CREATED, 0);
	archive_write_header(ar, e);
	if (len)
		archive_write_data(ar, data, len);
	archive_entry_free(e);
}

/* The kit with this index: manifest re-signed, head, the packed body. */
static bool write_kit(const uint8_t *data, size_t size)
{
	man->has_index = true;
	man->index_size = size;
	if (sha256_once(data, size, man->index_sha256) < 0)
		return false;
	char *json = NULL, *line = NULL;
	size_t jlen;
	struct stella_err e = { 0 };
	if (manifest_write(man, &json, &jlen) < 0)
		return false;
	bool ok = sig_sign(key, (const uint8_t *)json, jlen, &line, &e) == 0;
	struct buf b = { 0 };
	if (ok) {
		size_t ll = strlen(line);
		line = realloc(line, ll + 2);
		line[ll] = '\n';
		struct archive *ar = archive_write_new();
		archive_write_set_format_pax_restricted(ar);
		archive_write_set_bytes_per_block(ar, 0);
		archive_write_open(ar, &b, NULL, buf_write, NULL);
		add(ar, KIT_MANIFEST_NAME, json, jlen);
		add(ar, KIT_SIG_NAME, line, ll + 1);
		add(ar, KIT_INDEX_NAME, data, size);
		add(ar, KIT_MERKLE_NAME, merkle, merkle_len);
		archive_write_finish_entry(ar);
		size_t head = b.len;
		archive_write_free(ar); /* its end-of-archive blocks are cut off */
		b.len = head;
		buf_write(NULL, &b, body, body_len);
		put_file(kit, b.p, b.len, 0644);
	}
	free(b.p);
	free(json);
	free(line);
	return ok;
}

static void read_all(struct snapshot *s, const struct index_node *n)
{
	struct snap_file *f;
	struct stella_err e = { 0 };
	if (snapshot_file_open(s, n->ino, &f, &e) < 0)
		return;
	char *path = snapshot_path(s, n->ino);
	char srcpath[5000];
	char *want = NULL;
	size_t wlen = 0;
	if (path) {
		snprintf(srcpath, sizeof srcpath, "%s/%s", src, path);
		read_file(srcpath, 1 << 20, &want, &wlen);
	}
	static uint8_t buf[64 << 10];
	uint64_t off = 0;
	for (;;) {
		ssize_t got = snapshot_read(f, buf, sizeof buf, off);
		if (got <= 0)
			break;
		/* a read that succeeds returns the file's own bytes, always */
		if (!want || off + (uint64_t)got > wlen || memcmp(buf, want + off, (size_t)got))
			abort();
		off += (uint64_t)got;
	}
	free(want);
	free(path);
	snapshot_file_close(f);
}

struct walk {
	uint64_t dirs[WALK_NODES];
	size_t n, seen;
};

static int visit(void *ctx, const struct index_node *n)
{
	struct walk *w = ctx;
	if (++w->seen > WALK_NODES)
		return 1;
	if (n->type == ARTIFACT_DIR && w->n < WALK_NODES)
		w->dirs[w->n++] = n->ino;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (1u << 20) || !write_kit(data, size))
		return 0;
	char db[700];
	snprintf(db, sizeof db, "rm -f %s/*", cache);
	if (system(db) != 0)
		abort();
	struct snapshot_opts o = { .kit = kit, .trust = trust, .threshold = 1, .now = NOW, .cache_dir = cache };
	struct snapshot *s = NULL;
	struct stella_err e = { 0 };
	if (snapshot_open_kit(&o, &s, &e) < 0)
		return 0;
	struct walk w = { .dirs = { INDEX_ROOT_INO }, .n = 1 };
	for (size_t i = 0; i < w.n && w.seen <= WALK_NODES; i++)
		snapshot_readdir(s, w.dirs[i], 0, visit, &w);
	/* every file the manifest lists, by its path */
	for (size_t i = 0; i < man->nartifacts; i++) {
		struct index_node n;
		if (man->artifacts[i].type == ARTIFACT_FILE && snapshot_lookup_path(s, man->artifacts[i].name, &n) == 0 &&
		    n.type == ARTIFACT_FILE)
			read_all(s, &n);
	}
	snapshot_unref(s);
	return 0;
}
