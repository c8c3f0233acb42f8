#include "snapshot.h"

#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <openssl/evp.h>

#include "bounds.h"
#include "bytes.h"
#include "kitindex.h"
#include "kitverify.h"
#include "merkle.h"
#include "remote.h"
#include "seal.h"
#include "util.h"

#define HEAD_BYTES (64u << 10)
#define NBUCKETS 1024

struct snap_file {
	struct snapshot *s;
	struct snap_file *next;       /* hash chain in files_map */
	uint64_t ino;
	int refs;
	bool shared;                  /* in files_map (verify_all uses private ones) */
	uint64_t size, data_off;
	int64_t tree_off;
	uint8_t fsverity[32];
	/* Store mode: the names of the blob and of the tree file, whose
	 * descriptors the fd cache lends for each read (an open file holds
	 * none of its own).  The hints are under the fd cache's lock. */
	bool blob, tree_file;
	char blob_name[68], tree_name[68];
	struct fdcache_hint blob_hint, tree_hint;
	struct merkle_geom g;
	uint8_t *tree;                /* whole tree, filled (and checked) lazily */
	uint8_t *tree_ok;             /* one byte per tree block: checked */
	bool tree_loaded;             /* the index gave us the whole tree at open */
	bool data_bad;                /* a rebuild found the data does not give the
				       * signed root: the kit is immutable, so it
				       * never will (locked) */
	pthread_mutex_t lock;
};

struct snap_files {
	pthread_mutex_t lock;
	struct snap_file *bucket[NBUCKETS];
};

/* ---- opening: the index, cached or built by one lazy walk ---- */

/* The walk and the index build overlap: the walk (reading the tar,
 * hashing what must be hashed) runs on the caller's thread, and a second
 * thread inserts each artifact's node as soon as the walk has passed its
 * member and knows its offset.  On a kit of many small files each half
 * costs about the same, so a first mount takes the longer of the two
 * instead of their sum.  The single SQLite writer is shared under
 * `writer` (the walk adds the trees it computes). */
struct build {
	struct snapshot *s;
	struct index *ix;
	const struct kitverify_result *res;
	const char *kit;
	uint64_t *data_off;        /* per manifest artifact, filled by the walk */
	pthread_mutex_t lock;      /* progress, done, rc */
	pthread_cond_t cond;
	size_t progress;           /* artifacts [0, progress) are walked */
	bool done;                 /* the walk ended (well or not) */
	bool started;
	pthread_t thread;
	pthread_mutex_t writer;
	int rc;                    /* the builder's failure */
	struct stella_err err;
};

static void *build_thread(void *arg)
{
	struct build *b = arg;
	const struct manifest *m = b->res->manifest;
	size_t i = 0, upto = 0;
	int r = 0;
	while (i < m->nartifacts && r == 0) {
		if (i == upto) {
			pthread_mutex_lock(&b->lock);
			while (b->progress <= i && !b->done)
				pthread_cond_wait(&b->cond, &b->lock);
			upto = b->progress;
			bool stop = b->done && upto <= i;
			pthread_mutex_unlock(&b->lock);
			if (stop)
				break;
		}
		pthread_mutex_lock(&b->writer);
		for (; i < upto && r == 0; i++) {
			const struct artifact *a = &m->artifacts[i];
			int64_t tree_off = -1;
			if (a->type == ARTIFACT_FILE) {
				const struct merklefile_entry *x = merklefile_find(&b->res->merkle, a->fsverity);
				if (x)
					tree_off = (int64_t)(b->res->merkle_offset + x->offset);
				b->s->files++;
				b->s->bytes += a->size;
			}
			r = index_add(b->ix, a, b->data_off[i], tree_off, &b->err);
		}
		pthread_mutex_unlock(&b->writer);
	}
	pthread_mutex_lock(&b->lock);
	b->rc = r;
	pthread_mutex_unlock(&b->lock);
	return NULL;
}

/* kit_verify's say on the manifest, once signed and fresh: refuse a delta
 * kit before the walk, and start the builder. */
static int build_start(void *ctx, const struct manifest *m, const uint8_t sha256[32], struct stella_err *e)
{
	struct build *b = ctx;
	(void)sha256;
	if (m->has_base)
		return stella_fail(e, -EINVAL, "%s: a delta kit (base %s) cannot be mounted alone: import it into a store that holds its base",
				   b->kit, m->base_version);
	if (!(b->data_off = calloc(m->nartifacts + 1, sizeof(*b->data_off))))
		return -ENOMEM;
	if (pthread_create(&b->thread, NULL, build_thread, b) != 0)
		return stella_fail(e, -EAGAIN, "%s: cannot start the index builder", b->kit);
	b->started = true;
	return 0;
}

static void build_progress(struct build *b, size_t progress, bool done)
{
	pthread_mutex_lock(&b->lock);
	if (progress > b->progress)
		b->progress = progress;
	b->done |= done;
	pthread_cond_signal(&b->cond);
	pthread_mutex_unlock(&b->lock);
}

/* The walk is over: all of it walked (r == 0), or the builder stops. */
static void build_end(void *ctx, int r)
{
	struct build *b = ctx;
	if (!b->started)
		return;
	build_progress(b, r == 0 ? b->res->manifest->nartifacts : 0, true);
	pthread_join(b->thread, NULL);
	b->started = false;
}

static int build_visit(void *ctx, size_t i, const struct kit_member *m, const struct hasher_result *h,
		       struct stella_err *e)
{
	struct build *b = ctx;
	b->data_off[i] = m->data_offset;
	int r = 0;
	/* A tree the kit did not carry: computed by the walk, kept in the index. */
	if (h && h->geom.levels) {
		pthread_mutex_lock(&b->writer);
		r = index_add_tree(b->ix, h->fsverity, h->tree, merkle_tree_size(&h->geom), e);
		pthread_mutex_unlock(&b->writer);
	}
	/* Members come in manifest order; tell the builder every so often
	 * (and at the end), not at every one. */
	if ((i & 255) == 255 || h)
		build_progress(b, i + 1, false);
	pthread_mutex_lock(&b->lock);
	int brc = b->rc;
	pthread_mutex_unlock(&b->lock);
	if (brc < 0 && r == 0)
		r = stella_fail(e, brc, "%s", stella_err_text(&b->err, brc));
	return r;
}

static int meta_str(struct index *ix, const char *key, char **out)
{
	return index_get_meta(ix, key, out, NULL);
}

static int cmp_id(const void *a, const void *b)
{
	return memcmp(a, b, 32);
}

/* What ties a cached index to one kit file without reading the kit: the
 * file's size, the digest of its first 64 KiB (the manifest's tar header
 * and start: a repacked kit differs there), the identity its bytes give
 * (bytes.h: for a local file its inode and times, and any rewrite of the
 * file changes its ctime), and the trust store and
 * threshold it was verified under.  The cache file is named after the
 * first two; the rest is checked inside.  A kit that changes behind
 * these facts (a USB stick rewritten elsewhere with forged times) still
 * cannot change what is served: every block read is checked against the
 * trees of the manifest verified when the index was built, so the worst
 * it gets is EIO, and the status of the kit that was verified. */
struct kit_facts {
	char name[65];     /* the cache file's name: hex SHA-256 of head and size */
	char size[32];
	char head[65];
	char stat[96];
	char trust[80];
};

static int kit_facts(struct bytes *kit, const struct snapshot_opts *o, struct kit_facts *f,
		     struct stella_err *e)
{
	/* A block device's size here is 0, as fstat has always given it for
	 * one: keys of indexes already cached stay what they were. */
	uint64_t size = bytes_is_device(kit) ? 0 : bytes_size(kit);
	_cleanup_(freep) uint8_t *buf = malloc(HEAD_BYTES + 8);
	if (!buf)
		return -ENOMEM;
	size_t n = (size_t)MIN(size, (uint64_t)HEAD_BYTES);
	int r = bytes_read_full(kit, buf, n, 0);
	if (r < 0)
		return r;
	uint8_t h[32];
	if ((r = sha256_once(buf, n, h)) < 0)
		return r;
	hex_encode(h, 32, f->head);
	snprintf(f->size, sizeof(f->size), "%llu", (unsigned long long)size);
	int64_t ssize = (int64_t)size; /* hashed as fstat's off_t was */
	memcpy(buf + n, &ssize, 8);
	if ((r = sha256_once(buf, n + 8, h)) < 0)
		return r;
	hex_encode(h, 32, f->name);
	/* A kit on a mirror has no inode or ctime, and its identity changes
	 * once the cache is bound to its manifest (remote_bind): the head
	 * and the size say which kit it is (and every block read is checked
	 * against the trees the index was built with, whatever it is). */
	snprintf(f->stat, sizeof(f->stat), "%s", bytes_is_remote(kit) ? "remote" : bytes_identity(kit));

	/* the trust store: its keys' ids, sorted, and the threshold */
	size_t nk = o->trust ? o->trust->n : 0;
	_cleanup_(freep) uint8_t *ids = malloc(nk * 32 + 1);
	if (!ids)
		return -ENOMEM;
	for (size_t i = 0; i < nk; i++)
		memcpy(ids + 32 * i, o->trust->keys[i].id, 32);
	qsort(ids, nk, 32, cmp_id);
	if ((r = sha256_once(ids, nk * 32, h)) < 0)
		return r;
	char hex[65];
	hex_encode(h, 32, hex);
	snprintf(f->trust, sizeof(f->trust), "%s/%u", hex, o->threshold ? o->threshold : 1);
	return 0;
}

static bool index_matches(struct index *ix, const struct kit_facts *f)
{
	const char *keys[] = { "schema", "kitSize", "kitHead", "kitStat", "trust", "complete" };
	char schema[8];
	snprintf(schema, sizeof(schema), "%d", INDEX_SCHEMA);
	const char *want[] = { schema, f->size, f->head, f->stat, f->trust, "1" };
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		char *v = NULL;
		bool ok = meta_str(ix, keys[i], &v) == 0 && !strcmp(v, want[i]);
		free(v);
		if (!ok)
			return false;
	}
	return true;
}

static int set_meta_str(struct index *ix, const char *k, const char *v, struct stella_err *e)
{
	return index_set_meta(ix, k, v, strlen(v), e);
}

int snapshot_write_facts(struct index *ix, const struct manifest *m, const struct snapshot_facts *f,
			 struct stella_err *e)
{
	char *json = NULL, num[32];
	size_t jlen;
	int r = manifest_write_identity(m, &json, &jlen);
	if (r < 0)
		return r;
	r = index_set_meta(ix, "identity", json, jlen, e);
	free(json);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)f->files);
	if (r == 0)
		r = set_meta_str(ix, "files", num, e);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)f->bytes);
	if (r == 0)
		r = set_meta_str(ix, "bytes", num, e);
	snprintf(num, sizeof(num), "%u", f->signers);
	if (r == 0)
		r = set_meta_str(ix, "signers", num, e);
	char mhex[65];
	hex_encode(f->manifest_sha256, 32, mhex);
	if (r == 0)
		r = set_meta_str(ix, "manifestSha256", mhex, e);
	snprintf(num, sizeof(num), "%d", INDEX_SCHEMA);
	if (r == 0)
		r = set_meta_str(ix, "schema", num, e);
	return r;
}

static int load_identity(struct snapshot *s, struct stella_err *e)
{
	char *json = NULL, *v = NULL;
	size_t len;
	int r = index_get_meta(s->ix, "identity", &json, &len);
	if (r < 0)
		return stella_fail(e, -EBADMSG, "index of %s: no identity", s->kit_path);
	struct stella_err me = { 0 };
	r = manifest_parse(json, len, &s->identity, &me);
	free(json);
	if (r < 0)
		return stella_fail(e, r, "index of %s: %s", s->kit_path, stella_err_text(&me, r));
	if (meta_str(s->ix, "files", &v) == 0)
		s->files = strtoull(v, NULL, 10);
	free(v);
	v = NULL;
	if (meta_str(s->ix, "bytes", &v) == 0)
		s->bytes = strtoull(v, NULL, 10);
	free(v);
	v = NULL;
	if (!s->signers && meta_str(s->ix, "signers", &v) == 0)
		s->signers = (unsigned)strtoul(v, NULL, 10);
	free(v);
	const char *keys[] = { "dataBase", "treeBase", "headLen" };
	uint64_t *vals[] = { &s->data_base, &s->tree_base, &s->head_len };
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		v = NULL;
		if (meta_str(s->ix, keys[i], &v) == 0 && parse_u64(v, vals[i]) < 0) {
			free(v);
			return stella_fail(e, -EBADMSG, "index of %s: bad %s", s->kit_path, keys[i]);
		}
		free(v);
	}
	s->carried = s->head_len != 0;
	return 0;
}

/* The last steps of an index build, for both ways: the kit's facts, the
 * commit, sealed, then put in place under its name.  Not fsynced: a crash
 * or power loss can leave torn pages under the name, but a mount uses a
 * cached index only when its bytes hash to its seal (seal_open), so torn
 * ones are built again.  The fsync cost 14 ms of a 0.2 s first mount of
 * 100,000 files and bought only that rebuild (docs/mount.md 2.2). */
static int index_seal(struct snapshot *s, struct index *ix, const char *tmp, const char *final, bool persist,
		      const struct kit_facts *f, struct stella_err *e)
{
	int r = set_meta_str(ix, "kitSize", f->size, e);
	if (r == 0)
		r = set_meta_str(ix, "kitHead", f->head, e);
	if (r == 0)
		r = set_meta_str(ix, "kitStat", f->stat, e);
	if (r == 0)
		r = set_meta_str(ix, "trust", f->trust, e);
	if (r == 0)
		r = set_meta_str(ix, "complete", "1", e);
	if (r == 0)
		r = index_finish(ix, e);
	/* its digest, beside it under the name it is about to get: a later
	 * mount uses it only if its bytes are still these */
	if (r == 0)
		r = seal_create(tmp, persist ? final : NULL, &s->seal, e);
	if (r == 0 && rename(tmp, final) < 0)
		r = stella_fail_errno(e, -errno, "index %s", final);
	return r;
}

/* ---- kit format 1.1: the index the kit carries ---- */

/* The head of a kit read through its own cursor on the kit's bytes. */
struct head {
	struct source *src;
	struct kitread *kr;
	char *json, *sig;
	size_t jlen, slen;
	struct manifest *m;
	uint64_t head_tar;       /* where the body starts in the tar stream */
	uint64_t merkle_off, merkle_size;
	bool whole;              /* h->m holds its artifacts (an unsorted manifest) */
	uint64_t head_sum;       /* per artifact: its tree's share of merkle.bin and an entry */
	uint64_t body_sum;       /* per artifact: headers and padded data */
	/* The index checked while the manifest is parsed (head_early): the
	 * manifest is parsed once, not once for its rules and again for the
	 * check.  Its failures wait in pend until the manifest's own (its
	 * rules, signature, expiry) are known: those are reported first. */
	const char *tmp, *kit;
	struct manifest_stream *ms;
	bool copied;             /* the index is in tmp, merkle.bin's header read */
	struct kitindex_check *chk;
	struct kitindex_info info;
	struct checker *ck;      /* the check's own thread, while it runs */
	int pend;                /* the first failure of the early work */
	bool pend_rows;          /* ... in the rows (void if the manifest is unsorted) */
	struct stella_err pend_e;
	char label[4200];
};

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

static void head_add(struct head *h, const struct artifact *a)
{
	h->head_sum = sat_add(h->head_sum, a->size / 64 + 8192);
	h->body_sum = sat_add(h->body_sum, sat_add((16u << 10), sat_add(a->size, 511) & ~(uint64_t)511));
}

static void head_early(struct head *h, uint64_t size, const uint8_t sha[32]);
static bool checker_start(struct head *h, uint64_t size, const uint8_t sha[32]);
static int checker_push(struct checker *ck, const struct artifact *a);
static void checker_stop(struct head *h);

static void head_step(struct head *h, size_t i, const struct artifact *a)
{
	if (!h->chk || h->pend)
		return;
	int r = kitindex_step(h->chk, i, a);
	if (r < 0) {
		h->pend = r;
		h->pend_rows = true;
	}
}

static int head_on_artifact(void *ctx, size_t i, const struct artifact *a, struct stella_err *e)
{
	struct head *h = ctx;
	(void)e;
	head_add(h, a);
	if (i == 0 && h->tmp) {
		uint64_t size;
		uint8_t sha[32];
		/* no index before the artifacts: it is checked after the parse */
		if (!manifest_stream_index(h->ms, &size, sha))
			return 0;
		if (!checker_start(h, size, sha))
			head_early(h, size, sha); /* no thread: on this one */
	}
	if (h->ck)
		return checker_push(h->ck, a);
	head_step(h, i, a);
	return 0;
}

/* The manifest through the streaming parser (every rule, no artifact
 * kept); one whose artifacts are not sorted is parsed whole instead. */
static int head_parse(struct head *h, struct stella_err *e)
{
	int r = manifest_stream_new(head_on_artifact, h, 0, &h->ms, e);
	for (size_t at = 0; r == 0 && at < h->jlen; at += MANIFEST_STREAM_CHUNK)
		r = manifest_stream_feed(h->ms, h->json + at, MIN(h->jlen - at, (size_t)MANIFEST_STREAM_CHUNK));
	if (r == 0)
		r = manifest_stream_finish(h->ms, &h->m, e);
	bool unsorted = r == -EDOM && h->ms && manifest_stream_unsorted(h->ms);
	manifest_stream_free(h->ms);
	h->ms = NULL;
	checker_stop(h);
	if (!unsorted)
		return r;
	/* the rows were checked in document order, the index follows the
	 * sorted one: check again, later, against the whole manifest */
	kitindex_abort(h->chk);
	h->chk = NULL;
	if (h->pend_rows)
		h->pend = 0;
	h->head_sum = h->body_sum = 0;
	if ((r = manifest_parse(h->json, h->jlen, &h->m, e)) < 0)
		return r;
	h->whole = true;
	for (size_t i = 0; i < h->m->nartifacts; i++)
		head_add(h, &h->m->artifacts[i]);
	return 0;
}

/* The manifest's digest and signature, on a second thread while the
 * manifest is parsed (on a large one they cost about as much). */
struct head_sig {
	struct head *h;
	const struct snapshot_opts *o;
	struct snapshot *s;
	int rc;
	struct stella_err e;
};

static void *head_sig_thread(void *arg)
{
	struct head_sig *j = arg;
	struct head *h = j->h;
	int r = sha256_once(h->json, h->jlen, j->s->manifest_sha256);
	if (r < 0)
		j->rc = stella_fail_errno(&j->e, r, "manifest: SHA-256");
	else if (j->o->trust)
		j->rc = sig_check(j->o->trust, j->o->threshold, (const uint8_t *)h->json, h->jlen, h->sig, h->slen,
				  &j->s->signers, &j->e);
	return NULL;
}

static void head_free(struct head *h)
{
	checker_stop(h);
	if (h->kr)
		kitread_close(h->kr);
	if (h->src)
		source_close(h->src);
	free(h->json);
	free(h->sig);
	manifest_free(h->m);
	kitindex_abort(h->chk);
}

static uint64_t round512(uint64_t x)
{
	return (x + 511) & ~(uint64_t)511;
}

/* One member of the head, which must be NAME (a regular file). */
static int head_member(struct head *h, const char *name, struct kit_member *m, struct stella_err *e)
{
	int r = kitread_next(h->kr, m, e);
	if (r == 0)
		return stella_fail(e, -EBADMSG, "%s: the archive ends before %s", source_path(h->src), name);
	if (r < 0)
		return r;
	if (strcmp(m->name, name) || m->type != ARTIFACT_FILE)
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\" where %s must be", source_path(h->src), m->name, name);
	return 0;
}

/* The manifest and its signature, checked; 1: the kit carries no index
 * (a v1 kit: the caller walks it). */
static int head_manifest(struct head *h, const struct snapshot_opts *o, struct snapshot *s, struct stella_err *e)
{
	const char *path = o->kit;
	struct kit_member m;
	int r = head_member(h, KIT_MANIFEST_NAME, &m, e);
	if (r < 0 || (r = kitread_slurp(h->kr, &m, STELLA_MANIFEST_MAX, &h->json, e)) < 0)
		return r;
	h->jlen = m.size;
	/* most v1 kits say so without a parse */
	if (!memmem(h->json, h->jlen, "\"index\"", 7))
		return 1;
	if ((r = head_member(h, KIT_SIG_NAME, &m, e)) < 0 || (r = kitread_slurp(h->kr, &m, STELLA_SIG_MAX, &h->sig, e)) < 0)
		return r;
	h->slen = m.size;
	struct stella_err me = { 0 };
	struct head_sig job = { .h = h, .o = o, .s = s };
	pthread_t sigt;
	bool threaded = pthread_create(&sigt, NULL, head_sig_thread, &job) == 0;
	r = head_parse(h, &me);
	if (threaded)
		pthread_join(sigt, NULL);
	else
		head_sig_thread(&job);
	if (r < 0)
		return stella_fail(e, r, "%s: %s", path, stella_err_text(&me, r));
	if (!h->m->has_index)
		return 1;
	if (job.rc < 0)
		return stella_fail(e, job.rc, "%s: %s", path, stella_err_text(&job.e, job.rc));
	if (!o->allow_expired && o->now >= h->m->expires_at) {
		char t[32];
		time_format(h->m->expires_at, t);
		return stella_fail(e, -EKEYEXPIRED, "%s: kit %s %s expired at %s", path, h->m->kit_id, h->m->version, t);
	}
	if (h->m->has_base)
		return stella_fail(e, -EINVAL, "%s: a delta kit (base %s) cannot be mounted alone: import it into a store that holds its base",
				   path, h->m->base_version);
	return 0;
}

/* The index member, copied to TMP (the cache file it becomes) while its
 * size and digest are checked against the manifest's "index". */
static int head_index(struct head *h, const char *tmp, uint64_t size, const uint8_t sha256[32], struct stella_err *e)
{
	const char *path = source_path(h->src);
	struct kit_member m;
	int r = head_member(h, KIT_INDEX_NAME, &m, e);
	if (r < 0)
		return r;
	if (m.size != size)
		return stella_fail(e, -EUCLEAN, "%s: %s: size mismatch (manifest: %llu, archive: %llu)", path, KIT_INDEX_NAME,
				   (unsigned long long)size, (unsigned long long)m.size);
	_cleanup_(closep) int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return stella_fail_errno(e, -errno, "index %s", tmp);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	_cleanup_(freep) uint8_t *buf = malloc(1u << 16);
	r = ctx && buf && EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) ? 0 : -ENOMEM;
	for (uint64_t left = m.size; r == 0 && left > 0;) {
		ssize_t n = kitread_data(h->kr, buf, MIN(left, (uint64_t)1 << 16), e);
		if (n <= 0) {
			r = n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: %s: truncated archive", path, KIT_INDEX_NAME);
			break;
		}
		if (!EVP_DigestUpdate(ctx, buf, (size_t)n))
			r = -ENOMEM;
		else if ((r = write_full(fd, buf, (size_t)n)) < 0)
			r = stella_fail_errno(e, r, "index %s", tmp);
		left -= (uint64_t)n;
	}
	uint8_t d[32];
	if (r == 0 && !EVP_DigestFinal_ex(ctx, d, NULL))
		r = -ENOMEM;
	EVP_MD_CTX_free(ctx);
	if (r == 0 && memcmp(d, sha256, 32))
		r = stella_fail(e, -EUCLEAN, "%s: %s: sha256 mismatch", path, KIT_INDEX_NAME);
	h->head_tar = round512(m.data_offset + m.size);
	return r;
}

/* merkle.bin's header, if it follows: only its place and size (every
 * tree is checked against its file's root when used).  The head ends
 * after it. */
static int head_merkle(struct head *h, struct stella_err *e)
{
	struct kit_member m;
	int r = kitread_next(h->kr, &m, e);
	if (r <= 0 || strcmp(m.name, KIT_MERKLE_NAME))
		return r < 0 ? r : 0; /* the first artifact, or the end */
	if (m.type != ARTIFACT_FILE)
		return stella_fail(e, -EBADMSG, "%s: %s is not a regular file", source_path(h->src), KIT_MERKLE_NAME);
	h->merkle_off = m.data_offset;
	h->merkle_size = m.size;
	h->head_tar = round512(m.data_offset + m.size);
	return 0;
}

/* A compressed kit with merkle.bin: decode past the head's end, so that
 * the stream pass sees the frame or member the body starts with (without
 * merkle.bin, head_merkle already read the first artifact's header). */
static int head_past(struct head *h, struct stella_err *e)
{
	struct kit_member m;
	if (source_compression(h->src) == KIT_COMPRESS_NONE || !h->merkle_off)
		return 0;
	int r = kitread_next(h->kr, &m, e);
	return r < 0 ? r : 0;
}

/* The most tar stream the body of a compressed kit can be: every
 * artifact's headers and padded data, the archive's end and padding. */
static uint64_t body_bound(const struct head *h)
{
	return sat_add(64u << 10, h->body_sum); /* head_add, artifact by artifact */
}

static struct kitindex_geom head_geom(const struct head *h, uint64_t body_max)
{
	return (struct kitindex_geom){ .body_max = body_max, .merkle_size = h->merkle_size,
				       .compressed = source_compression(h->src) != KIT_COMPRESS_NONE };
}

/* The body's most bytes as far as the head tells: an uncompressed kit's
 * file after the head; a compressed kit's bound (body_bound) needs every
 * artifact, so at the first one it is open and kitindex_end checks it. */
static uint64_t head_body_max(const struct head *h, bool all_seen)
{
	if (source_compression(h->src) != KIT_COMPRESS_NONE)
		return all_seen ? body_bound(h) : UINT64_MAX;
	uint64_t fsize = source_file_size(h->src);
	return fsize > h->head_tar ? fsize - h->head_tar : 0;
}

/* At the manifest's first artifact, when its "index" came before (as
 * packers write it): copy and hash the index, read merkle.bin's header and
 * begin the check, so that its rows are checked beside the artifacts the
 * parse hands over.  Before, the manifest was parsed a second time (a
 * cursor over its bytes) for the check: on a kit of many small files that
 * parse was a quarter of a first mount (docs/mount.md 2.2).  Checking an
 * index whose digest is not yet known good costs nothing in safety: the
 * check treats the file as hostile anyway (a signed index may lie). */
static void head_early(struct head *h, uint64_t size, const uint8_t sha[32])
{
	h->copied = true;
	/* the head so far: the manifest's bytes, its signature, the index and
	 * merkle.bin's header (head_sum's bound on merkle.bin comes once every
	 * artifact went by) */
	kitread_set_limit(h->kr, h->jlen + STELLA_SIG_MAX + size + (1u << 20));
	int r = head_index(h, h->tmp, size, sha, &h->pend_e);
	if (r == 0)
		r = head_merkle(h, &h->pend_e);
	struct kitindex_geom g = head_geom(h, head_body_max(h, false));
	if (r == 0)
		r = kitindex_begin(h->tmp, h->label, &g, NULL, NULL, &h->info, &h->chk, &h->pend_e);
	h->pend = r;
}

/* The check on a thread of its own, beside the parse: the parse hands
 * the artifacts over in batches (names and targets copied into the
 * batch's pool), at most CHECK_QUEUE batches ahead of the check, so memory
 * stays bounded whatever the count.  The thread copies and hashes the
 * index, begins the check (head_early), then steps the rows.  On a kit of
 * many small files the parse and the rows' reads cost about the same:
 * overlapped, a first mount takes the longer of the two, not their sum.
 * The thread touches the kit's cursor (h->kr) and the check's state (chk,
 * info, pend) only while it runs; the parse's thread reads them only
 * after checker_stop joined it. */
#define CHECK_BATCH 512
#define CHECK_QUEUE 8
struct batch {
	struct batch *next;
	size_t first, n;                     /* artifacts first .. first + n - 1 */
	struct artifact a[CHECK_BATCH];      /* name and target: offsets in pool */
	char *pool;
	size_t plen, pcap;
};

struct checker {
	struct head *h;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct batch *qhead, *qtail, *fill;
	size_t queued, next_i;
	bool done;
	uint64_t size;
	uint8_t sha[32];
};

static void batch_free(struct batch *b)
{
	if (b)
		free(b->pool);
	free(b);
}

/* S (with its NUL) into b's pool: its offset, or SIZE_MAX without memory. */
static size_t pool_add(struct batch *b, const char *s)
{
	size_t l = strlen(s) + 1;
	if (b->plen + l > b->pcap) {
		size_t cap = MAX(b->pcap * 2, b->plen + l);
		cap = MAX(cap, (size_t)(64u << 10));
		char *p = realloc(b->pool, cap);
		if (!p)
			return SIZE_MAX;
		b->pool = p;
		b->pcap = cap;
	}
	memcpy(b->pool + b->plen, s, l);
	b->plen += l;
	return b->plen - l;
}

static void *checker_main(void *arg)
{
	struct checker *ck = arg;
	struct head *h = ck->h;
	head_early(h, ck->size, ck->sha);
	for (;;) {
		pthread_mutex_lock(&ck->lock);
		while (!ck->qhead && !ck->done)
			pthread_cond_wait(&ck->cond, &ck->lock);
		struct batch *b = ck->qhead;
		if (b) {
			ck->qhead = b->next;
			if (!ck->qhead)
				ck->qtail = NULL;
			ck->queued--;
			pthread_cond_broadcast(&ck->cond);
		}
		pthread_mutex_unlock(&ck->lock);
		if (!b)
			break;
		for (size_t k = 0; k < b->n; k++) {
			struct artifact a = b->a[k];
			a.name = b->pool + (uintptr_t)a.name;
			a.target = a.target ? b->pool + (uintptr_t)a.target - 1 : NULL;
			head_step(h, b->first + k, &a);
		}
		batch_free(b);
	}
	return NULL;
}

/* The batch being filled, to the queue (waiting while it is full). */
static void checker_flush(struct checker *ck)
{
	struct batch *b = ck->fill;
	ck->fill = NULL;
	if (!b)
		return;
	pthread_mutex_lock(&ck->lock);
	while (ck->queued >= CHECK_QUEUE)
		pthread_cond_wait(&ck->cond, &ck->lock);
	if (ck->qtail)
		ck->qtail->next = b;
	else
		ck->qhead = b;
	ck->qtail = b;
	ck->queued++;
	pthread_cond_broadcast(&ck->cond);
	pthread_mutex_unlock(&ck->lock);
}

static int checker_push(struct checker *ck, const struct artifact *a)
{
	if (!ck->fill && !(ck->fill = calloc(1, sizeof(*ck->fill))))
		return -ENOMEM;
	struct batch *b = ck->fill;
	if (!b->n)
		b->first = ck->next_i;
	size_t name = pool_add(b, a->name), target = a->target ? pool_add(b, a->target) : 0;
	if (name == SIZE_MAX || target == SIZE_MAX)
		return -ENOMEM;
	struct artifact *x = &b->a[b->n++];
	*x = *a;
	x->name = (char *)(uintptr_t)name;            /* offsets until the check's thread reads them */
	x->target = a->target ? (char *)(uintptr_t)(target + 1) : NULL;
	ck->next_i++;
	if (b->n == CHECK_BATCH)
		checker_flush(ck);
	return 0;
}

static bool checker_start(struct head *h, uint64_t size, const uint8_t sha[32])
{
	struct checker *ck = calloc(1, sizeof(*ck));
	if (!ck)
		return false;
	*ck = (struct checker){ .h = h, .size = size };
	memcpy(ck->sha, sha, 32);
	pthread_mutex_init(&ck->lock, NULL);
	pthread_cond_init(&ck->cond, NULL);
	if (pthread_create(&ck->thread, NULL, checker_main, ck) != 0) {
		pthread_mutex_destroy(&ck->lock);
		pthread_cond_destroy(&ck->cond);
		free(ck);
		return false;
	}
	h->ck = ck;
	return true;
}

/* The rest handed over, the thread joined: its results are the head's. */
static void checker_stop(struct head *h)
{
	struct checker *ck = h->ck;
	if (!ck)
		return;
	checker_flush(ck);
	pthread_mutex_lock(&ck->lock);
	ck->done = true;
	pthread_cond_broadcast(&ck->cond);
	pthread_mutex_unlock(&ck->lock);
	pthread_join(ck->thread, NULL);
	for (struct batch *b = ck->qhead, *nb; b; b = nb) {
		nb = b->next;
		batch_free(b);
	}
	batch_free(ck->fill);
	pthread_mutex_destroy(&ck->lock);
	pthread_cond_destroy(&ck->cond);
	free(ck);
	h->ck = NULL;
}

/* The check after the parse: the rows, beside the manifest's artifacts
 * pulled one at a time from its bytes (no artifact list), when the parse
 * could not check them (an "index" after the artifacts, an unsorted
 * manifest); otherwise only what needed every artifact. */
static int head_check(struct head *h, struct stella_err *e)
{
	if (h->chk) {
		int r = kitindex_end(h->chk, head_body_max(h, true), e);
		h->chk = NULL;
		return r;
	}
	struct kitindex_geom g = head_geom(h, head_body_max(h, true));
	struct manifest_cursor *cur = NULL;
	struct manifest_walk mw = { .m = h->m };
	struct artifact_iter it = { manifest_walk_next, &mw };
	struct stella_err ce = { 0 };
	int r;
	if (!h->whole && (r = manifest_cursor_open_mem(h->json, h->jlen, &cur, &ce)) < 0)
		return stella_fail(e, r, "%s: %s", h->kit, stella_err_text(&ce, r));
	if (cur)
		it = (struct artifact_iter){ manifest_cursor_next, cur };
	r = kitindex_check_iter(h->tmp, h->label, &it, &g, NULL, NULL, &h->info, e);
	manifest_cursor_free(cur);
	return r;
}

/* Mount from the index the kit carries: the head only, never the body.
 * 1: the kit carries none (the caller walks it, as for every v1 kit). */
static int carried_index(struct snapshot *s, const struct snapshot_opts *o, const char *tmp, const char *final,
			 bool persist, const struct kit_facts *f, struct stella_err *e)
{
	struct head h = { .tmp = tmp, .kit = o->kit };
	struct index *ix = NULL;
	snprintf(h.label, sizeof(h.label), "%s: %s", o->kit, KIT_INDEX_NAME);
	int r = source_dup(s->src, &h.src, e);
	if (r == 0)
		r = kitread_open_source(h.src, &h.kr, e);
	if (r < 0)
		goto out;
	kitread_set_limit(h.kr, (uint64_t)STELLA_MANIFEST_MAX + STELLA_SIG_MAX + (4u << 20));
	if ((r = head_manifest(&h, o, s, e)) != 0)
		goto out;
	/* the manifest's own failures came first; now the index's */
	if (h.pend < 0) {
		r = stella_fail(e, h.pend, "%s", stella_err_text(&h.pend_e, h.pend));
		goto out;
	}
	/* the head: the manifest's bytes, the index, merkle.bin (at most
	 * a tree block per 128 data blocks, and an entry, per file) */
	uint64_t bound = sat_add(h.jlen + STELLA_SIG_MAX + h.m->index_size + (1u << 20), h.head_sum);
	kitread_set_limit(h.kr, bound);
	if (!h.copied && ((r = head_index(&h, tmp, h.m->index_size, h.m->index_sha256, e)) < 0 ||
			  (r = head_merkle(&h, e)) < 0))
		goto out;
	if ((r = head_past(&h, e)) < 0)
		goto out;
	bool compressed = source_compression(h.src) != KIT_COMPRESS_NONE;
	uint64_t head_len = h.head_tar;
	if (compressed && source_boundary(h.src, h.head_tar, &head_len) < 0) {
		r = stella_fail(e, -EBADMSG, "%s: %s: the first artifact does not start a fresh %s", o->kit, KIT_INDEX_NAME,
				source_compression(h.src) == KIT_COMPRESS_ZSTD ? "zstd frame" : "gzip member");
		goto out;
	}
	if ((r = head_check(&h, e)) < 0)
		goto out;
	struct kitindex_info info = h.info;
	s->files = info.files;
	s->bytes = info.bytes;
	s->head_len = head_len;
	s->data_base = h.head_tar;
	s->tree_base = h.merkle_off;
	if ((r = index_reopen(tmp, &ix, e)) < 0)
		goto out;
	if (compressed) {
		const struct source_point *pts;
		size_t n = source_points(h.src, &pts);
		if ((r = index_rebase_points(ix, pts, n, h.head_tar, head_len, info.body_size, e)) < 0)
			goto out;
	}
	struct snapshot_facts sf = { .files = s->files, .bytes = s->bytes, .signers = s->signers };
	memcpy(sf.manifest_sha256, s->manifest_sha256, 32);
	char num[32];
	r = snapshot_write_facts(ix, h.m, &sf, e);
	const char *keys[] = { "dataBase", "treeBase", "headLen" };
	uint64_t vals[] = { h.head_tar, h.merkle_off, head_len };
	for (size_t i = 0; i < ARRAY_SIZE(keys) && r == 0; i++) {
		snprintf(num, sizeof(num), "%llu", (unsigned long long)vals[i]);
		r = set_meta_str(ix, keys[i], num, e);
	}
	if (r == 0)
		r = index_seal(s, ix, tmp, final, persist, f, e);
out:
	index_close(ix);
	if (r < 0 || r == 1) {
		unlink(tmp);
		seal_free(s->seal);
		s->seal = NULL;
	}
	head_free(&h);
	return r;
}

static int build_index(struct snapshot *s, const struct snapshot_opts *o, const char *tmp, const char *final,
		       bool persist, const struct kit_facts *f, struct stella_err *e)
{
	struct index *ix = NULL;
	struct kitverify_result res = { 0 };
	struct build b = { .s = s, .res = &res, .kit = o->kit };
	pthread_mutex_init(&b.lock, NULL);
	pthread_cond_init(&b.cond, NULL);
	pthread_mutex_init(&b.writer, NULL);
	int r = index_create(tmp, &ix, e);
	if (r < 0)
		goto out;
	b.ix = ix;
	struct kitverify_opts vo = {
		.trust = o->trust, .threshold = o->threshold, .now = o->now, .allow_expired = o->allow_expired,
		.check_expiry = true, .content = true, .source = s->src, .lazy = true,
		.visit = build_visit, .check_manifest = build_start, .walk_end = build_end, .visit_ctx = &b,
	};
	r = kit_verify(o->kit, &vo, &res, e);
	if (r == 0 && b.rc < 0)
		r = stella_fail(e, b.rc, "%s", stella_err_text(&b.err, b.rc));
	if (r < 0)
		goto out;
	struct manifest *m = res.manifest;
	s->signers = res.signers;
	if (source_compression(s->src) != KIT_COMPRESS_NONE) {
		const struct source_point *pts;
		size_t n = source_points(s->src, &pts);
		if ((r = index_add_points(ix, pts, n, source_stream_size(s->src), e)) < 0)
			goto out;
	}
	/* re-read at every mount from the index */
	struct snapshot_facts sf = { .files = s->files, .bytes = s->bytes, .signers = s->signers };
	memcpy(sf.manifest_sha256, res.manifest_sha256, 32);
	memcpy(s->manifest_sha256, res.manifest_sha256, 32);
	r = snapshot_write_facts(ix, m, &sf, e);
	if (r == 0)
		r = index_seal(s, ix, tmp, final, persist, f, e);
out:
	index_close(ix);
	if (r < 0) {
		unlink(tmp);
		seal_free(s->seal);
		s->seal = NULL;
	}
	kitverify_result_free(&res);
	free(b.data_off);
	pthread_mutex_destroy(&b.lock);
	pthread_cond_destroy(&b.cond);
	pthread_mutex_destroy(&b.writer);
	return r;
}

/* The cache is trusted as far as its directory is: an index names the
 * digests reads are checked against.  Use it only when it is ours and
 * nobody else can write it; otherwise index in a private temporary
 * directory (slower remounts, same guarantees). */
bool snapshot_cache_usable(const char *dir)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return false;
	struct stat st;
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022) ||
	    access(dir, W_OK | X_OK) < 0) {
		stella_log(LOG_WARNING, "cache directory %s is not private to this user: indexing in a temporary one", dir);
		return false;
	}
	return true;
}

/* The cached index, if its bytes are those sealed when it was built.  A
 * disk that fails under the cache can change bytes inside it in ways SQLite
 * does not see (a row's digest, an index b-tree page): such a file is only
 * a cache, built again from the kit, never served. */
static bool cache_sealed(struct snapshot *s, const char *final, const char *kit)
{
	struct stella_err se = { 0 };
	int r = seal_open(final, &s->seal, &se);
	if (r < 0 && access(final, F_OK) == 0)
		stella_log(LOG_WARNING, "%s: cached index not usable, building it again: %s", kit,
			   stella_err_text(&se, r));
	return r == 0;
}

/* A failure that may be the index's, not the kit's: when the index file's
 * bytes are no longer the ones sealed (the disk under the cache failed
 * while mounted), the kit is not blamed, and the next mount builds the
 * index again. */
static bool index_damaged(struct snapshot *s)
{
	if (!s->seal || seal_intact(s->seal))
		return false;
	if (seal_break(s->seal))
		stella_log(LOG_ERR, "%s %s: its index changed on disk since it was built: failures are not the kit's; the next mount builds it again",
			   s->kit_path, s->version ? s->version : "");
	return true;
}

/* The seek points of a compressed kit, from its index (the stream pass
 * that would record them is not run). */
static int install_points(struct snapshot *s, const char *final, struct stella_err *e)
{
	if (s->compression == KIT_COMPRESS_NONE)
		return 0;
	struct source_point *pts;
	size_t n;
	uint64_t total = 0;
	int r;
	if ((r = index_get_points(s->ix, &pts, &n, &total)) < 0 || (r = source_set_points(s->src, pts, n, total)) < 0)
		return stella_fail(e, r == -EINVAL ? -EBADMSG : r, "index %s: bad seek points", final);
	return 0;
}

/* A known kit (the facts above match its cached index): the signature was
 * checked under this same trust store when the index was built; expiry
 * depends on the clock and is checked again.  No byte of the manifest is
 * read: a remount costs a stat, 64 KiB, a hash of the index file (its seal)
 * and a few index lookups. */
static int open_cached(struct snapshot *s, const struct snapshot_opts *o, const char *final,
		       struct stella_err *e)
{
	int r = load_identity(s, e);
	if (r < 0)
		return r;
	char *v = NULL;
	if (meta_str(s->ix, "manifestSha256", &v) < 0 || hex_decode(v, s->manifest_sha256, 32) < 0) {
		free(v);
		return stella_fail(e, -EBADMSG, "index %s: no manifest digest", final);
	}
	free(v);
	const struct manifest *m = s->identity;
	if (!o->allow_expired && o->now >= m->expires_at) {
		char t[32];
		time_format(m->expires_at, t);
		return stella_fail(e, -EKEYEXPIRED, "%s: kit %s %s expired at %s",
				   o->kit, m->kit_id, m->version, t);
	}
	if ((r = install_points(s, final, e)) < 0)
		return r;
	s->index_cached = true;
	return 0;
}

int snapshot_open_kit(const struct snapshot_opts *o, struct snapshot **out, struct stella_err *e)
{
	struct snapshot *s = calloc(1, sizeof(*s));
	char *final = NULL, *tmp = NULL;
	char tmpdir[] = "/tmp/stellafs-index.XXXXXX";
	bool own_tmpdir = false;
	struct kit_facts f;
	struct bytes *given = o->bytes; /* ours until source_open_bytes takes it */
	int r;
	if (!s) {
		bytes_close(given);
		return -ENOMEM;
	}
	atomic_init(&s->refs, 1);
	atomic_init(&s->open_files, 0);
	s->blobs.fd = s->trees.fd = -1;
	if (!(s->kit_path = strdup(o->kit)) || !(s->files_map = calloc(1, sizeof(*s->files_map)))) {
		bytes_close(given);
		r = -ENOMEM;
		goto fail;
	}
	pthread_mutex_init(&s->files_map->lock, NULL);

	/* The facts come from the bytes the snapshot reads, not from a
	 * second open that could find another file at the path. */
	r = given ? source_open_bytes(given, &s->src, e) : source_open(o->kit, &s->src, e);
	if (r < 0)
		goto fail;
	s->compression = source_compression(s->src);
	if ((r = kit_facts(source_bytes(s->src), o, &f, e)) < 0) {
		r = stella_fail_errno(e, r, "%s", o->kit);
		goto fail;
	}
	const char *dir = o->cache_dir;
	if (!dir || !snapshot_cache_usable(dir)) {
		if (!mkdtemp(tmpdir)) {
			r = stella_fail_errno(e, -errno, "temporary index directory");
			goto fail;
		}
		own_tmpdir = true;
		dir = tmpdir;
	}
	size_t pl = strlen(dir) + 80;
	if (!(final = malloc(pl)) || !(tmp = malloc(pl))) {
		r = -ENOMEM;
		goto fail;
	}
	snprintf(final, pl, "%s/%s.db", dir, f.name);
	snprintf(tmp, pl, "%s/%s.db.%d.tmp", dir, f.name, (int)getpid());

	bool cached = false;
	if (cache_sealed(s, final, o->kit) && index_open(final, &s->ix, NULL) == 0 && index_matches(s->ix, &f)) {
		/* An expired kit is refused; a cached index that fails its own
		 * checks is only a cache: built again, as if it were absent. */
		struct stella_err ce = { 0 };
		r = open_cached(s, o, final, &ce);
		if (r == -EKEYEXPIRED) {
			if (e)
				*e = ce;
			goto fail;
		}
		if (r < 0) {
			stella_log(LOG_WARNING, "%s: cached index not usable, building it again: %s", o->kit,
				   stella_err_text(&ce, r));
			manifest_free(s->identity);
			s->identity = NULL;
		}
		cached = r == 0;
	}
	if (!cached) {
		if (s->ix) {
			index_close(s->ix);
			s->ix = NULL;
		}
		seal_free(s->seal);
		s->seal = NULL;
		/* kit format 1.1: the head only; a v1 kit: the walk */
		r = carried_index(s, o, tmp, final, !own_tmpdir, &f, e);
		if (r == 1)
			r = build_index(s, o, tmp, final, !own_tmpdir, &f, e);
		if (r < 0)
			goto fail;
		if ((r = index_open(final, &s->ix, e)) < 0 || (r = load_identity(s, e)) < 0)
			goto fail;
		if (s->carried && (r = install_points(s, final, e)) < 0)
			goto fail;
	}
	if (own_tmpdir) {
		/* Connections open the file by name as reads need them (and
		 * again after the budget closed one): it stays until the last
		 * unref. */
		s->tmp_index = final;
		final = NULL;
		own_tmpdir = false;
	}
	if (!(s->version = strdup(s->identity->version))) {
		r = -ENOMEM;
		goto fail;
	}
	free(final);
	free(tmp);
	*out = s;
	return 0;
fail:
	if (own_tmpdir) {
		if (final)
			unlink(final);
		rmdir(tmpdir);
	}
	free(final);
	free(tmp);
	snapshot_unref(s);
	return r;
}


int snapshot_open_store(const char *index_path, int blob_dirfd, int tree_dirfd, const char *label,
			struct snapshot **out, struct stella_err *e)
{
	struct snapshot *s = calloc(1, sizeof(*s));
	int r;
	if (!s)
		return -ENOMEM;
	atomic_init(&s->refs, 1);
	atomic_init(&s->open_files, 0);
	s->blobs.fd = s->trees.fd = -1;
	if (!(s->kit_path = strdup(label)) || !(s->files_map = calloc(1, sizeof(*s->files_map)))) {
		r = -ENOMEM;
		goto fail;
	}
	pthread_mutex_init(&s->files_map->lock, NULL);
	/* Borrowed, not duplicated: two descriptors per snapshot added up
	 * with the store's history. */
	if ((r = fdcache_dir_init(&s->blobs, blob_dirfd)) < 0 || (r = fdcache_dir_init(&s->trees, tree_dirfd)) < 0) {
		r = stella_fail_errno(e, r, "%s: blobs", label);
		goto fail;
	}
	if ((r = index_open(index_path, &s->ix, e)) < 0 || (r = load_identity(s, e)) < 0)
		goto fail;
	/* Every store index has it (store.c writes it), and the daemon tells
	 * a re-imported version from the old one by it. */
	char *v = NULL;
	if (index_get_meta(s->ix, "manifestSha256", &v, NULL) < 0 || hex_decode(v, s->manifest_sha256, 32) < 0) {
		free(v);
		r = stella_fail(e, -EIO, "%s: index without a valid manifestSha256", label);
		goto fail;
	}
	free(v);
	if (!(s->version = strdup(s->identity->version))) {
		r = -ENOMEM;
		goto fail;
	}
	s->index_cached = true;
	*out = s;
	return 0;
fail:
	snapshot_unref(s);
	return r;
}

struct snapshot *snapshot_ref(struct snapshot *s)
{
	atomic_fetch_add(&s->refs, 1);
	return s;
}

void snapshot_unref(struct snapshot *s)
{
	if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	index_close(s->ix);
	seal_free(s->seal);
	source_close(s->src);
	manifest_free(s->identity);
	if (s->files_map) {
		pthread_mutex_destroy(&s->files_map->lock);
		free(s->files_map);
	}
	if (s->tmp_index) {
		unlink(s->tmp_index);
		char *slash = strrchr(s->tmp_index, '/');
		if (slash) {
			*slash = 0;
			rmdir(s->tmp_index);
		}
		free(s->tmp_index);
	}
	free(s->version);
	free(s->kit_path);
	free(s);
}

/* ---- entries ---- */

/* An index that fails a query may be one changed on disk: its seal says. */
static int index_said(struct snapshot *s, int r)
{
	if (r == -EIO)
		index_damaged(s);
	return r;
}

int snapshot_getattr(struct snapshot *s, uint64_t ino, struct index_node *n)
{
	return index_said(s, index_get(s->ix, ino, n));
}

int snapshot_lookup(struct snapshot *s, uint64_t parent, const char *name, struct index_node *n)
{
	return index_said(s, index_lookup(s->ix, parent, name, n));
}

int snapshot_lookup_path(struct snapshot *s, const char *path, struct index_node *n)
{
	return index_said(s, index_lookup_path(s->ix, path, n));
}

int snapshot_readdir(struct snapshot *s, uint64_t dir, uint64_t after,
		     int (*cb)(void *ctx, const struct index_node *n), void *ctx)
{
	return index_said(s, index_readdir(s->ix, dir, after, cb, ctx));
}

char *snapshot_path(struct snapshot *s, uint64_t ino)
{
	char *path = strdup("");
	struct index_node *n = malloc(sizeof(*n));
	for (unsigned depth = 0; path && n && ino != INDEX_ROOT_INO && depth < STELLA_DEPTH_MAX + 1; depth++) {
		if (index_get(s->ix, ino, n) < 0)
			break;
		size_t l = strlen(n->name) + strlen(path) + 2;
		char *p = malloc(l);
		if (p)
			snprintf(p, l, "%s%s%s", n->name, *path ? "/" : "", path);
		free(path);
		path = p;
		ino = n->parent;
	}
	free(n);
	return path;
}

/* ---- verified reads ---- */

static void file_free(struct snap_file *f);

static struct snap_file *file_new(struct snapshot *s, const struct index_node *n, struct stella_err *e, int *rc)
{
	struct snap_file *f = calloc(1, sizeof(*f));
	if (!f) {
		*rc = -ENOMEM;
		return NULL;
	}
	f->s = s;
	f->ino = n->ino;
	f->refs = 1;
	f->size = n->size;
	f->data_off = n->data_off + s->data_base;
	f->tree_off = n->tree_off >= 0 ? n->tree_off + (int64_t)s->tree_base : -1;
	memcpy(f->fsverity, n->fsverity, 32);
	pthread_mutex_init(&f->lock, NULL);
	*rc = 0;
	/* The index is a file we read back: a node's extent must lie in the
	 * kit's stream (direct mode) or match its blob (store mode) before
	 * anything is sized after it. */
	if (s->src) {
		uint64_t total = source_stream_size(s->src);
		if (n->data_off > UINT64_MAX - s->data_base || n->size > total || f->data_off > total - n->size)
			*rc = stella_fail(e, -EIO, "index: inode %llu lies outside the kit", (unsigned long long)n->ino);
	}
	if (*rc == 0 && s->blobs.fd >= 0 && n->size > 0) {
		struct stat st;
		uint32_t pin;
		f->blob = true;
		fdcache_digest_name(n->sha256, f->blob_name);
		int fd = fdcache_get(&s->blobs, f->blob_name, &f->blob_hint, &pin);
		if (fd < 0 || fstat(fd, &st) < 0)
			*rc = stella_fail_errno(e, fd < 0 ? fd : -errno, "blob %s", f->blob_name);
		else if ((uint64_t)st.st_size != n->size)
			*rc = stella_fail(e, -EIO, "blob %s: %llu bytes, the index says %llu", f->blob_name,
					  (unsigned long long)st.st_size, (unsigned long long)n->size);
		if (fd >= 0)
			fdcache_put(pin);
	}
	if (*rc < 0) {
		file_free(f);
		return NULL;
	}
	merkle_geom_init(&f->g, n->size);
	if (f->g.levels) {
		/* calloc of a large tree maps zero pages: only the blocks we
		 * fetch cost memory. */
		f->tree = calloc(1, merkle_tree_size(&f->g));
		f->tree_ok = calloc(1, f->g.tree_blocks);
		if (!f->tree || !f->tree_ok) {
			*rc = -ENOMEM;
		} else if (s->trees.fd >= 0) {
			uint32_t pin;
			f->tree_file = true;
			fdcache_digest_name(f->fsverity, f->tree_name);
			int fd = fdcache_get(&s->trees, f->tree_name, &f->tree_hint, &pin);
			if (fd < 0)
				*rc = stella_fail_errno(e, fd, "tree %s", f->tree_name);
			else
				fdcache_put(pin);
		} else if (f->tree_off < 0) {
			uint8_t *t = NULL;
			size_t len = 0;
			int r = index_get_tree(s->ix, f->fsverity, &t, &len);
			if (r < 0 || len != merkle_tree_size(&f->g)) {
				*rc = stella_fail(e, -EIO, "index has no tree for inode %llu", (unsigned long long)n->ino);
			} else {
				memcpy(f->tree, t, len);
				f->tree_loaded = true;
			}
			free(t);
		}
	}
	if (*rc < 0) {
		file_free(f);
		return NULL;
	}
	return f;
}

static void file_free(struct snap_file *f)
{
	free(f->tree);
	free(f->tree_ok);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

/* What each open file holds of its snapshot: a reference, and a count in
 * open_files (which remove and gc read as "in use"). */
static void hold_for_file(struct snapshot *s)
{
	snapshot_ref(s);
	atomic_fetch_add(&s->open_files, 1);
}

static void let_go_for_file(struct snapshot *s)
{
	atomic_fetch_sub(&s->open_files, 1);
	snapshot_unref(s);
}

int snapshot_file_open(struct snapshot *s, uint64_t ino, struct snap_file **out, struct stella_err *e)
{
	struct snap_files *m = s->files_map;
	size_t b = ino % NBUCKETS;
	pthread_mutex_lock(&m->lock);
	for (struct snap_file *f = m->bucket[b]; f; f = f->next)
		if (f->ino == ino) {
			f->refs++;
			pthread_mutex_unlock(&m->lock);
			hold_for_file(s);
			*out = f;
			return 0;
		}
	pthread_mutex_unlock(&m->lock);

	struct index_node *n = malloc(sizeof(*n));
	if (!n)
		return -ENOMEM;
	int r = index_get(s->ix, ino, n);
	if (r == 0 && n->type != ARTIFACT_FILE)
		r = -EISDIR;
	struct snap_file *f = r == 0 ? file_new(s, n, e, &r) : NULL;
	free(n);
	if (!f)
		return index_said(s, r);
	f->shared = true;

	pthread_mutex_lock(&m->lock);
	for (struct snap_file *g = m->bucket[b]; g; g = g->next)
		if (g->ino == ino) { /* another thread opened it meanwhile */
			g->refs++;
			pthread_mutex_unlock(&m->lock);
			file_free(f);
			hold_for_file(s);
			*out = g;
			return 0;
		}
	f->next = m->bucket[b];
	m->bucket[b] = f;
	pthread_mutex_unlock(&m->lock);
	hold_for_file(s);
	*out = f;
	return 0;
}

void snapshot_file_close(struct snap_file *f)
{
	if (!f)
		return;
	struct snapshot *s = f->s;
	if (f->shared) {
		struct snap_files *m = s->files_map;
		pthread_mutex_lock(&m->lock);
		if (--f->refs > 0) {
			pthread_mutex_unlock(&m->lock);
			let_go_for_file(s);
			return;
		}
		for (struct snap_file **p = &m->bucket[f->ino % NBUCKETS]; *p; p = &(*p)->next)
			if (*p == f) {
				*p = f->next;
				break;
			}
		pthread_mutex_unlock(&m->lock);
		let_go_for_file(s);
	}
	file_free(f);
}

void snapshot_last_failure(struct snapshot *s, char *out, size_t n)
{
	pthread_mutex_lock(&s->files_map->lock);
	snprintf(out, n, "%s", s->last_failure);
	pthread_mutex_unlock(&s->files_map->lock);
}

/* why: NULL for a block that does not match its digest; else what made
 * it unreadable (the medium's error, or a stream that does not decode). */
static void report_failure_why(struct snap_file *f, const char *what, uint64_t block, const char *why)
{
	struct snapshot *s = f->s;
	/* the row that placed the block was wrong, not the kit */
	if (index_damaged(s))
		return;
	atomic_fetch_add(&s->failures, 1);
	char *path = snapshot_path(s, f->ino);
	pthread_mutex_lock(&s->files_map->lock);
	snprintf(s->last_failure, sizeof(s->last_failure), "%s: %s %llu", path ? path : "?", what,
		 (unsigned long long)block);
	pthread_mutex_unlock(&s->files_map->lock);
	if (why)
		stella_log(LOG_ERR, "integrity failure: %s %s: %s: %s %llu: %s", s->kit_path, s->version,
			   path ? path : "?", what, (unsigned long long)block, why);
	else
		stella_log(LOG_ERR, "integrity failure: %s %s: %s: %s %llu does not match the signed manifest",
			   s->kit_path, s->version, path ? path : "?", what, (unsigned long long)block);
	free(path);
}

static void report_failure(struct snap_file *f, const char *what, uint64_t block)
{
	report_failure_why(f, what, block, NULL);
}

/* Store mode: len bytes at off of the blob or tree file name under d,
 * through a descriptor the fd cache lends for this read only. */
static int store_pread(const struct fdcache_dir *d, const char *name, struct fdcache_hint *hint, void *buf,
		       size_t len, uint64_t off)
{
	uint32_t pin;
	int fd = fdcache_get(d, name, hint, &pin);
	if (fd < 0)
		return fd;
	int r = pread_full(fd, buf, len, off);
	fdcache_put(pin);
	return r;
}

static int read_data(struct snap_file *f, void *buf, size_t len, uint64_t off, struct stella_err *e)
{
	if (f->blob) {
		int r = store_pread(&f->s->blobs, f->blob_name, &f->blob_hint, buf, len, off);
		return r < 0 ? stella_fail_errno(e, r, "%s: blob of inode %llu", f->s->kit_path, (unsigned long long)f->ino) : 0;
	}
	return source_pread(f->s->src, buf, len, f->data_off + off, e);
}

/* A stored tree (merkle.bin, or a store's tree file) that does not check
 * out is damage beside the data, not in it: readers must work without the
 * tree, so build it again from the data and keep it if its root is the
 * signed one.  Returns 0 when the file now has a good tree. */
static int rebuild_tree(struct snap_file *f)
{
	pthread_mutex_lock(&f->lock);
	if (f->tree_loaded) {
		pthread_mutex_unlock(&f->lock);
		return 0;
	}
	/* Once is enough: rebuilding reads and hashes the whole file, and a
	 * damaged kit would otherwise cost that on every read of it. */
	if (f->data_bad) {
		pthread_mutex_unlock(&f->lock);
		return -EIO;
	}
	uint64_t tsize = merkle_tree_size(&f->g);
	uint8_t *tree = calloc(1, tsize), *buf = malloc(1 << 20), first[32] = { 0 };
	int r = tree && buf ? 0 : -ENOMEM;
	struct stella_err e = { 0 };
	for (uint64_t off = 0; r == 0 && off < f->size;) {
		size_t n = (size_t)MIN(f->size - off, (uint64_t)1 << 20);
		if ((r = read_data(f, buf, n, off, &e)) < 0)
			break;
		for (size_t b = 0; b < n; b += MERKLE_BLOCK) {
			uint64_t tb;
			unsigned slot;
			merkle_parent_slot(&f->g, 0, (off + b) / MERKLE_BLOCK, &tb, &slot);
			if ((r = merkle_hash_block(buf + b, MIN((size_t)MERKLE_BLOCK, n - b),
						   tree + tb * MERKLE_BLOCK + slot)) < 0)
				break;
		}
		off += n;
	}
	if (r == 0) {
		uint8_t root[32], d[32];
		if ((r = merkle_build_upper(&f->g, tree, first, root)) == 0 &&
		    (r = merkle_file_digest(f->size, root, d)) == 0 && memcmp(d, f->fsverity, 32)) {
			f->data_bad = true;
			r = -EIO;
		}
	}
	if (r == 0) {
		free(f->tree);
		f->tree = tree;
		tree = NULL;
		memset(f->tree_ok, 1, f->g.tree_blocks);
		f->tree_loaded = true;
	}
	pthread_mutex_unlock(&f->lock);
	char *path = snapshot_path(f->s, f->ino);
	if (r == 0)
		stella_log(LOG_WARNING, "%s %s: %s: its stored Merkle tree is damaged; rebuilt from the data, which is intact",
			   f->s->kit_path, f->s->version, path ? path : "?");
	free(path);
	free(tree);
	free(buf);
	return r;
}

/* Tree block TB as stored (the store's tree file, or merkle.bin in the
 * kit) into BUF. */
static int read_tree_block(struct snap_file *f, uint64_t tb, uint8_t *buf, struct stella_err *e)
{
	if (!f->tree_file)
		return source_pread(f->s->src, buf, MERKLE_BLOCK, (uint64_t)f->tree_off + tb * MERKLE_BLOCK, e);
	int r = store_pread(&f->s->trees, f->tree_name, &f->tree_hint, buf, MERKLE_BLOCK, tb * MERKLE_BLOCK);
	return r < 0 ? stella_fail_errno(e, r, "%s: tree of inode %llu", f->s->kit_path, (unsigned long long)f->ino) : r;
}

/* A stored tree block from a remote kit that failed (bytes that do not
 * decode, or do not check) may be a mirror's fault, as data may: told,
 * like data (remote_retry), true if another mirror may serve it good.
 * Only when none can is the tree rebuilt from the data. */
static bool tree_retry(struct snap_file *f, uint64_t tb, unsigned *tries)
{
	if (f->tree_file || f->tree_loaded || *tries >= REMOTE_MAX_ENDPOINTS ||
	    !source_bytes(f->s->src)->ops->report_bad)
		return false;
	(*tries)++;
	return source_report_bad(f->s->src, (uint64_t)f->tree_off + tb * MERKLE_BLOCK, MERKLE_BLOCK) == 0;
}

/* The tree block holding entries of `level` number idx, checked against its
 * parent (or, for the top block, against the signed digest). */
static int tree_block(struct snap_file *f, unsigned level, uint64_t idx, const uint8_t **out)
{
	uint64_t tb = f->g.level_start[level] + idx;
	pthread_mutex_lock(&f->lock);
	bool ok = f->tree_ok[tb];
	pthread_mutex_unlock(&f->lock);
	if (ok) {
		*out = f->tree + tb * MERKLE_BLOCK;
		return 0;
	}
	uint8_t buf[MERKLE_BLOCK];
	const uint8_t *blk = f->tree + tb * MERKLE_BLOCK;
	unsigned tries = 0;
again:
	if (!f->tree_loaded) {
		struct stella_err e = { 0 };
		int r = read_tree_block(f, tb, buf, &e);
		if (r == -ENOMEM || r == -EWOULDBLOCK)
			return r;
		if (r == -REMOTE_EUNSERVED)
			return -EIO; /* no mirror answered in time: no verdict on the tree */
		if (r < 0 && tree_retry(f, tb, &tries))
			goto again;
		if (r < 0) {
			stella_log(LOG_ERR, "%s", stella_err_text(&e, r));
			int rb = rebuild_tree(f);
			if (rb == 0)
				return tree_block(f, level, idx, out);
			return rb == -ENOMEM || rb == -EWOULDBLOCK ? rb : -EIO;
		}
		blk = buf;
	}
	/* A digest that could not be computed is no verdict on the tree:
	 * the read fails, nothing is reported as damaged. */
	uint8_t h[32];
	int hr = sha256_once(blk, MERKLE_BLOCK, h);
	if (hr < 0)
		return hr;
	bool good;
	if (level + 1 == f->g.levels) {
		uint8_t d[32];
		if ((hr = merkle_file_digest(f->size, h, d)) < 0)
			return hr;
		good = !memcmp(d, f->fsverity, 32);
	} else {
		const uint8_t *parent;
		int r = tree_block(f, level + 1, idx / MERKLE_PER_BLOCK, &parent);
		if (r < 0)
			return r;
		good = !memcmp(h, parent + (idx % MERKLE_PER_BLOCK) * MERKLE_HASH, 32);
	}
	if (!good && tree_retry(f, tb, &tries))
		goto again;
	if (!good) {
		int rb = f->tree_loaded ? -EIO : rebuild_tree(f);
		if (rb == 0)
			return tree_block(f, level, idx, out);
		if (rb == -ENOMEM || rb == -EWOULDBLOCK)
			return rb; /* no verdict: the rebuild could not run (now) */
		/* the data itself does not give the signed root */
		report_failure(f, level + 1 == f->g.levels ? "Merkle tree top block" : "Merkle tree block", tb);
		return -EIO;
	}
	pthread_mutex_lock(&f->lock);
	if (!f->tree_ok[tb]) {
		if (blk != f->tree + tb * MERKLE_BLOCK)
			memcpy(f->tree + tb * MERKLE_BLOCK, blk, MERKLE_BLOCK);
		f->tree_ok[tb] = 1;
	}
	pthread_mutex_unlock(&f->lock);
	*out = f->tree + tb * MERKLE_BLOCK;
	return 0;
}

/* pre: the block's SHA-256 if the source computed it on the way (a whole
 * block only: a short one is hashed zero-padded), else NULL.  QUIET: a
 * mismatch is -EBADMSG, not reported (the caller may get the bytes again
 * from another mirror first). */
static int check_block(struct snap_file *f, uint64_t b, const uint8_t *data, size_t len, const uint8_t *pre,
		       bool quiet)
{
	uint8_t h[32];
	int r = 0;
	if (pre && len == MERKLE_BLOCK)
		memcpy(h, pre, 32);
	else
		r = merkle_hash_block(data, len, h);
	if (r < 0)
		return r;  /* no digest, no verdict: a failed read, not a mismatch */
	if (f->g.levels == 0) {
		uint8_t d[32];
		if ((r = merkle_file_digest(f->size, h, d)) < 0)
			return r;
		if (memcmp(d, f->fsverity, 32)) {
			if (quiet)
				return -EBADMSG;
			report_failure(f, "block", b);
			return -EIO;
		}
		return 0;
	}
	const uint8_t *leaf;
	r = tree_block(f, 0, b / MERKLE_PER_BLOCK, &leaf);
	if (r < 0)
		return r;
	if (memcmp(h, leaf + (b % MERKLE_PER_BLOCK) * MERKLE_HASH, 32)) {
		if (quiet)
			return -EBADMSG;
		report_failure(f, "block", b);
		return -EIO;
	}
	return 0;
}

/* Bytes that can say where else to get them (remote.h's, through
 * bytes_report_bad), and still somewhere to try. */
static bool can_report(struct snap_file *f, unsigned tries)
{
	return !f->blob && tries < REMOTE_MAX_ENDPOINTS && source_bytes(f->s->src)->ops->report_bad;
}

/* Direct mode on a remote kit (remote.h): bytes that failed verification
 * may have been a mirror's fault.  Report them; true if another mirror may
 * serve good ones, so the read is tried again (at most once per mirror). */
static bool remote_retry(struct snap_file *f, uint64_t start, size_t rlen, unsigned *tries)
{
	if (!can_report(f, *tries))
		return false;
	(*tries)++;
	return source_report_bad(f->s->src, f->data_off + start, rlen) == 0;
}

ssize_t snapshot_read(struct snap_file *f, void *buf, size_t len, uint64_t off)
{
	if (off >= f->size || len == 0)
		return 0;
	len = (size_t)MIN((uint64_t)len, f->size - off);
	uint64_t b0 = off / MERKLE_BLOCK, b1 = (off + len - 1) / MERKLE_BLOCK;
	uint64_t start = b0 * MERKLE_BLOCK, end = MIN(f->size, (b1 + 1) * MERKLE_BLOCK);
	size_t rlen = (size_t)(end - start);
	/* A request of whole blocks (the kernel's page-cache reads all are)
	 * is read and checked in the caller's buffer: no second copy.  On a
	 * failure the caller sends only the error, never the buffer. */
	bool direct = start == off && rlen == len;
	uint8_t *tmp = direct ? buf : thread_scratch(SCRATCH_SNAPSHOT, rlen);
	if (!tmp)
		return -ENOMEM;
	struct stella_err e = { 0 };
	/* Digests of whole blocks the source hashed as it decoded them
	 * (core/frames.h), of the very bytes it put in tmp: the check below
	 * compares them instead of hashing again. */
	struct source_digests dg;
	int r;
	unsigned tries = 0;
again:
	if (f->blob) {
		/* Store mode: the blob is on a disk we do not trust either. */
		r = store_pread(&f->s->blobs, f->blob_name, &f->blob_hint, tmp, rlen, start);
		if (r < 0)
			stella_fail_errno(&e, r, "%s: blob of inode %llu", f->s->kit_path, (unsigned long long)f->ino);
	} else {
		r = source_pread_digests(f->s->src, tmp, rlen, f->data_off + start, &dg, &e);
	}
	if (r == -ENOMEM || r == -EWOULDBLOCK)
		return r; /* ours, or not now (remote_local_only): no verdict on the data */
	if (r == -REMOTE_EUNSERVED)
		return -EIO; /* no mirror answered in time: their state says so, not integrity */
	if (r < 0 && remote_retry(f, start, rlen, &tries)) {
		e = (struct stella_err){ 0 };
		goto again;   /* a compressed stream from a mirror that does not decode */
	}
	if (r < 0) {
		/* The medium failed us, or a compressed stream does not decode:
		 * for the reader the same as a block that does not match, and
		 * health must say so; the log says which it was. */
		report_failure_why(f, "unreadable data at block", b0, stella_err_text(&e, r));
		return -EIO;
	}
	/* All or nothing: a short read would tell the kernel the file ends
	 * there, and a reader would see a truncated file instead of an error.
	 * The kernel retries what it needs page by page, so the good blocks
	 * before a bad one stay readable. */
	for (uint64_t b = b0; b <= b1; b++) {
		size_t boff = (size_t)((b - b0) * MERKLE_BLOCK);
		size_t k = (size_t)(b - b0);
		const uint8_t *pre = !f->blob && k < SOURCE_DIGESTS && dg.have[k] ? dg.sha256[k] : NULL;
		int cr = check_block(f, b, tmp + boff, MIN((size_t)MERKLE_BLOCK, rlen - boff), pre,
				     can_report(f, tries));
		/* only the block that failed: its neighbours stay the mirror's */
		if (cr == -EBADMSG && remote_retry(f, start + (b - b0) * MERKLE_BLOCK,
						   MIN((size_t)MERKLE_BLOCK, rlen - boff), &tries))
			goto again;
		if (cr == -EBADMSG)
			report_failure(f, "block", b);
		if (cr < 0)
			return cr == -ENOMEM || cr == -EWOULDBLOCK ? cr : -EIO;
	}
	if (!direct)
		memcpy(buf, tmp + (off - start), len);
	if (f->shared)
		atomic_fetch_add(&f->s->verified_bytes, len);
	return (ssize_t)len;
}

/* snapshot_read without copying the bytes: straight from a decoded zstd
 * span (core/frames.h), checked block by block there exactly as
 * snapshot_read checks them in its buffer.  Only for local kits in direct
 * mode: a store blob has no spans, and bytes from mirrors may be read
 * again elsewhere after a failure (remote_retry), which snapshot_read
 * does.  The tree leaves the check needs are loaded before the span is
 * pinned: loading them reads the kit through the same few slots. */
int snapshot_read_pinned(struct snap_file *f, size_t len, uint64_t off, const void **out, size_t *n,
			 struct snap_pin *pin)
{
	if (off >= f->size || len == 0 || f->blob || can_report(f, 0))
		return 1;
	len = (size_t)MIN((uint64_t)len, f->size - off);
	uint64_t b0 = off / MERKLE_BLOCK, b1 = (off + len - 1) / MERKLE_BLOCK;
	uint64_t start = b0 * MERKLE_BLOCK, end = MIN(f->size, (b1 + 1) * MERKLE_BLOCK);
	size_t rlen = (size_t)(end - start);
	if (f->g.levels > 0) {
		const uint8_t *leaf;
		for (uint64_t t = b0 / MERKLE_PER_BLOCK; t <= b1 / MERKLE_PER_BLOCK; t++)
			if (tree_block(f, 0, t, &leaf) < 0)
				return 1; /* snapshot_read meets it again, and reports it */
	}
	struct source_digests dg;
	const uint8_t *data;
	int r = source_pin(f->s->src, rlen, f->data_off + start, &data, &pin->sp, &dg);
	if (r != 0)
		return r;
	for (uint64_t b = b0; b <= b1; b++) {
		size_t boff = (size_t)((b - b0) * MERKLE_BLOCK), k = (size_t)(b - b0);
		const uint8_t *pre = k < SOURCE_DIGESTS && dg.have[k] ? dg.sha256[k] : NULL;
		int cr = check_block(f, b, data + boff, MIN((size_t)MERKLE_BLOCK, rlen - boff), pre, false);
		if (cr < 0) {
			source_unpin(&pin->sp);
			return cr == -ENOMEM ? cr : -EIO; /* a mismatch is reported by check_block */
		}
	}
	if (f->shared)
		atomic_fetch_add(&f->s->verified_bytes, len);
	/* The reply may let the reader close the file before this thread
	 * unpins: the pin holds the snapshot, and with it the span. */
	pin->s = snapshot_ref(f->s);
	*out = data + (off - start);
	*n = len;
	return 0;
}

void snapshot_unpin(struct snap_pin *pin)
{
	source_unpin(&pin->sp);
	snapshot_unref(pin->s);
	pin->s = NULL;
}

/* ---- verify all ---- */

struct walkstate {
	uint64_t *dirs;
	size_t ndirs, cap;
	uint64_t *files;
	size_t nfiles, fcap;
	int err;
};

static int push(uint64_t **v, size_t *n, size_t *cap, uint64_t x)
{
	if (*n == *cap) {
		size_t c = *cap ? 2 * *cap : 64;
		uint64_t *p = realloc(*v, c * sizeof(*p));
		if (!p)
			return -ENOMEM;
		*v = p;
		*cap = c;
	}
	(*v)[(*n)++] = x;
	return 0;
}

static int collect(void *ctx, const struct index_node *n)
{
	struct walkstate *w = ctx;
	if (n->type == ARTIFACT_DIR)
		w->err = push(&w->dirs, &w->ndirs, &w->cap, n->ino);
	else if (n->type == ARTIFACT_FILE)
		w->err = push(&w->files, &w->nfiles, &w->fcap, n->ino);
	return w->err != 0;
}

int snapshot_verify_all(struct snapshot *s, uint64_t *files, uint64_t *bytes, struct stella_err *e)
{
	struct walkstate w = { 0 };
	int r = push(&w.dirs, &w.ndirs, &w.cap, INDEX_ROOT_INO);
	/* Directories depth-first; files checked as each directory is listed. */
	uint8_t *buf = malloc(1 << 20);
	*files = *bytes = 0;
	if (!buf)
		r = -ENOMEM;
	while (r == 0 && w.ndirs > 0) {
		uint64_t dir = w.dirs[--w.ndirs];
		w.nfiles = 0;
		if ((r = index_readdir(s->ix, dir, 0, collect, &w)) < 0 || (r = w.err) < 0)
			break;
		for (size_t i = 0; i < w.nfiles && r == 0; i++) {
			struct index_node *n = malloc(sizeof(*n));
			struct snap_file *f = NULL;
			if (!n || (r = index_get(s->ix, w.files[i], n)) < 0) {
				r = n ? r : -ENOMEM;
				free(n);
				break;
			}
			/* A private state: every tree block is fetched and
			 * checked again, not taken from an open file's cache. */
			f = file_new(s, n, e, &r);
			free(n);
			if (!f)
				break;
			for (uint64_t off = 0; off < f->size && r == 0;) {
				ssize_t got = snapshot_read(f, buf, 1 << 20, off);
				if (got == -ENOMEM) {
					r = stella_fail_errno(e, -ENOMEM, "verify");
					break;
				}
				if (got <= 0) {
					/* name the first bad block of the chunk */
					uint64_t bad = off;
					while (bad < f->size && snapshot_read(f, buf, MERKLE_BLOCK, bad) > 0)
						bad += MERKLE_BLOCK;
					char *p = snapshot_path(s, f->ino);
					r = stella_fail(e, -EIO, "%s: block %llu does not match the signed manifest",
							p ? p : "?", (unsigned long long)(bad / MERKLE_BLOCK));
					free(p);
					break;
				}
				off += (uint64_t)got;
				*bytes += (uint64_t)got;
			}
			file_free(f);
			(*files)++;
		}
	}
	free(buf);
	free(w.dirs);
	free(w.files);
	return r;
}

ssize_t snapshot_read_local(struct snap_file *f, void *buf, size_t len, uint64_t off)
{
	remote_local_only(true);
	ssize_t n = snapshot_read(f, buf, len, off);
	remote_local_only(false);
	return n;
}

ssize_t snapshot_read_by(struct snap_file *f, void *buf, size_t len, uint64_t off, int64_t deadline_ms)
{
	remote_read_deadline(deadline_ms);
	ssize_t n = snapshot_read(f, buf, len, off);
	remote_read_deadline(0);
	return n;
}

bool snapshot_read_resident(struct snap_file *f, size_t len, uint64_t off)
{
	if (f->blob || off >= f->size || len == 0)
		return true;
	len = (size_t)MIN((uint64_t)len, f->size - off);
	uint64_t start = off / MERKLE_BLOCK * MERKLE_BLOCK;
	uint64_t end = MIN(f->size, (off + len - 1) / MERKLE_BLOCK * MERKLE_BLOCK + MERKLE_BLOCK);
	if (!source_resident(f->s->src, f->data_off + start, end - start))
		return false;
	/* the whole tree, not just the blocks of this read: simpler, and it
	 * sits in the pinned head */
	if (!f->tree_loaded && !f->tree_file && f->tree_off >= 0)
		return source_resident(f->s->src, (uint64_t)f->tree_off, merkle_tree_size(&f->g));
	return true;
}

void snapshot_prefetch(struct snap_file *f, size_t len, uint64_t off)
{
	if (f->blob || off >= f->size || len == 0)
		return;
	struct bytes *b = source_bytes(f->s->src);
	if (!bytes_is_remote(b) || source_compression(f->s->src) != KIT_COMPRESS_NONE)
		return;
	remote_hint_end(b, f->data_off + off, f->data_off + f->size);
	if (f->tree_loaded || f->tree_file || f->tree_off < 0 || f->g.levels == 0)
		return;
	uint64_t i0 = off / MERKLE_BLOCK, i1 = (MIN(f->size, off + len) - 1) / MERKLE_BLOCK;
	/* tree_block's path: at each level the blocks holding the hashes of
	 * the level below, up to the top block */
	for (unsigned level = 0; level < f->g.levels; level++) {
		i0 /= MERKLE_PER_BLOCK;
		i1 /= MERKLE_PER_BLOCK;
		uint64_t tb0 = f->g.level_start[level] + i0, tb1 = f->g.level_start[level] + i1;
		pthread_mutex_lock(&f->lock);
		bool ok = true;
		for (uint64_t tb = tb0; ok && tb <= tb1; tb++)
			ok = f->tree_ok[tb];
		pthread_mutex_unlock(&f->lock);
		if (!ok)
			remote_prefetch(b, (uint64_t)f->tree_off + tb0 * MERKLE_BLOCK, (tb1 - tb0 + 1) * MERKLE_BLOCK);
	}
}
