#include "kitverify.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>
#include <string.h>
#include <openssl/evp.h>

#include "hasher.h"
#include "mapview.h"
#include "kitindex.h"
#include "bounds.h"
#include "merklefile.h"
#include "path.h"
#include "util.h"

struct walk {
	const char *path;
	const struct kitverify_opts *o;
	struct kitverify_result *res;
	struct kitread *kr;
	struct hasher *hasher;
	uint64_t total_bytes;
	char *manifest_json;          /* the signed bytes, until the signature is checked */
	size_t manifest_len;
	/* o->stream: the manifest is spooled to an unlinked file (mfd) while
	 * its SHA-256 is taken, and parsed from there as a stream, as often as
	 * a pass needs its artifacts; res->manifest keeps only the top level */
	int mfd;
	bool streamed;
	uint64_t bound_sum;           /* stream_bound's share of the artifacts */
	/* the artifacts, pulled beside the members (both sorted by name) */
	struct manifest_cursor *cur;
	struct manifest_walk mw;
	struct artifact_iter it;
	const struct artifact *peek;  /* the next artifact no member matched yet */
	size_t peek_i;
	char *missing;                /* the first listed artifact with no member */
	FILE *doff;                   /* per artifact, in order: its member's data offset (0: none) */
	struct stella_err ce;         /* the cursor's message */
	uint64_t merkle_size;
	/* kit format 1.1: the carried index, copied out of the kit to be
	 * checked after the walk against the manifest and the members */
	char *index_path;
	uint64_t head_end;            /* tar offset where the body starts */
};

/* A fresh pass over the artifacts, from the first. */
static int iter_open(struct walk *w, struct stella_err *e)
{
	manifest_cursor_free(w->cur);
	w->cur = NULL;
	if (!w->streamed) {
		w->mw = (struct manifest_walk){ .m = w->res->manifest };
		w->it = (struct artifact_iter){ manifest_walk_next, &w->mw };
		return 0;
	}
	int r = manifest_cursor_open_fd(w->mfd, &w->cur, &w->ce);
	if (r < 0)
		return stella_fail(e, r, "%s: %s", w->path, stella_err_text(&w->ce, r));
	w->it = (struct artifact_iter){ manifest_cursor_next, w->cur };
	return r;
}

static int iter_next(struct walk *w, const struct artifact **a, struct stella_err *e)
{
	memset(&w->ce, 0, sizeof(w->ce));
	int r = w->it.next(w->it.ctx, a, &w->ce);
	if (r < 0)
		return stella_fail(e, r, "%s: %s", w->path, stella_err_text(&w->ce, r));
	return r;
}

/* The signature check and the manifest's digest run on a second thread
 * while this one parses: on a large manifest, hashing (SHA-256 for the
 * digest, SHA-512 inside Ed25519) costs about as much as the parse. */
struct sig_job {
	struct walk *w;
	bool mapped;
	const char *sig;
	size_t siglen;
	int rc;
	struct stella_err e;
};

/* The signature checked over the spooled manifest mapped and trimmed
 * behind the checker (mapview.h): Ed25519 cannot verify a message in
 * pieces, and a 300 MB manifest must not count 300 MB in our RSS. */
static int sig_check_mapped(struct walk *w, struct sig_job *j)
{
	struct mapview v;
	int r = mapview_open(w->mfd, w->manifest_len, &v);
	if (r < 0)
		return stella_fail_errno(&j->e, r, "manifest: mapping it");
	r = sig_check(w->o->trust, w->o->threshold, v.size ? v.base : (const uint8_t *)"", v.size, j->sig, j->siglen,
		      &w->res->signers, &j->e);
	mapview_close(&v);
	return r;
}

static void *sig_thread(void *arg)
{
	struct sig_job *j = arg;
	struct walk *w = j->w;
	int r = j->mapped ? 0 : sha256_once(w->manifest_json, w->manifest_len, w->res->manifest_sha256);
	if (r < 0)
		j->rc = stella_fail_errno(&j->e, r, "manifest: SHA-256");
	else if (w->o->trust && j->mapped)
		j->rc = sig_check_mapped(w, j);
	else if (w->o->trust)
		j->rc = sig_check(w->o->trust, w->o->threshold, (const uint8_t *)w->manifest_json, w->manifest_len,
				  j->sig, j->siglen, &w->res->signers, &j->e);
	return NULL;
}

/* The manifest member into an unlinked temporary file, hashed on the way. */
static int spool_manifest(struct walk *w, const struct kit_member *m, struct stella_err *e)
{
	if (m->size > STELLA_MANIFEST_MAX)
		return stella_fail(e, -EBADMSG, "%s: member \"%s\" too large (%llu bytes, limit %zu)", w->path, m->name,
				   (unsigned long long)m->size, (size_t)STELLA_MANIFEST_MAX);
	const char *dir = getenv("TMPDIR");
	dir = dir && *dir ? dir : "/tmp";
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		char p[4200];
		snprintf(p, sizeof(p), "%s/stellakit-manifest.XXXXXX", dir);
		if ((fd = mkostemp(p, O_CLOEXEC)) >= 0)
			unlink(p);
	}
	if (fd < 0)
		return stella_fail_errno(e, -errno, "%s: temporary file for the manifest", w->path);
	w->mfd = fd;
	w->streamed = true;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	_cleanup_(freep) uint8_t *buf = malloc(MANIFEST_STREAM_CHUNK);
	int r = ctx && buf && EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) ? 0 : -ENOMEM;
	for (uint64_t left = m->size; r == 0 && left > 0;) {
		ssize_t n = kitread_data(w->kr, buf, MIN(left, (uint64_t)MANIFEST_STREAM_CHUNK), e);
		if (n <= 0) {
			r = n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: member \"%s\": truncated archive", w->path, m->name);
			break;
		}
		if (!EVP_DigestUpdate(ctx, buf, (size_t)n))
			r = -ENOMEM;
		else if ((r = write_full(fd, buf, (size_t)n)) < 0)
			r = stella_fail_errno(e, r, "%s: temporary file for the manifest", w->path);
		left -= (uint64_t)n;
	}
	if (r == 0 && !EVP_DigestFinal_ex(ctx, w->res->manifest_sha256, NULL))
		r = -ENOMEM;
	EVP_MD_CTX_free(ctx);
	w->manifest_len = m->size;
	return r;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

/* One artifact's share of the stream bound (see stream_bound). */
static void add_bound(struct walk *w, const struct artifact *a)
{
	uint64_t sz = a->size;
	w->bound_sum = sat_add(w->bound_sum, 16u << 10);
	w->bound_sum = sat_add(w->bound_sum, sat_add(sz, 511) & ~(uint64_t)511);
	w->bound_sum = sat_add(w->bound_sum, sz / 64);
	if (a->type == ARTIFACT_FILE)
		w->total_bytes += sz;
}

static int on_checked(void *ctx, size_t i, const struct artifact *a, struct stella_err *e)
{
	(void)i, (void)e;
	add_bound(ctx, a);
	return 0;
}

/* The spooled manifest through the streaming parser: every rule, the
 * sums the walk needs, nothing kept.  A valid manifest whose artifacts
 * are not sorted (not what a packer writes) is parsed whole instead. */
static int parse_spooled(struct walk *w, struct stella_err *e)
{
	bool unsorted = false;
	w->bound_sum = 0;
	w->total_bytes = 0;
	int r = manifest_stream_fd(w->mfd, on_checked, w, &w->res->manifest, &unsorted, e);
	if (r != -EDOM || !unsorted)
		return r;
	w->bound_sum = 0;
	w->total_bytes = 0;
	_cleanup_(freep) char *buf = malloc(w->manifest_len + 1);
	if (!buf)
		return -ENOMEM;
	for (size_t got = 0; got < w->manifest_len;) {
		ssize_t n = pread(w->mfd, buf + got, w->manifest_len - got, (off_t)got);
		if (n <= 0)
			return n < 0 ? stella_fail_errno(e, -errno, "manifest: reading it back") : -EIO;
		got += (size_t)n;
	}
	if ((r = manifest_parse(buf, w->manifest_len, &w->res->manifest, e)) < 0)
		return r;
	w->streamed = false;
	for (size_t i = 0; i < w->res->manifest->nartifacts; i++)
		add_bound(w, &w->res->manifest->artifacts[i]);
	return 0;
}

/* The signature member: it must follow the manifest. */
static int read_sig(struct walk *w, char **sig, size_t *len, struct stella_err *e)
{
	struct kit_member m;
	int r = kitread_next(w->kr, &m, e);
	if (r == 0)
		return stella_fail(e, -EBADMSG, "%s: no signature member (%s) after the manifest", w->path,
				   KIT_SIG_NAME);
	if (r < 0)
		return r;
	if (strcmp(m.name, KIT_SIG_NAME) || m.type != ARTIFACT_FILE)
		return stella_fail(e, -EBADMSG, "%s: second member is \"%.300s\", the signature member %s must follow the manifest",
				   w->path, m.name, KIT_SIG_NAME);
	if ((r = kitread_slurp(w->kr, &m, STELLA_SIG_MAX, sig, e)) < 0)
		return r;
	*len = m.size;
	for (size_t i = 0; i < m.size; i++)
		if ((*sig)[i] == '\n')
			w->res->sig_lines++;
	if (m.size && (*sig)[m.size - 1] != '\n')
		w->res->sig_lines++;
	return 0;
}

/* The manifest member first, its signature member second: both read,
 * then the manifest parsed while the signature is checked.  Errors come
 * in reading order: a malformed manifest before a missing or bad
 * signature. */
static int read_head(struct walk *w, struct stella_err *e)
{
	struct kit_member m;
	int r = kitread_next(w->kr, &m, e);
	if (r == 0)
		return stella_fail(e, -EBADMSG, "%s: empty archive: no manifest", w->path);
	if (r < 0)
		return r;
	if (strcmp(m.name, KIT_MANIFEST_NAME) || m.type != ARTIFACT_FILE)
		return stella_fail(e, -EBADMSG, "%s: first member is \"%.300s\", the manifest (%s) must come first",
				   w->path, m.name, KIT_MANIFEST_NAME);
	if (w->o->stream)
		r = spool_manifest(w, &m, e);
	else if ((r = kitread_slurp(w->kr, &m, STELLA_MANIFEST_MAX, &w->manifest_json, e)) == 0)
		w->manifest_len = m.size;
	if (r < 0)
		return r;

	_cleanup_(freep) char *sig = NULL;
	struct sig_job job = { .w = w, .mapped = w->streamed };
	struct stella_err se = { 0 };
	int rs = read_sig(w, &sig, &job.siglen, &se);
	job.sig = sig;
	pthread_t t;
	bool threaded = false;
	if (rs == 0)
		threaded = pthread_create(&t, NULL, sig_thread, &job) == 0;
	struct stella_err me = { 0 };
	if (w->streamed) {
		r = parse_spooled(w, &me);
	} else if ((r = manifest_parse(w->manifest_json, w->manifest_len, &w->res->manifest, &me)) == 0) {
		for (size_t i = 0; i < w->res->manifest->nartifacts; i++)
			add_bound(w, &w->res->manifest->artifacts[i]);
	}
	if (threaded)
		pthread_join(t, NULL);
	else if (rs == 0)
		sig_thread(&job);
	if (r < 0)
		return stella_fail(e, r, "%s: %s", w->path, stella_err_text(&me, r));
	if (rs < 0)
		return stella_fail(e, rs, "%s", stella_err_text(&se, rs));
	if (job.rc < 0)
		return stella_fail(e, job.rc, "%s: %s", w->path, stella_err_text(&job.e, job.rc));
	if (w->o->stream) {
		w->res->sig = sig;
		w->res->sig_len = job.siglen;
		sig = NULL;
	}
	return 0;
}

static int read_merkle(struct walk *w, struct kit_member *m, struct stella_err *e)
{
	/* Header and index first (bounded by the member's size and the artifact
	 * limit), then each tree is digested as it streams past: memory is the
	 * index, never the trees. */
	uint8_t head[MERKLEFILE_HEADER];
	size_t got = 0;
	if (m->size < MERKLEFILE_HEADER)
		return stella_fail(e, -EBADMSG, "%s: merkle.bin: shorter than its header", w->path);
	while (got < sizeof(head)) {
		ssize_t n = kitread_data(w->kr, head + got, sizeof(head) - got, e);
		if (n <= 0)
			return n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: merkle.bin: truncated archive", w->path);
		got += (size_t)n;
	}
	uint64_t count = 0;
	for (int i = 7; i >= 0; i--)
		count = count << 8 | head[16 + i];
	if (count > STELLA_ARTIFACTS_MAX || MERKLEFILE_HEADER + count * MERKLEFILE_ENTRY > m->size)
		return stella_fail(e, -EBADMSG, "%s: merkle.bin: %llu entries do not fit the member", w->path,
				   (unsigned long long)count);
	size_t ilen = MERKLEFILE_HEADER + count * MERKLEFILE_ENTRY;
	_cleanup_(freep) uint8_t *index = malloc(ilen);
	if (!index)
		return -ENOMEM;
	memcpy(index, head, sizeof(head));
	while (got < ilen) {
		ssize_t n = kitread_data(w->kr, index + got, ilen - got, e);
		if (n <= 0)
			return n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: merkle.bin: truncated archive", w->path);
		got += (size_t)n;
	}
	struct stella_err me = { 0 };
	int r = merklefile_decode_index(index, ilen, m->size, &w->res->merkle, &me);
	if (r < 0)
		return stella_fail(e, r, "%s: %s", w->path, stella_err_text(&me, r));

	/* Which trees belong to a listed file of their size: one pass over the
	 * artifacts, looking each file up among the entries (sorted by digest),
	 * so memory is a bit per entry, not a record per file. */
	_cleanup_(freep) uint8_t *owned = calloc(w->res->merkle.n + 1, 1);
	if (!owned)
		return -ENOMEM;
	const struct artifact *a;
	if ((r = iter_open(w, e)) < 0)
		return r;
	while ((r = iter_next(w, &a, e)) > 0) {
		if (a->type != ARTIFACT_FILE)
			continue;
		const struct merklefile_entry *x = merklefile_find(&w->res->merkle, a->fsverity);
		if (x && x->data_size == a->size)
			owned[x - w->res->merkle.e] = 1;
	}
	if (r < 0)
		return r;

	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	_cleanup_(freep) uint8_t *buf = malloc(1 << 16);
	if (!ctx || !buf) {
		EVP_MD_CTX_free(ctx);
		return -ENOMEM;
	}
	for (size_t i = 0; i < w->res->merkle.n && r == 0; i++) {
		struct merklefile_entry *x = &w->res->merkle.e[i];
		/* An OpenSSL failure is ours (exit 1), not a kit that mismatches. */
		if (!EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL)) {
			r = stella_fail(e, -ENOMEM, "%s: merkle.bin: hashing failed in OpenSSL", w->path);
			break;
		}
		for (uint64_t left = x->size; left > 0;) {
			ssize_t n = kitread_data(w->kr, buf, MIN(left, (uint64_t)1 << 16), e);
			if (n <= 0) {
				r = n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: merkle.bin: truncated archive", w->path);
				break;
			}
			if (!EVP_DigestUpdate(ctx, buf, (size_t)n)) {
				r = stella_fail(e, -ENOMEM, "%s: merkle.bin: hashing failed in OpenSSL", w->path);
				break;
			}
			left -= (uint64_t)n;
		}
		if (r == 0 && !EVP_DigestFinal_ex(ctx, x->tree_sha256, NULL))
			r = stella_fail(e, -ENOMEM, "%s: merkle.bin: hashing failed in OpenSSL", w->path);
		/* Every tree must belong to a listed file of that size. */
		if (r == 0 && !owned[i])
			r = stella_fail(e, -EBADMSG, "%s: merkle.bin: entry %zu is the tree of no listed file", w->path, i);
	}
	EVP_MD_CTX_free(ctx);
	w->res->has_merkle = true;
	return r;
}

static int hash_member(struct walk *w, const struct kit_member *m, const struct artifact *a,
		       struct hasher_result *res_h, struct stella_err *e)
{
	int r = hasher_begin(w->hasher, m->size);
	if (r < 0)
		return r;
	uint64_t left = m->size;
	while (left > 0) {
		uint8_t *buf = hasher_buf(w->hasher);
		size_t want = (size_t)MIN(left, (uint64_t)HASHER_CHUNK), got = 0;
		while (got < want) {
			ssize_t n = kitread_data(w->kr, buf + got, want - got, e);
			if (n < 0) {
				hasher_put(w->hasher, got);
				struct hasher_result dummy;
				hasher_end(w->hasher, &dummy);
				return (int)n;
			}
			if (n == 0)
				break;
			got += (size_t)n;
		}
		hasher_put(w->hasher, got);
		if (w->o->data && got && (r = w->o->data(w->o->visit_ctx, buf, got, e)) < 0) {
			struct hasher_result dummy;
			hasher_end(w->hasher, &dummy);
			return r;
		}
		if (got < want) {
			struct hasher_result dummy;
			hasher_end(w->hasher, &dummy);
			return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": truncated archive", w->path, m->name);
		}
		left -= got;
		w->res->bytes += got;
		if (w->o->progress)
			w->o->progress(w->o->progress_ctx, m->name, w->res->bytes, w->total_bytes);
	}
	struct hasher_result h;
	if ((r = hasher_end(w->hasher, &h)) < 0)
		return stella_fail_errno(e, r, "%s: member \"%.300s\": hashing", w->path, m->name);
	*res_h = h;
	w->res->files++;
	if (memcmp(h.sha256, a->sha256, 32))
		return stella_fail(e, -EUCLEAN, "%s: member \"%.300s\": sha256 mismatch", w->path, m->name);
	if (memcmp(h.fsverity, a->fsverity, 32))
		return stella_fail(e, -EUCLEAN, "%s: member \"%.300s\": fsverity mismatch", w->path, m->name);
	const struct merklefile_entry *x = merklefile_find(&w->res->merkle, a->fsverity);
	if (x) {
		uint8_t t[32];
		int tr = sha256_once(h.tree, merkle_tree_size(&h.geom), t);
		if (tr < 0)
			return stella_fail_errno(e, tr, "%s: member \"%.300s\": hashing", w->path, m->name);
		if (memcmp(t, x->tree_sha256, 32))
			return stella_fail(e, -EUCLEAN, "%s: merkle.bin: tree of \"%.300s\" does not match its content",
					   w->path, m->name);
	}
	return 0;
}

/* Record where artifact's member data is (0: no member), in manifest
 * order, for the carried index's check after the walk. */
static int note_offset(struct walk *w, uint64_t off, struct stella_err *e)
{
	errno = 0;
	if (w->doff && fwrite(&off, sizeof(off), 1, w->doff) != 1)
		return stella_fail_errno(e, errno ? -errno : -EIO, "%s: temporary file for the index check", w->path);
	return 0;
}

/* The next artifact, pulled beside the members. */
static int advance(struct walk *w, struct stella_err *e)
{
	int r = iter_next(w, &w->peek, e);
	if (r == 0)
		w->peek = NULL;
	else if (r > 0)
		w->peek_i++;
	return r < 0 ? r : 0;
}

/* Listed artifacts before NAME (all of them: NULL) have no member: a
 * delta kit leaves them to its base; otherwise the first is reported
 * after the walk, as a member's own failure comes first. */
static int skip_missing(struct walk *w, const char *name, struct stella_err *e)
{
	int r = 0;
	while (r == 0 && w->peek && (!name || path_cmp(w->peek->name, name) < 0)) {
		if (w->res->manifest->has_base)
			w->res->from_base++;
		else if (!w->missing && !(w->missing = strdup(w->peek->name)))
			return -ENOMEM;
		if ((r = note_offset(w, 0, e)) == 0)
			r = advance(w, e);
	}
	return r;
}

/* Members and artifacts are both sorted by name: one merge, no lookup
 * table, nothing per artifact kept. */
static int check_member(struct walk *w, const struct kit_member *m, const char *prev,
			struct stella_err *e)
{
	if (prev) {
		int c = path_cmp(prev, m->name);
		if (c == 0)
			return stella_fail(e, -EBADMSG, "%s: duplicate member \"%.300s\"", w->path, m->name);
		if (c > 0)
			return stella_fail(e, -EBADMSG, "%s: member \"%.300s\" out of order: artifacts must be sorted by name (after \"%.300s\")",
					   w->path, m->name, prev);
	}
	if (!strncmp(m->name, "manifest/", 9) || !strcmp(m->name, "manifest"))
		return stella_fail(e, -EBADMSG, "%s: unexpected member \"%.300s\" (manifest/ holds only the manifest, its signature and merkle.bin, in that order)",
				   w->path, m->name);
	int r = skip_missing(w, m->name, e);
	if (r < 0)
		return r;
	if (!w->peek || strcmp(w->peek->name, m->name))
		return stella_fail(e, -EBADMSG, "%s: unlisted member \"%.300s\"", w->path, m->name);
	const struct artifact *a = w->peek;
	size_t i = w->peek_i - 1;
	if (a->type != m->type)
		return stella_fail(e, -EUCLEAN, "%s: member \"%.300s\": type mismatch (manifest: %s, archive: %s)",
				   w->path, m->name, artifact_type_name(a->type), artifact_type_name(m->type));
	if (a->type == ARTIFACT_SYMLINK) {
		if (strcmp(a->target, m->target))
			return stella_fail(e, -EUCLEAN, "%s: member \"%.300s\": symlink target mismatch (manifest: \"%.300s\", archive: \"%.300s\")",
					   w->path, m->name, a->target, m->target);
		r = w->o->visit ? w->o->visit(w->o->visit_ctx, i, m, NULL, e) : 0;
	} else if (a->mode != m->mode) {
		return stella_fail(e, -EUCLEAN, "%s: member \"%.300s\": mode mismatch (manifest: %04o, archive: %04o)",
				   w->path, m->name, a->mode, m->mode);
	} else if (a->type == ARTIFACT_DIR) {
		r = w->o->visit ? w->o->visit(w->o->visit_ctx, i, m, NULL, e) : 0;
	} else if (a->size != m->size) {
		return stella_fail(e, -EUCLEAN, "%s: member \"%.300s\": size mismatch (manifest: %llu, archive: %llu)",
				   w->path, m->name, (unsigned long long)a->size, (unsigned long long)m->size);
	} else if (w->o->lazy && (a->size <= MERKLE_BLOCK || merklefile_find(&w->res->merkle, a->fsverity))) {
		r = w->o->visit ? w->o->visit(w->o->visit_ctx, i, m, NULL, e) : 0;
	} else {
		struct hasher_result h;
		r = hash_member(w, m, a, &h, e);
		if (r == 0 && w->o->visit)
			r = w->o->visit(w->o->visit_ctx, i, m, &h, e);
	}
	if (r == 0 && (r = note_offset(w, m->data_offset, e)) == 0)
		r = advance(w, e);
	return r;
}

static uint64_t round512(uint64_t x)
{
	return (x + 511) & ~(uint64_t)511;
}

/* The carried index member (it must follow the signature when the
 * manifest binds one), copied to a temporary file while its size and
 * SHA-256 are checked against the manifest's "index". */
static int read_index(struct walk *w, struct stella_err *e)
{
	const struct manifest *mf = w->res->manifest;
	struct kit_member m;
	int r = kitread_next(w->kr, &m, e);
	if (r == 0 || (r > 0 && (strcmp(m.name, KIT_INDEX_NAME) || m.type != ARTIFACT_FILE)))
		return stella_fail(e, -EBADMSG, "%s: the manifest binds an index, but the member after the signature is not %s",
				   w->path, KIT_INDEX_NAME);
	if (r < 0)
		return r;
	r = 0;
	if (m.size != mf->index_size)
		return stella_fail(e, -EUCLEAN, "%s: %s: size mismatch (manifest: %llu, archive: %llu)", w->path,
				   KIT_INDEX_NAME, (unsigned long long)mf->index_size, (unsigned long long)m.size);
	const char *dir = getenv("TMPDIR");
	size_t pl = strlen(dir && *dir ? dir : "/tmp") + 32;
	if (!(w->index_path = malloc(pl)))
		return -ENOMEM;
	snprintf(w->index_path, pl, "%s/stellakit-index.XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkostemp(w->index_path, O_CLOEXEC);
	if (fd < 0) {
		r = stella_fail_errno(e, -errno, "%s: temporary file for the index", w->path);
		free(w->index_path);
		w->index_path = NULL;
		return r;
	}
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	_cleanup_(freep) uint8_t *buf = malloc(1 << 16);
	if (!ctx || !buf || !EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL))
		r = -ENOMEM;
	for (uint64_t left = m.size; r == 0 && left > 0;) {
		ssize_t n = kitread_data(w->kr, buf, MIN(left, (uint64_t)1 << 16), e);
		if (n <= 0) {
			r = n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: %s: truncated archive", w->path, KIT_INDEX_NAME);
			break;
		}
		if (!EVP_DigestUpdate(ctx, buf, (size_t)n))
			r = -ENOMEM;
		else if ((r = write_full(fd, buf, (size_t)n)) < 0)
			r = stella_fail_errno(e, r, "%s: temporary file for the index", w->path);
		left -= (uint64_t)n;
	}
	uint8_t d[32];
	if (r == 0 && !EVP_DigestFinal_ex(ctx, d, NULL))
		r = -ENOMEM;
	EVP_MD_CTX_free(ctx);
	close(fd);
	if (r == 0 && memcmp(d, mf->index_sha256, 32))
		r = stella_fail(e, -EUCLEAN, "%s: %s: sha256 mismatch", w->path, KIT_INDEX_NAME);
	w->head_end = round512(m.data_offset + m.size);
	return r;
}

static int index_offset(void *ctx, size_t i, const struct artifact *a, uint64_t data_off, struct stella_err *e)
{
	struct walk *w = ctx;
	uint64_t real = 0;
	(void)i;
	if (fread(&real, sizeof(real), 1, w->doff) != 1)
		return stella_fail_errno(e, -EIO, "%s: temporary file for the index check", w->path);
	if (real && data_off + w->head_end != real)
		return stella_fail(e, -EUCLEAN, "%s: " KIT_INDEX_NAME ": \"%.300s\": data offset %llu, but the member's data is at %llu",
				   w->path, a->name, (unsigned long long)(data_off + w->head_end),
				   (unsigned long long)real);
	return 0;
}

/* After the walk: the carried index against the manifest, entry by
 * entry, and against where the members really are. */
static int check_index(struct walk *w, struct stella_err *e)
{
	struct source *src = kitread_source(w->kr);
	uint64_t total = source_stream_size(src);
	struct kitindex_geom g = {
		.body_max = total > w->head_end ? total - w->head_end : 0,
		.merkle_size = w->res->has_merkle ? w->merkle_size : 0,
		.compressed = kitread_compression(w->kr) != KIT_COMPRESS_NONE,
	};
	struct kitindex_info info;
	char label[4200];
	snprintf(label, sizeof(label), "%s: %s", w->path, KIT_INDEX_NAME);
	int r = iter_open(w, e);
	if (r < 0)
		return r;
	errno = 0;
	if (fflush(w->doff) != 0)
		return stella_fail_errno(e, errno ? -errno : -EIO, "%s: temporary file for the index check", w->path);
	rewind(w->doff);
	return kitindex_check_iter(w->index_path, label, &w->it, &g, index_offset, w, &info, e);
}

/* The most tar stream there can be before the manifest is known. */
#define HEAD_STREAM_MAX ((uint64_t)STELLA_MANIFEST_MAX + STELLA_SIG_MAX + (4u << 20))

int kit_read_head_source(struct source *src, char **manifest, size_t *mlen, char **sig, size_t *slen,
			 struct stella_err *e)
{
	const char *path = source_path(src);
	struct kitread *kr;
	struct kit_member m;
	int r = kitread_open_source(src, &kr, e);
	if (r < 0)
		return r;
	/* the bound of kit_verify before its manifest: room for the manifest,
	 * its signature and their headers (zero blocks between them would
	 * otherwise be skipped without end) */
	kitread_set_limit(kr, HEAD_STREAM_MAX);
	*manifest = *sig = NULL;
	r = kitread_next(kr, &m, e);
	if (r == 1 && (strcmp(m.name, KIT_MANIFEST_NAME) || m.type != ARTIFACT_FILE))
		r = stella_fail(e, -EBADMSG, "%s: first member is \"%.300s\", the manifest (%s) must come first", path,
				m.name, KIT_MANIFEST_NAME);
	if (r == 1 && (r = kitread_slurp(kr, &m, STELLA_MANIFEST_MAX, manifest, e)) == 0) {
		*mlen = m.size;
		r = kitread_next(kr, &m, e);
		if (r == 1 && (strcmp(m.name, KIT_SIG_NAME) || m.type != ARTIFACT_FILE))
			r = stella_fail(e, -EBADMSG, "%s: second member is \"%.300s\", the signature member %s must follow the manifest",
					path, m.name, KIT_SIG_NAME);
		if (r == 1 && (r = kitread_slurp(kr, &m, STELLA_SIG_MAX, sig, e)) == 0)
			*slen = m.size;
	}
	if (r == 0 && !*sig)
		r = stella_fail(e, -EBADMSG, "%s: the archive ends before its manifest and signature", path);
	kitread_close(kr);
	if (r < 0) {
		free(*manifest);
		free(*sig);
		*manifest = *sig = NULL;
	}
	return r;
}

/* The most tar stream a kit with this manifest can hold: the two manifest
 * members, every artifact's header (a pax header too, for long names),
 * its data padded to 512 bytes and its Merkle tree in merkle.bin, then
 * the end of the archive with generous padding.  Past that, the stream is
 * not one the signer made (kitread refuses it before expanding more). */
static uint64_t stream_bound(const struct walk *w)
{
	const struct manifest *m = w->res->manifest;
	uint64_t b = sat_add(w->manifest_len, STELLA_SIG_MAX + (4u << 20));
	b = sat_add(b, sat_add(m->index_size, 16u << 10));
	return sat_add(b, w->bound_sum); /* add_bound, artifact by artifact */
}

int kit_verify(const char *path, const struct kitverify_opts *o, struct kitverify_result *res,
	       struct stella_err *e)
{
	struct walk w = { .path = path, .o = o, .res = res, .mfd = -1 };
	_cleanup_(freep) char *prev = NULL;
	struct kit_member m;
	bool accepted = false;
	int r;

	memset(res, 0, sizeof(*res));
	r = o->source ? kitread_open_source(o->source, &w.kr, e) : kitread_open(path, &w.kr, e);
	if (r < 0)
		return r;
	/* A kit's tar stream is bounded by what its manifest accounts for
	 * (before the manifest: room for it, its signature and their headers),
	 * or a daemon's import would read a file of zeros, or a compressed
	 * bomb, for as long as it goes on, holding the command lock.  An
	 * uncompressed kit file longer than that is refused at once; a block
	 * device is as long as the device, and is read up to the bound. */
	kitread_set_limit(w.kr, HEAD_STREAM_MAX);
	if ((r = read_head(&w, e)) < 0)
		goto out;
	uint64_t bound = stream_bound(&w);
	struct source *src = kitread_source(w.kr);
	if (kitread_compression(w.kr) == KIT_COMPRESS_NONE && !source_is_blockdev(src) && source_file_size(src) > bound) {
		r = stella_fail(e, -EBADMSG,
				"%s: %llu bytes, more than the %llu its manifest accounts for (padding or appended data)", path,
				(unsigned long long)source_file_size(src), (unsigned long long)bound);
		goto out;
	}
	kitread_set_limit(w.kr, bound);
	res->compression = kitread_compression(w.kr);
	free(w.manifest_json);
	w.manifest_json = NULL;
	if (o->check_expiry && !o->allow_expired && o->now >= res->manifest->expires_at) {
		char t[32];
		time_format(res->manifest->expires_at, t);
		/* no option named here: the edge says its own (stella_err_hint) */
		r = stella_fail(e, -EKEYEXPIRED, "%s: kit %s %s expired at %s",
				path, res->manifest->kit_id, res->manifest->version, t);
		goto out;
	}
	if (o->check_manifest && (r = o->check_manifest(o->visit_ctx, res->manifest, res->manifest_sha256, e)) < 0)
		goto out;
	accepted = true;
	if (!o->content)
		goto probe_merkle;

	const struct manifest *mf = res->manifest;
	if ((r = hasher_new(&w.hasher, 0)) < 0)
		goto out;
	if (mf->has_index) {
		if (!(w.doff = tmpfile())) {
			r = stella_fail_errno(e, -errno, "%s: temporary file for the index check", path);
			goto out;
		}
		if ((r = read_index(&w, e)) < 0)
			goto out;
	}

	bool first = true;
	bool pulling = false;
	while ((r = kitread_next(w.kr, &m, e)) > 0) {
		/* merkle.bin (read first) takes its own pass over the artifacts */
		if (!pulling && !(first && !strcmp(m.name, KIT_MERKLE_NAME) && m.type == ARTIFACT_FILE)) {
			pulling = true;
			if ((r = iter_open(&w, e)) < 0 || (r = advance(&w, e)) < 0)
				goto out;
		}
		if (first && !strcmp(m.name, KIT_MERKLE_NAME) && m.type == ARTIFACT_FILE) {
			first = false;
			res->merkle_offset = m.data_offset;
			w.merkle_size = m.size;
			w.head_end = round512(m.data_offset + m.size);
			if ((r = read_merkle(&w, &m, e)) < 0)
				goto out;
			continue;
		}
		first = false;
		if ((r = check_member(&w, &m, prev, e)) < 0)
			goto out;
		free(prev);
		if (!(prev = strdup(m.name))) {
			r = -ENOMEM;
			goto out;
		}
	}
	if (r < 0)
		goto out;
	/* A delta kit carries only what changed; the rest comes from its base
	 * snapshot and is checked when the kit is imported on it. */
	if (!pulling && ((r = iter_open(&w, e)) < 0 || (r = advance(&w, e)) < 0))
		goto out;
	if ((r = skip_missing(&w, NULL, e)) < 0)
		goto out;
	if (w.missing) {
		r = stella_fail(e, -EBADMSG, "%s: missing member \"%.300s\" (listed in the manifest)", path, w.missing);
		goto out;
	}
	r = w.index_path ? check_index(&w, e) : 0;
	goto out;

probe_merkle:
	/* Without content checks, still say whether the kit carries trees. */
	r = kitread_next(w.kr, &m, e);
	if (r > 0 && !strcmp(m.name, KIT_INDEX_NAME) && res->manifest->has_index)
		r = kitread_next(w.kr, &m, e);
	if (r > 0)
		res->has_merkle = !strcmp(m.name, KIT_MERKLE_NAME);
	r = r < 0 ? r : 0;
out:
	if (accepted && o->walk_end)
		o->walk_end(o->visit_ctx, r);
	hasher_free(w.hasher);
	manifest_cursor_free(w.cur);
	free(w.missing);
	if (w.doff)
		fclose(w.doff);
	if (w.mfd >= 0 && r == 0) {
		res->manifest_fd = w.mfd;
		res->has_manifest_fd = true;
	} else if (w.mfd >= 0) {
		close(w.mfd);
	}
	if (w.index_path) {
		unlink(w.index_path);
		free(w.index_path);
	}
	free(w.manifest_json);
	kitread_close(w.kr);
	if (r < 0)
		kitverify_result_free(res);
	return r;
}

void kitverify_result_free(struct kitverify_result *res)
{
	if (res->has_manifest_fd)
		close(res->manifest_fd);
	res->has_manifest_fd = false;
	free(res->sig);
	res->sig = NULL;
	manifest_free(res->manifest);
	res->manifest = NULL;
	merklefile_index_free(&res->merkle);
}
