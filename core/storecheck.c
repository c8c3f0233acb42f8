#include "storecheck.h"

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "bounds.h"
#include "index.h"
#include "merkle.h"
#include "path.h"
#include "seal.h"
#include "util.h"

/* Read manifests/<name> whole (at most max bytes), refusing anything but a
 * regular file: the directory is on the untrusted disk too. */
static int read_kept_file(struct store *st, const char *name, size_t max, char **out, size_t *len,
			  struct stella_err *e)
{
	_cleanup_(closep) int fd = openat(store_manifest_dirfd(st), name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat sb;
	if (fd < 0 && errno == ENOENT)
		return stella_fail(e, -EBADMSG, "no signed manifest kept in the store (manifests/%s is missing)", name);
	if (fd < 0 || fstat(fd, &sb) < 0)
		return stella_fail_errno(e, -errno, "manifests/%s", name);
	if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > max)
		return stella_fail(e, -EBADMSG, "manifests/%s: not a regular file of at most %zu bytes", name, max);
	char *buf = malloc((size_t)sb.st_size + 1);
	if (!buf)
		return -ENOMEM;
	int r = pread_full(fd, buf, (size_t)sb.st_size, 0);
	if (r < 0) {
		free(buf);
		return stella_fail_errno(e, r, "manifests/%s", name);
	}
	buf[sb.st_size] = 0;
	*out = buf;
	*len = (size_t)sb.st_size;
	return 0;
}

/* The kept manifest whose SHA-256 is hex, and its .sig; the manifest's
 * bytes must have that digest. */
static int read_kept(struct store *st, const char *hex, char **json, size_t *jlen, char **sig, size_t *slen,
		     struct stella_err *e)
{
	char name[80];
	uint8_t want[32], got[32];
	*json = *sig = NULL;
	if (hex_decode(hex, want, 32) < 0)
		return stella_fail(e, -EBADMSG, "no valid manifest digest in store.db");
	snprintf(name, sizeof(name), "%s.json", hex);
	int r = read_kept_file(st, name, STELLA_MANIFEST_MAX, json, jlen, e);
	if (r == 0 && (r = sha256_once(*json, *jlen, got)) == 0 && memcmp(got, want, 32))
		r = stella_fail(e, -EBADMSG, "manifests/%s: its content is not the manifest store.db names", name);
	snprintf(name, sizeof(name), "%s.sig", hex);
	if (r == 0)
		r = read_kept_file(st, name, STELLA_SIG_MAX, sig, slen, e);
	if (r < 0) {
		free(*json);
		free(*sig);
		*json = *sig = NULL;
	}
	return r;
}

/* 0 with the verdict in c, or a failure that is no verdict (memory,
 * OpenSSL), to be tried again. */
static int judge_signatures(const struct trust *t, unsigned threshold, const char *json, size_t jlen,
			    const char *sig, size_t slen, struct storecheck *c, struct stella_err *e)
{
	struct stella_err se = { 0 };
	c->signers = 0;
	int r = sig_check(t, threshold, (const uint8_t *)json, jlen, sig, slen, &c->signers, &se);
	if (r < 0 && r != -EKEYREJECTED)
		return stella_fail(e, r, "%s", stella_err_text(&se, r));
	c->trusted = r == 0;
	snprintf(c->why, sizeof(c->why), "%s", r == 0 ? "" : stella_err_text(&se, r));
	return 0;
}

/* ---- the index against the manifest ---- */

struct cmp {
	struct snapshot *s;
	/* The comparison reads the index file through a connection of its
	 * own, in one read transaction: through the serving pool every lookup
	 * was a transaction of its own, and SQLite's locking (fcntl, stat)
	 * cost more than the lookups (a 50 000-file snapshot: 0.9 s). */
	sqlite3 *db;
	sqlite3_stmt *lookup;
	const struct manifest *m;
	const char *version;
	char dir[STELLA_NAME_MAX + 1];   /* the directory of the previous artifact */
	uint64_t dir_ino;
	uint64_t implied;                /* directories the index adds for the names */
	struct index_node n;
};

/* The row (parent, name): 0, -ENOENT, -E2BIG (a target longer than any
 * a manifest has), or -EIO (the query failed). */
static int lookup(struct cmp *c, uint64_t parent, const char *name, struct index_node *n)
{
	sqlite3_stmt *q = c->lookup;
	sqlite3_reset(q);
	sqlite3_bind_int64(q, 1, (sqlite3_int64)parent);
	sqlite3_bind_blob(q, 2, name, (int)strlen(name), SQLITE_STATIC);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_DONE)
		return -ENOENT;
	if (rc != SQLITE_ROW)
		return -EIO;
	n->ino = (uint64_t)sqlite3_column_int64(q, 0);
	n->parent = parent;
	n->type = (enum artifact_type)sqlite3_column_int(q, 1);
	n->mode = (uint32_t)sqlite3_column_int(q, 2);
	n->size = (uint64_t)sqlite3_column_int64(q, 3);
	/* a digest or target of another length is no match for any entry */
	memset(n->sha256, 0, 32);
	memset(n->fsverity, 0, 32);
	if (sqlite3_column_bytes(q, 4) == 32)
		memcpy(n->sha256, sqlite3_column_blob(q, 4), 32);
	if (sqlite3_column_bytes(q, 5) == 32)
		memcpy(n->fsverity, sqlite3_column_blob(q, 5), 32);
	int tl = sqlite3_column_bytes(q, 6);
	if (tl > (int)sizeof(n->target) - 1)
		return -E2BIG;
	if (tl > 0)
		memcpy(n->target, sqlite3_column_blob(q, 6), (size_t)tl);
	n->target[tl] = 0;
	if (n->ino > INDEX_MAX_INO)
		return -EIO;
	return 0;
}

static int mismatch(struct stella_err *e, const struct cmp *c, const char *name, const char *what)
{
	return stella_fail(e, -EBADMSG, "snapshot %s: its index does not match its signed manifest: \"%.300s\": %s",
			   c->version, name, what);
}

/* Resolve directory dir (a path, "" for the root), looking up only the
 * components past what it shares with the previous one.  Entering a
 * directory the manifest does not list counts it as implied (0755): the
 * names are sorted, so every directory is entered exactly once. */
static int enter_dir(struct cmp *c, const char *dir, struct stella_err *e)
{
	if (!strcmp(dir, c->dir))
		return 0;
	uint64_t ino = INDEX_ROOT_INO;
	size_t off = 0;
	bool fresh = false;
	while (dir[off]) {
		size_t n = strcspn(dir + off, "/");
		char comp[STELLA_COMPONENT_MAX + 1];
		if (n > STELLA_COMPONENT_MAX)
			return mismatch(e, c, dir, "name component too long");
		/* still inside the previous directory's path? */
		if (!fresh && !(strncmp(c->dir, dir, off + n) == 0 && (c->dir[off + n] == '/' || !c->dir[off + n])))
			fresh = true;
		memcpy(comp, dir + off, n);
		comp[n] = 0;
		int r = lookup(c, ino, comp, &c->n);
		if (r < 0)
			return r == -ENOENT ? mismatch(e, c, dir, "directory missing from the index") :
			       r == -E2BIG ? mismatch(e, c, dir, "not a directory in the index") :
			       stella_fail_errno(e, r, "snapshot %s: index", c->version);
		if (c->n.type != ARTIFACT_DIR)
			return mismatch(e, c, dir, "not a directory in the index");
		if (fresh) {
			char path[STELLA_NAME_MAX + 1];
			snprintf(path, sizeof(path), "%.*s", (int)(off + n), dir);
			if (!manifest_find(c->m, path)) {
				if (c->n.mode != 0755 || c->n.size != 0)
					return mismatch(e, c, path, "an implied directory with another mode");
				c->implied++;
			}
		}
		ino = c->n.ino;
		off += n;
		if (dir[off] == '/')
			off++;
	}
	snprintf(c->dir, sizeof(c->dir), "%s", dir);
	c->dir_ino = ino;
	return 0;
}

static int compare_entry(struct cmp *c, const struct artifact *a, struct stella_err *e)
{
	size_t pl = path_parent_len(a->name);
	char dir[STELLA_NAME_MAX + 1];
	snprintf(dir, sizeof(dir), "%.*s", (int)pl, a->name);
	int r = enter_dir(c, dir, e);
	if (r < 0)
		return r;
	const char *base = a->name + (pl ? pl + 1 : 0);
	struct index_node *n = &c->n;
	if ((r = lookup(c, c->dir_ino, base, n)) < 0)
		return r == -ENOENT ? mismatch(e, c, a->name, "missing from the index") :
		       r == -E2BIG ? mismatch(e, c, a->name, "symlink target differs") :
		       stella_fail_errno(e, r, "snapshot %s: index", c->version);
	if (n->type != a->type)
		return mismatch(e, c, a->name, "type differs");
	if (n->mode != a->mode)
		return mismatch(e, c, a->name, "mode differs");
	if (n->size != a->size)
		return mismatch(e, c, a->name, "size differs");
	if (a->type == ARTIFACT_FILE && memcmp(n->sha256, a->sha256, 32))
		return mismatch(e, c, a->name, "SHA-256 differs");
	if (a->type == ARTIFACT_FILE && memcmp(n->fsverity, a->fsverity, 32))
		return mismatch(e, c, a->name, "fs-verity digest differs");
	if (strcmp(n->target, a->type == ARTIFACT_SYMLINK && a->target ? a->target : ""))
		return mismatch(e, c, a->name, "symlink target differs");
	return 0;
}

/* Every row of the index is one the comparison found: as many rows as
 * the manifest's entries, its implied directories and the root, each with
 * an inode number of its own. */
static int count_rows(struct cmp *c, struct stella_err *e)
{
	sqlite3_stmt *q = NULL;
	int r = -EIO;
	int64_t rows = -1, inos = -1;
	if (sqlite3_prepare_v2(c->db, "SELECT count(*), count(DISTINCT ino) FROM node", -1, &q, NULL) == SQLITE_OK &&
	    sqlite3_step(q) == SQLITE_ROW) {
		rows = sqlite3_column_int64(q, 0);
		inos = sqlite3_column_int64(q, 1);
		r = 0;
	}
	sqlite3_finalize(q);
	if (r < 0)
		return stella_fail(e, -EIO, "snapshot %s: cannot count the index's entries", c->version);
	uint64_t want = 1 + c->m->nartifacts + c->implied;
	if (rows != inos || (uint64_t)rows != want)
		return stella_fail(e, -EBADMSG, "snapshot %s: its index does not match its signed manifest: %lld entries "
				   "(%lld inode numbers), the manifest makes %llu", c->version, (long long)rows,
				   (long long)inos, (unsigned long long)want);
	return 0;
}

static int compare_index(struct snapshot *s, const struct manifest *m, const char *version, const char *path,
			 struct stella_err *e)
{
	struct cmp *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->s = s;
	c->m = m;
	c->version = version;
	c->dir_ino = INDEX_ROOT_INO;
	int r = 0;
	if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
	    sqlite3_exec(c->db, "PRAGMA query_only=1; PRAGMA mmap_size=0; BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(c->db, "SELECT ino,type,mode,size,sha256,fsverity,target FROM node "
			       "WHERE parent=?1 AND name=?2", -1, &c->lookup, NULL) != SQLITE_OK)
		r = c->db ? stella_fail(e, -EIO, "snapshot %s: index: %s", version, sqlite3_errmsg(c->db)) : -ENOMEM;
	/* the root: its own parent, named "" */
	if (r == 0 && (r = lookup(c, INDEX_ROOT_INO, "", &c->n)) < 0)
		r = r == -EIO ? stella_fail_errno(e, r, "snapshot %s: index", version) : mismatch(e, c, "/", "no root");
	else if (r == 0 && (c->n.ino != INDEX_ROOT_INO || c->n.type != ARTIFACT_DIR || c->n.mode != 0755))
		r = mismatch(e, c, "/", "the root is not a 0755 directory");
	for (size_t i = 0; r == 0 && i < m->nartifacts; i++)
		r = compare_entry(c, &m->artifacts[i], e);
	if (r == 0)
		r = count_rows(c, e);
	sqlite3_finalize(c->lookup);
	sqlite3_close(c->db);
	free(c);
	return r;
}

/* The manifest's fields without its artifacts: what the snapshot shows as
 * its identity (status, expiry, freshness) comes from the signed bytes. */
static void drop_artifacts(struct manifest *m)
{
	for (size_t i = 0; i < m->nartifacts; i++) {
		free(m->artifacts[i].name);
		free(m->artifacts[i].target);
	}
	free(m->artifacts);
	m->artifacts = NULL;
	m->nartifacts = 0;
}

static int check_open(struct store *st, const struct store_snapshot *row, const char *path, struct snapshot *s,
		      const struct trust *t, unsigned threshold, struct storecheck *c, struct manifest **mout,
		      struct stella_err *e)
{
	char hex[65];
	hex_encode(s->manifest_sha256, 32, hex);
	if (strcmp(hex, row->manifest_sha256) || strcmp(s->version, row->version))
		return stella_fail(e, -EBADMSG, "snapshot %s: its index and store.db name different manifests", row->version);
	char *json = NULL, *sig = NULL;
	size_t jlen = 0, slen = 0;
	struct stella_err ke = { 0 };
	int r = read_kept(st, hex, &json, &jlen, &sig, &slen, &ke);
	if (r < 0) {
		free(json);
		return stella_fail(e, r, "snapshot %s: %s", row->version, stella_err_text(&ke, r));
	}
	struct manifest *m = NULL;
	r = manifest_parse(json, jlen, &m, &ke);
	if (r < 0)
		r = stella_fail(e, r, "snapshot %s: kept manifest: %s", row->version, stella_err_text(&ke, r));
	if (r == 0 && (strcmp(m->version, row->version) || strcmp(m->kit_id, row->kit_id) || m->sequence != row->sequence))
		r = stella_fail(e, -EBADMSG, "snapshot %s: store.db's row is not the kept manifest's (%s %s, sequence %lld)",
				row->version, m->kit_id, m->version, (long long)m->sequence);
	if (r == 0)
		r = judge_signatures(t, threshold, json, jlen, sig, slen, c, e);
	free(json);
	free(sig);
	if (r == 0)
		r = compare_index(s, m, row->version, path, e);
	if (r < 0) {
		manifest_free(m);
		return r;
	}
	*mout = m;
	return 0;
}

/* ---- the index this mount serves ---- */

/* dir for st under cache_dir, without making it; false when there is none. */
static bool private_dir_name(struct store *st, const char *cache_dir, char *dir, size_t n)
{
	struct stat sb;
	if (!cache_dir || fstat(store_manifest_dirfd(st), &sb) < 0)
		return false;
	snprintf(dir, n, "%s/store-%llx-%llx", cache_dir, (unsigned long long)sb.st_dev, (unsigned long long)sb.st_ino);
	return true;
}

/* The directory for the indexes built from a store's kept manifests:
 * cache_dir/store-DEV-INO/ (one per store: a prune sees only its own), or,
 * when cache_dir is not private to us, a temporary one (*own). */
static int private_dir(struct store *st, const char *cache_dir, char *dir, size_t n, bool *own, struct stella_err *e)
{
	*own = false;
	if (cache_dir && snapshot_cache_usable(cache_dir) && private_dir_name(st, cache_dir, dir, n) &&
	    snapshot_cache_usable(dir))
		return 0;
	snprintf(dir, n, "/var/tmp/stellafs-store-index.XXXXXX");
	if (!mkdtemp(dir))
		return stella_fail_errno(e, -errno, "temporary index directory");
	*own = true;
	return 0;
}


/* "<64 hex>.db", "<64 hex>.db.sum", or a builder's leftover
 * "<64 hex>.db.<pid>.tmp": the manifest digest it belongs to in hex. */
static bool index_file_of(const char *name, char hex[65])
{
	size_t i = 0;
	for (; i < 64 && ((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')); i++)
		hex[i] = name[i];
	hex[i] = 0;
	return i == 64 && !strncmp(name + 64, ".db", 3);
}

void storecheck_prune(struct store *st, const char *cache_dir, const struct store_snapshot *rows, size_t n)
{
	char dir[4096];
	if (!private_dir_name(st, cache_dir, dir, sizeof(dir)))
		return;
	_cleanup_(closep) int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	DIR *d = dfd >= 0 ? fdopendir(dup(dfd)) : NULL;
	if (!d)
		return;
	unsigned removed = 0;
	for (struct dirent *de; (de = readdir(d));) {
		char hex[65];
		if (!index_file_of(de->d_name, hex))
			continue;
		bool listed = false;
		for (size_t i = 0; i < n && !listed; i++)
			listed = !strcmp(rows[i].manifest_sha256, hex);
		if (!listed && unlinkat(dfd, de->d_name, 0) == 0)
			removed++;
	}
	closedir(d);
	if (removed)
		stella_log(LOG_INFO, "%s: removed %u file(s) of indexes of snapshots no longer in the store", dir, removed);
}

static int put_meta(struct index *ix, const char *key, unsigned long long v, struct stella_err *e)
{
	char num[32];
	snprintf(num, sizeof(num), "%llu", v);
	return index_set_meta(ix, key, num, strlen(num), e);
}

/* Build at path the index of m (its artifacts, in the order manifest_parse
 * sorted them), with what load_identity reads back. */
static int build_private(const char *path, struct manifest *m, const char *hex, unsigned signers,
			 struct stella_err *e)
{
	struct index *ix = NULL;
	uint64_t files = 0, bytes = 0;
	int r = index_create(path, &ix, e);
	for (size_t i = 0; r == 0 && i < m->nartifacts; i++) {
		const struct artifact *a = &m->artifacts[i];
		if (a->type == ARTIFACT_FILE) {
			files++;
			bytes += a->size;
		}
		r = index_add(ix, a, 0, -1, e);
	}
	char *json = NULL;
	size_t jlen = 0, na = m->nartifacts;
	m->nartifacts = 0; /* the identity: the manifest without its artifacts */
	if (r == 0)
		r = manifest_write(m, &json, &jlen);
	m->nartifacts = na;
	if (r == 0)
		r = index_set_meta(ix, "identity", json, jlen, e);
	free(json);
	if (r == 0)
		r = put_meta(ix, "files", files, e);
	if (r == 0)
		r = put_meta(ix, "bytes", bytes, e);
	if (r == 0)
		r = put_meta(ix, "signers", signers, e);
	if (r == 0)
		r = index_set_meta(ix, "manifestSha256", hex, 64, e);
	if (r == 0)
		r = put_meta(ix, "schema", INDEX_SCHEMA, e);
	if (r == 0)
		r = index_set_meta(ix, "complete", "1", 1, e);
	if (r == 0)
		r = index_finish(ix, e);
	index_close(ix);
	return r;
}

/* The snapshot this mount serves: its index built here from the verified
 * kept manifest m, never the store's own.  snapshots/V.db lies on the disk
 * the store does not trust, and compare_index can only tell that it was
 * tampered with when it was looked at: served, a schema trick (a view that
 * answers the comparison's connection and the serving ones differently) or
 * a write while mounted would change names, modes and symlink targets,
 * which no block check covers.  Built once per manifest in a private
 * directory and sealed there (a remount reuses it when its bytes are the
 * sealed ones, else builds it again), or in a temporary one. */
static int open_private(struct store *st, struct manifest *m, const char *hex, unsigned signers,
			const char *cache_dir, const char *version, struct snapshot **out, struct stella_err *e)
{
	char dir[4096], final[4200], tmp[4300];
	bool own;
	int r = private_dir(st, cache_dir, dir, sizeof(dir), &own, e);
	if (r < 0)
		return r;
	snprintf(final, sizeof(final), "%s/%s.db", dir, hex);
	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", final, (int)getpid());
	struct seal *seal = NULL;
	struct snapshot *s = NULL;
	struct stella_err se = { 0 };
	if (own || seal_open(final, &seal, &se) < 0) {
		seal_free(seal);
		seal = NULL;
		r = build_private(tmp, m, hex, signers, e);
		if (r == 0 && !own)
			r = seal_create(tmp, final, &seal, e);
		if (r == 0 && rename(tmp, final) < 0)
			r = stella_fail_errno(e, -errno, "%s", final);
		if (r < 0)
			unlink(tmp);
	}
	if (r == 0)
		r = snapshot_open_store(final, store_blob_dirfd(st), store_tree_dirfd(st), version, &s, e);
	if (r == 0 && own && !(s->tmp_index = strdup(final)))
		r = -ENOMEM;
	if (r < 0) {
		seal_free(seal);
		snapshot_unref(s);
		if (own) {
			unlink(final);
			rmdir(dir);
		}
		return r;
	}
	/* Checked when opened or sealed when built, and not kept: a seal
	 * holds its file open, and one per snapshot would make the daemon's
	 * descriptors grow with the store's history again. */
	seal_free(seal);
	*out = s;
	return 0;
}

/* What the snapshot shows as its identity (status, expiry, freshness)
 * comes from the signed bytes. */
static void adopt_identity(struct snapshot *s, struct manifest *m, unsigned signers)
{
	s->files = s->bytes = 0;
	for (size_t i = 0; i < m->nartifacts; i++)
		if (m->artifacts[i].type == ARTIFACT_FILE) {
			s->files++;
			s->bytes += m->artifacts[i].size;
		}
	s->signers = signers;
	drop_artifacts(m);
	manifest_free(s->identity);
	s->identity = m;
}

int storecheck_open(struct store *st, const char *version, const struct trust *t, unsigned threshold,
		    const char *cache_dir, struct snapshot **out, struct storecheck *c, struct stella_err *e)
{
	struct store_snapshot row;
	struct snapshot *disk = NULL, *s = NULL;
	struct manifest *m = NULL;
	memset(c, 0, sizeof(*c));
	int r = store_row(st, version, &row, e);
	if (r < 0)
		return r;
	char *path = store_index_path(st, version);
	if (!path)
		return -ENOMEM;
	/* its own failures are no verdict (as before these checks): retried */
	r = store_open_snapshot(st, version, &disk, e);
	if (r == 0 && (r = check_open(st, &row, path, disk, t, threshold ? threshold : 1, c, &m, e)) == -EBADMSG)
		c->forged = true;
	free(path);
	snapshot_unref(disk);
	if (r == 0)
		r = open_private(st, m, row.manifest_sha256, c->signers, cache_dir, version, &s, e);
	if (r < 0) {
		manifest_free(m);
		return r;
	}
	adopt_identity(s, m, c->signers);
	*out = s;
	return 0;
}

int storecheck_signatures(struct store *st, const struct snapshot *s, const struct trust *t, unsigned threshold,
			  struct storecheck *c, struct stella_err *e)
{
	char hex[65], *json = NULL, *sig = NULL;
	size_t jlen = 0, slen = 0;
	hex_encode(s->manifest_sha256, 32, hex);
	memset(c, 0, sizeof(*c));
	struct stella_err ke = { 0 };
	int r = read_kept(st, hex, &json, &jlen, &sig, &slen, &ke);
	if (r < 0) {
		c->forged = r == -EBADMSG;
		return stella_fail(e, r, "snapshot %s: %s", s->version, stella_err_text(&ke, r));
	}
	r = judge_signatures(t, threshold ? threshold : 1, json, jlen, sig, slen, c, e);
	free(json);
	free(sig);
	return r;
}
