/* libFuzzer target: a snapshot index (core/index.c, SQLite) read back the
 * way the daemon reads one, with the input as the database file:
 *
 *   - store mode: snapshot_open_store on it, as a store's
 *     STORE/snapshots/VERSION.db, with the blobs and trees of a real store;
 *   - direct mode: when its meta rows name one of the harness's kits (its
 *     size and head digest), it is put in that kit's cache directory, the
 *     facts that differ from run to run (kitStat: the kit file's inode and
 *     times) are set to this run's, and when then every fact snapshot_open_kit
 *     checks before it trusts a cached index matches, snapshot_open_kit takes
 *     it as the cached index of that kit (identity and expiry read from it,
 *     seek points of a compressed kit loaded from it).
 *
 * Each opened snapshot is then walked as FUSE would: getattr, readdir,
 * lookup of every name seen, paths, opens and verified reads of files, and
 * verify all.  A malformed database must be refused with an error (or give
 * -EIO reads), never crash, hang or allocate without bound.
 *
 * At start-up the harness packs three kits with a fixed Ed25519 key, so
 * that they are byte-identical from run to run (Ed25519 signatures are
 * deterministic, times are fixed): examples/kit-src (gzip) and a synthetic
 * tree with multi-block files (zstd, and uncompressed as the next version).
 * Their indexes are the seeds: STELLA_FUZZ_SEEDS=DIR fuzz_index -runs=0
 * writes them to DIR (tests/fuzz/make-corpus.sh does). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzzkeys.h"
#include "kitwrite.h"
#include "sig.h"
#include "snapshot.h"
#include "store.h"
#include "util.h"
#include "workdir.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_EXAMPLES_DIR
#error "FUZZ_EXAMPLES_DIR (the source tree's examples/kit-src) must be defined"
#endif

#define CREATED 1736899200           /* 2025-01-15T00:00:00Z */
#define NOW (CREATED + 3600)
#define WALK_NODES 512               /* bound the walk of a hostile tree */
#define WALK_FILES 32

/* The meta rows that tie a cached index to its kit file (snapshot.c's
 * index_matches; a key absent from the index the kit got is not compared),
 * and those of them that change from run to run: the harness sets these. */
static const char *const fact_keys[] = { "schema", "kitSize", "kitHead", "kitStat", "trust", "complete",
					  "manifestSha256" };
#define NFACTS (sizeof fact_keys / sizeof *fact_keys)
enum { FACT_SIZE = 1, FACT_HEAD = 2 };
static const char *const run_keys[] = { "kitStat" };
#define FACT_MAX 200

struct facts {
	bool has[NFACTS];
	char v[NFACTS][FACT_MAX];
};

struct kit {
	const char *name;               /* file name, also the seed's name */
	char path[512];
	char cache[512];                /* its own cache directory */
	char final[600];                /* the index snapshot_open_kit made there */
	struct facts facts;             /* its meta facts */
	char store_index[600];          /* its index in the store, "" if not imported */
};

static char work[64];
static char db_path[600];
static struct kit kits[3] = { { .name = "ex.kit.gz" }, { .name = "syn.kit.zst" }, { .name = "syn2.kit" } };
static struct trust *trust;
static int blob_fd = -1, tree_fd = -1;
static bool verbose;            /* FUZZ_VERBOSE=1: say why an open failed */

static void self_check(void);

static void die(const char *what, const struct stella_err *e, int r)
{
	fprintf(stderr, "fuzz_index setup: %s: %s\n", what, e ? stella_err_text(e, r) : strerror(-r));
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
	if (fd < 0 || write_full(fd, data, len) < 0 || fchmod(fd, mode) < 0)
		die(path, NULL, -errno);
	close(fd);
}

static void put_pattern(const char *path, size_t len, unsigned seed)
{
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		abort();
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)((i * 131 + seed * 7 + (i >> 12)) % 251);
	put_file(path, buf, len, 0644);
	free(buf);
}

/* feeds/, rules/, a symlink, an empty file, an executable, files of one,
 * three and 129 blocks (a one-level and a two-level Merkle tree). */
static void make_synthetic(const char *dir)
{
	char p[600];
	const char *dirs[] = { "", "/feeds", "/feeds/nvd", "/feeds/big", "/rules", "/bin" };
	for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
		snprintf(p, sizeof p, "%s%s", dir, dirs[i]);
		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			die(p, NULL, -errno);
	}
	snprintf(p, sizeof p, "%s/feeds/nvd/a.json", dir);
	put_file(p, "{\"cve\":\"CVE-2025-0001\"}\n", 24, 0644);
	snprintf(p, sizeof p, "%s/README", dir);
	put_file(p, "hello\n", 6, 0644);
	snprintf(p, sizeof p, "%s/empty", dir);
	put_file(p, "", 0, 0644);
	snprintf(p, sizeof p, "%s/bin/run", dir);
	put_file(p, "#!/bin/sh\necho hi\n", 18, 0755);
	snprintf(p, sizeof p, "%s/rules/one-block", dir);
	put_pattern(p, 4096, 1);
	snprintf(p, sizeof p, "%s/feeds/nvd/blocks.txt", dir);
	put_pattern(p, 3 * 4096 + 5, 2);
	snprintf(p, sizeof p, "%s/feeds/big/two-levels", dir);
	put_pattern(p, 129 * 4096 + 77, 3);
	snprintf(p, sizeof p, "%s/latest", dir);
	if (symlink("feeds/nvd/a.json", p) < 0)
		die(p, NULL, -errno);
}

static EVP_PKEY *fixed_key(void)
{
	char p[600];
	snprintf(p, sizeof p, "%s/ed.key", work);
	put_file(p, fuzzkey_ed25519_key, strlen(fuzzkey_ed25519_key), 0600);
	EVP_PKEY *k = NULL;
	struct stella_err e = { 0 };
	int r = key_load_private(p, &k, &e);
	if (r < 0)
		die("fixed key", &e, r);
	unlink(p);
	snprintf(p, sizeof p, "%s/ed.pub", work);
	put_file(p, fuzzkey_ed25519_pub, strlen(fuzzkey_ed25519_pub), 0644);
	if ((r = trust_load(p, &trust, &e)) < 0)
		die("fixed trust", &e, r);
	unlink(p);
	return k;
}

/* The fact rows of the index at path (-1 if it cannot be read as one). */
static int read_facts(const char *path, struct facts *f)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	int r = -1;
	memset(f, 0, sizeof(*f));
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key=?1", -1, &q, NULL) == SQLITE_OK) {
		r = 0;
		for (size_t i = 0; i < NFACTS; i++) {
			sqlite3_bind_text(q, 1, fact_keys[i], -1, SQLITE_STATIC);
			int n;
			if (sqlite3_step(q) == SQLITE_ROW && (n = sqlite3_column_bytes(q, 0)) < FACT_MAX) {
				f->has[i] = true;
				if (n > 0)
					memcpy(f->v[i], sqlite3_column_blob(q, 0), (size_t)n);
			}
			sqlite3_reset(q);
		}
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	return r;
}

static void pack(struct kit *k, EVP_PKEY *key, const char *src, const char *kit_id, const char *version,
		 int64_t sequence, enum kit_compression comp)
{
	struct manifest *m = calloc(1, sizeof(*m));
	struct component *c = calloc(1, sizeof(*c));
	if (!m || !c)
		abort();
	m->schema_version = 1;
	m->kit_id = strdup(kit_id);
	m->version = strdup(version);
	m->channel = strdup("stable");
	m->sequence = sequence;
	m->created_at = CREATED;
	m->expires_at = CREATED + 86400 * 30;
	c->name = strdup("feeds");
	c->path = strdup("feeds");
	c->records = -1;
	c->warn_age_days = 7;
	c->max_age_days = 14;
	m->components = c;
	m->ncomponents = 1;
	snprintf(k->path, sizeof k->path, "%s/%s", work, k->name);
	struct kitwrite_opts wo = { .src_dir = src, .out_path = k->path, .keys = &key, .nkeys = 1,
				    .manifest = m, .compression = comp };
	struct kitwrite_result wr;
	struct stella_err e = { 0 };
	int r = kit_write(&wo, &wr, &e);
	if (r < 0)
		die(k->path, &e, r);
	manifest_free(m);
	snprintf(k->cache, sizeof k->cache, "%s/cache-%s", work, k->name);
	if (mkdir(k->cache, 0700) < 0)
		die(k->cache, NULL, -errno);

	/* A first open builds the index, as a first mount does. */
	struct snapshot_opts o = { .kit = k->path, .trust = trust, .threshold = 1, .now = NOW,
				   .cache_dir = k->cache };
	struct snapshot *s = NULL;
	if ((r = snapshot_open_kit(&o, &s, &e)) < 0)
		die(k->path, &e, r);
	snapshot_unref(s);
	/* Where it is (snapshot.c names it), and what it says of the kit. */
	DIR *d = opendir(k->cache);
	struct dirent *de;
	while (d && (de = readdir(d)))
		if (strlen(de->d_name) > 3 && !strcmp(de->d_name + strlen(de->d_name) - 3, ".db"))
			snprintf(k->final, sizeof k->final, "%s/%s", k->cache, de->d_name);
	if (d)
		closedir(d);
	if (!k->final[0] || read_facts(k->final, &k->facts) < 0 || !k->facts.has[FACT_SIZE] ||
	    !k->facts.has[FACT_HEAD])
		die("the index a first open left in the cache directory", NULL, -ENOENT);
}

static void import(struct store *st, struct kit *k)
{
	struct store_import_opts o = { .trust = trust, .threshold = 1, .now = NOW, .activate = true };
	char version[129];
	struct stella_err e = { 0 };
	int r = store_import(st, k->path, &o, version, &e);
	if (r < 0)
		die(k->path, &e, r);
	char *p = store_index_path(st, version);
	if (!p)
		abort();
	snprintf(k->store_index, sizeof k->store_index, "%s", p);
	free(p);
}

static void copy_out(const char *from, const char *dir, const char *name)
{
	char *buf = NULL;
	size_t len = 0;
	char to[600];
	int r = read_file(from, 64u << 20, &buf, &len);
	if (r < 0)
		die(from, NULL, r);
	snprintf(to, sizeof to, "%s/%s", dir, name);
	put_file(to, buf, len, 0644);
	free(buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	verbose = getenv("FUZZ_VERBOSE") != NULL;
	if (!verbose)
		stella_log_set(quiet);
	snprintf(work, sizeof work, "%s", workdir_make("fuzz_index"));
	char syn[600], store_dir[600];
	snprintf(syn, sizeof syn, "%s/syn", work);
	make_synthetic(syn);
	EVP_PKEY *key = fixed_key();
	pack(&kits[0], key, FUZZ_EXAMPLES_DIR, "fuzz-example", "2025.01.15", 1, KIT_COMPRESS_GZIP);
	pack(&kits[1], key, syn, "fuzz-synthetic", "2025.01.15", 1, KIT_COMPRESS_ZSTD);
	pack(&kits[2], key, syn, "fuzz-synthetic", "2025.01.16", 2, KIT_COMPRESS_NONE);
	EVP_PKEY_free(key);

	/* A store holding the example kit and the second synthetic one: its
	 * blobs and trees back every store-mode open. */
	struct store *st = NULL;
	struct stella_err e = { 0 };
	snprintf(store_dir, sizeof store_dir, "%s/store", work);
	int r = store_open(store_dir, true, &st, &e);
	if (r < 0 || (r = store_lock(st, &e)) < 0)
		die(store_dir, &e, r);
	import(st, &kits[0]);
	import(st, &kits[2]);
	store_unlock(st);
	blob_fd = fcntl(store_blob_dirfd(st), F_DUPFD_CLOEXEC, 0);
	tree_fd = fcntl(store_tree_dirfd(st), F_DUPFD_CLOEXEC, 0);
	if (blob_fd < 0 || tree_fd < 0)
		die("store dirfds", NULL, -errno);

	const char *seeds = getenv("STELLA_FUZZ_SEEDS");
	if (seeds && *seeds) {
		char name[300];
		for (size_t i = 0; i < sizeof kits / sizeof *kits; i++) {
			snprintf(name, sizeof name, "cache-%s.db", kits[i].name);
			copy_out(kits[i].final, seeds, name);
			if (kits[i].store_index[0]) {
				snprintf(name, sizeof name, "store-%s.db", kits[i].name);
				copy_out(kits[i].store_index, seeds, name);
			}
		}
		fprintf(stderr, "fuzz_index: seeds written to %s\n", seeds);
	}
	store_close(st);
	snprintf(db_path, sizeof db_path, "%s/in.db", work);
	self_check();
	return 0;
}

/* ---- the walk ---- */

struct walk {
	struct snapshot *s;
	uint64_t queue[WALK_NODES];
	size_t nq;
	unsigned files;
	uint8_t *buf;
};

static void read_file_node(struct walk *w, const struct index_node *n)
{
	struct snap_file *f = NULL;
	struct stella_err e = { 0 };
	if (w->files >= WALK_FILES)
		return;
	w->files++;
	int r = snapshot_file_open(w->s, n->ino, &f, &e);
	if (verbose)
		fprintf(stderr, "  open %s (%llu bytes): %s\n", n->name, (unsigned long long)n->size,
			r < 0 ? stella_err_text(&e, r) : "ok");
	if (r < 0)
		return;
	/* start, a read across a block boundary, the last block, past the end */
	(void)snapshot_read(f, w->buf, 8192, 0);
	if (n->size > 4096)
		(void)snapshot_read(f, w->buf, 4096, 4000);
	if (n->size)
		(void)snapshot_read(f, w->buf, 4096, (n->size - 1) & ~(uint64_t)4095);
	(void)snapshot_read(f, w->buf, 16, n->size);
	/* a second open shares the first one's state */
	struct snap_file *g = NULL;
	if (snapshot_file_open(w->s, n->ino, &g, &e) == 0) {
		(void)snapshot_read(g, w->buf, 100, 0);
		snapshot_file_close(g);
	}
	snapshot_file_close(f);
}

static bool queued(const struct walk *w, uint64_t ino)
{
	for (size_t i = 0; i < w->nq; i++)
		if (w->queue[i] == ino)
			return true;
	return false;
}

static int visit(void *ctx, const struct index_node *n)
{
	struct walk *w = ctx;
	if (queued(w, n->ino))
		return 0;  /* seen: not a tree (or a second listing) */
	struct index_node *x = malloc(sizeof(*x));
	if (!x)
		abort();
	(void)snapshot_lookup(w->s, n->parent, n->name, x);
	(void)snapshot_getattr(w->s, n->ino, x);
	free(snapshot_path(w->s, n->ino));
	free(x);
	if (w->nq < WALK_NODES)
		w->queue[w->nq++] = n->ino;
	if (n->type == ARTIFACT_FILE)
		read_file_node(w, n);
	return w->nq >= WALK_NODES;
}

static int count(void *ctx, const struct index_node *n)
{
	(void)n;
	return ++*(unsigned *)ctx > 2;   /* a listing resumed, then stopped early */
}

static void walk(struct snapshot *s)
{
	struct walk *w = calloc(1, sizeof(*w));
	struct index_node *n = malloc(sizeof(*n));
	if (!w || !n || !(w->buf = malloc(16384)))
		abort();
	w->s = s;
	(void)snapshot_getattr(s, INDEX_ROOT_INO, n);
	(void)snapshot_lookup(s, INDEX_ROOT_INO, "feeds", n);
	w->queue[w->nq++] = INDEX_ROOT_INO;
	/* Breadth first over every node seen once (the walk is bounded; nodes
	 * are not trusted to form a tree).  Files are queued too: listing one
	 * must give nothing. */
	for (size_t i = 0; i < w->nq; i++) {
		unsigned c = 0;
		(void)snapshot_readdir(s, w->queue[i], 0, visit, w);
		(void)snapshot_readdir(s, w->queue[i], 3, count, &c);
	}
	uint64_t files = 0, bytes = 0;
	struct stella_err e = { 0 };
	int r = snapshot_verify_all(s, &files, &bytes, &e);
	if (verbose)
		fprintf(stderr, "  verify all: %llu files, %llu bytes: %s\n", (unsigned long long)files,
			(unsigned long long)bytes, r < 0 ? stella_err_text(&e, r) : "ok");
	free(w->buf);
	free(w);
	free(n);
}

/* ---- one input ---- */

static void put_input(const char *path, const uint8_t *data, size_t size)
{
	char side[700];
	const char *suffix[] = { "-journal", "-wal", "-shm" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(side, sizeof side, "%s%s", path, suffix[i]);
		unlink(side);
	}
	put_file(path, data, size, 0600);
}

/* The kit whose cached index the input claims to be (by the kit file's
 * size and head digest), or NULL. */
static struct kit *claimed_kit(void)
{
	struct facts f;
	if (read_facts(db_path, &f) < 0 || !f.has[FACT_SIZE] || !f.has[FACT_HEAD])
		return NULL;
	for (size_t i = 0; i < sizeof kits / sizeof *kits; i++) {
		struct kit *k = &kits[i];
		if (!strcmp(f.v[FACT_SIZE], k->facts.v[FACT_SIZE]) && !strcmp(f.v[FACT_HEAD], k->facts.v[FACT_HEAD]))
			return k;
	}
	return NULL;
}

/* Put the input in k's cache directory with this run's values of the facts
 * that change between runs; true when every fact then matches (otherwise
 * snapshot_open_kit would rebuild the index, which is not what this
 * target is about). */
static bool place_cached(struct kit *k, const uint8_t *data, size_t size)
{
	put_input(k->final, data, size);
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	if (sqlite3_open_v2(k->final, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "UPDATE meta SET value=?2 WHERE key=?1", -1, &q, NULL) == SQLITE_OK) {
		for (size_t i = 0; i < sizeof run_keys / sizeof *run_keys; i++)
			for (size_t j = 0; j < NFACTS; j++)
				if (!strcmp(run_keys[i], fact_keys[j]) && k->facts.has[j]) {
					sqlite3_bind_text(q, 1, fact_keys[j], -1, SQLITE_STATIC);
					sqlite3_bind_blob(q, 2, k->facts.v[j], (int)strlen(k->facts.v[j]), SQLITE_STATIC);
					(void)sqlite3_step(q);
					sqlite3_reset(q);
				}
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	struct facts f;
	if (read_facts(k->final, &f) < 0)
		return false;
	for (size_t j = 0; j < NFACTS; j++)
		if (f.has[j] != k->facts.has[j] || strcmp(f.v[j], k->facts.v[j]))
			return false;
	return true;
}

static int open_cached(struct kit *k, struct snapshot **s, struct stella_err *e)
{
	struct snapshot_opts o = { .kit = k->path, .trust = trust, .threshold = 1, .now = NOW,
				   .cache_dir = k->cache };
	return snapshot_open_kit(&o, s, e);
}

/* Each kit's own index, put back the way inputs are, must be taken as its
 * cached index: if not, snapshot.c's facts changed and fact_keys/run_keys
 * above must follow, or no input would reach the cached path. */
static void self_check(void)
{
	for (size_t i = 0; i < sizeof kits / sizeof *kits; i++) {
		struct kit *k = &kits[i];
		char *buf = NULL;
		size_t len = 0;
		struct snapshot *s = NULL;
		struct stella_err e = { 0 };
		int r = read_file(k->final, 64u << 20, &buf, &len);
		if (r < 0)
			die(k->final, NULL, r);
		if (!place_cached(k, (const uint8_t *)buf, len))
			die("self-check: a kit's own index does not match its facts once placed", NULL, -EINVAL);
		if ((r = open_cached(k, &s, &e)) < 0)
			die("self-check: cached open", &e, r);
		if (!s->index_cached) {
			fprintf(stderr, "fuzz_index: self-check: %s: its own index was not taken as cached: "
					"the facts snapshot.c checks changed (update fact_keys/run_keys)\n", k->name);
			abort();
		}
		snapshot_unref(s);
		free(buf);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stella_err e = { 0 };
	struct snapshot *s = NULL;

	put_input(db_path, data, size);
	int r = snapshot_open_store(db_path, blob_fd, tree_fd, "fuzz", &s, &e);
	if (verbose)
		fprintf(stderr, "store open: %s\n", r < 0 ? stella_err_text(&e, r) : "ok");
	if (r == 0) {
		walk(s);
		snapshot_unref(s);
	}

	struct kit *k = claimed_kit();
	if (k && place_cached(k, data, size)) {
		s = NULL;
		e = (struct stella_err){ 0 };
		r = open_cached(k, &s, &e);
		if (verbose)
			fprintf(stderr, "cached open of %s: %s\n", k->name, r < 0 ? stella_err_text(&e, r) : "ok");
		if (r == 0) {
			walk(s);
			snapshot_unref(s);
		}
	} else if (verbose) {
		fprintf(stderr, "%s\n", k ? "claims a kit, but its facts do not match" : "claims no kit");
	}
	return 0;
}
