#include "store.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <syslog.h>
#include <time.h>

#include "fdcache.h"
#include "hasher.h"
#include "index.h"
#include "kitverify.h"
#include "merkle.h"
#include "snapshot.h"
#include "util.h"

struct store {
	char *dir;
	int dirfd, blobfd, treefd, tmpfd, lockfd;
	int manfd;                 /* manifests/: each snapshot's signed manifest and .sig */
	bool locked;
	sqlite3 *db;
	pthread_mutex_t lock;      /* the connection is shared by the daemon's threads */
};

static const char schema[] =
	"PRAGMA journal_mode=WAL;"
	"PRAGMA synchronous=FULL;"
	"CREATE TABLE IF NOT EXISTS snapshot(version TEXT PRIMARY KEY, kit_id TEXT NOT NULL,"
	" sequence INTEGER NOT NULL, manifest_sha256 TEXT NOT NULL, imported_at INTEGER NOT NULL,"
	" files INTEGER NOT NULL, bytes INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS ratchet(kit_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS pointer(name TEXT PRIMARY KEY, version TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS journal(id INTEGER PRIMARY KEY, at INTEGER NOT NULL, uid INTEGER NOT NULL,"
	" command TEXT NOT NULL, err INTEGER NOT NULL, result TEXT NOT NULL);";

static int db_err(struct store *st, struct stella_err *e, const char *what)
{
	int code = sqlite3_errcode(st->db);
	int rc = code == SQLITE_FULL ? -ENOSPC : code == SQLITE_BUSY || code == SQLITE_LOCKED ? -EBUSY :
		 code == SQLITE_NOMEM ? -ENOMEM : -EIO;
	return stella_fail(e, rc, "store %s: %s: %s", st->dir, what, sqlite3_errmsg(st->db));
}

const char *store_dir(const struct store *st) { return st->dir; }
int store_blob_dirfd(const struct store *st) { return st->blobfd; }
int store_tree_dirfd(const struct store *st) { return st->treefd; }

char *store_index_path(const struct store *st, const char *version)
{
	size_t n = strlen(st->dir) + strlen(version) + 32;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/snapshots/%s.db", st->dir, version);
	return p;
}

int store_open_snapshot(struct store *st, const char *version, struct snapshot **out, struct stella_err *e)
{
	char *p = store_index_path(st, version);
	int r = p ? snapshot_open_store(p, st->blobfd, st->treefd, version, out, e) : -ENOMEM;
	free(p);
	return r;
}

static int open_sub(int dirfd, const char *name, bool create, int *out)
{
	if (create && mkdirat(dirfd, name, 0755) < 0 && errno != EEXIST)
		return -errno;
	*out = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return *out < 0 ? -errno : 0;
}

/* A stream over directory fd from its first entry, fd left open; NULL
 * with errno set. */
static DIR *dir_stream(int fd)
{
	int d2 = dup(fd);
	DIR *d = d2 >= 0 ? fdopendir(d2) : NULL;
	if (!d) {
		int err = errno;
		if (d2 >= 0)
			close(d2);
		errno = err;
		return NULL;
	}
	/* a dup shares the directory offset with fd: start from the top */
	rewinddir(d);
	return d;
}

/* Remove everything in dir fd (one level: tmp/ holds only files). */
static void empty_dir(int fd)
{
	DIR *d = dir_stream(fd);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(fd, de->d_name, 0);
	closedir(d);
}

/* A directory without store.db becomes a store only if nothing but a store's
 * own entries are in it (left by a first open that stopped before creating
 * store.db), or a fresh file system's lost+found: `stellafs /home/me /stella`
 * must not scatter blobs/, trees/ and store.db into somebody's files. */
static int fresh_dir(const char *dir, int dirfd, struct stella_err *e)
{
	static const char *const own[] = {
		".", "..", "blobs", "trees", "tmp", "snapshots", "quarantine", "lock", "manifests",
		"store.db-journal", "store.db-wal", "store.db-shm", "lost+found",
	};
	DIR *d = dir_stream(dirfd);
	if (!d)
		return stella_fail_errno(e, -errno, "store %s", dir);
	int r = 0;
	struct dirent *de;
	while (r == 0 && (de = readdir(d))) {
		bool ours = false;
		for (size_t i = 0; i < ARRAY_SIZE(own) && !ours; i++)
			ours = !strcmp(de->d_name, own[i]);
		if (!ours)
			r = stella_fail(e, -EINVAL, "%s: not a store (no store.db) and not empty (it holds \"%s\"): "
					"give a new or empty directory", dir, de->d_name);
	}
	closedir(d);
	return r;
}

void store_close(struct store *st)
{
	if (!st)
		return;
	if (st->db)
		sqlite3_close(st->db);
	int fds[] = { st->dirfd, st->blobfd, st->treefd, st->tmpfd, st->lockfd, st->manfd };
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	pthread_mutex_destroy(&st->lock);
	free(st->dir);
	free(st);
}

static int mkdir_p(const char *dir)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s", dir);
	for (char *q = p + 1; *q; q++)
		if (*q == '/') {
			*q = 0;
			if (mkdir(p, 0755) < 0 && errno != EEXIST)
				return -1;
			*q = '/';
		}
	return mkdir(p, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

int store_open(const char *dir, bool create, struct store **out, struct stella_err *e)
{
	struct store *st = calloc(1, sizeof(*st));
	int r;
	if (!st)
		return -ENOMEM;
	st->dirfd = st->blobfd = st->treefd = st->tmpfd = st->lockfd = st->manfd = -1;
	pthread_mutex_init(&st->lock, NULL);
	if (!(st->dir = realpath(dir, NULL))) {
		if (!create || errno != ENOENT || mkdir_p(dir) < 0 || !(st->dir = realpath(dir, NULL))) {
			r = stella_fail_errno(e, -errno, "store %s", dir);
			goto fail;
		}
	}
	if ((st->dirfd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		r = stella_fail_errno(e, -errno, "store %s", dir);
		goto fail;
	}
	if (faccessat(st->dirfd, "store.db", F_OK, 0) < 0) {
		if (!create) {
			r = stella_fail(e, -ENOENT, "%s: not a store (no store.db)", st->dir);
			goto fail;
		}
		if ((r = fresh_dir(st->dir, st->dirfd, e)) < 0)
			goto fail;
	}
	int snapfd = -1, qfd = -1;
	if ((r = open_sub(st->dirfd, "blobs", true, &st->blobfd)) < 0 ||
	    (r = open_sub(st->dirfd, "trees", true, &st->treefd)) < 0 ||
	    (r = open_sub(st->dirfd, "tmp", true, &st->tmpfd)) < 0 ||
	    (r = open_sub(st->dirfd, "manifests", true, &st->manfd)) < 0 ||
	    (r = open_sub(st->dirfd, "snapshots", true, &snapfd)) < 0 ||
	    (r = open_sub(st->dirfd, "quarantine", true, &qfd)) < 0) {
		r = stella_fail_errno(e, r, "store %s", st->dir);
		goto fail;
	}
	close(snapfd);
	close(qfd);
	if ((st->lockfd = openat(st->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
		r = stella_fail_errno(e, -errno, "store %s/lock", st->dir);
		goto fail;
	}
	char path[4200];
	snprintf(path, sizeof(path), "%s/store.db", st->dir);
	if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		r = st->db ? db_err(st, e, "open") : -ENOMEM;
		goto fail;
	}
	sqlite3_busy_timeout(st->db, 5000);
	if (sqlite3_exec(st->db, schema, NULL, NULL, NULL) != SQLITE_OK) {
		r = db_err(st, e, "schema");
		goto fail;
	}
	/* Leftovers of an import that did not finish, if nobody is writing. */
	if (flock(st->lockfd, LOCK_EX | LOCK_NB) == 0) {
		empty_dir(st->tmpfd);
		flock(st->lockfd, LOCK_UN);
	}
	*out = st;
	return 0;
fail:
	store_close(st);
	return r;
}

int store_lock(struct store *st, struct stella_err *e)
{
	if (flock(st->lockfd, LOCK_EX | LOCK_NB) < 0)
		return stella_fail(e, errno == EWOULDBLOCK ? -EBUSY : -errno,
				   "store %s: another import or command is running", st->dir);
	st->locked = true;
	return 0;
}

void store_unlock(struct store *st)
{
	if (st->locked)
		flock(st->lockfd, LOCK_UN);
	st->locked = false;
}

int64_t store_data_version(struct store *st)
{
	sqlite3_stmt *s;
	int64_t v = -1;
	pthread_mutex_lock(&st->lock);
	if (sqlite3_prepare_v2(st->db, "PRAGMA data_version", -1, &s, NULL) == SQLITE_OK) {
		if (sqlite3_step(s) == SQLITE_ROW)
			v = sqlite3_column_int64(s, 0);
		sqlite3_finalize(s);
	}
	pthread_mutex_unlock(&st->lock);
	return v;
}

int store_usage_pct(struct store *st)
{
	struct statvfs sv;
	if (fstatvfs(st->dirfd, &sv) < 0 || sv.f_blocks == 0)
		return -1;
	return (int)((sv.f_blocks - sv.f_bavail) * 100 / sv.f_blocks);
}

int store_list(struct store *st, struct store_snapshot **out, size_t *n, struct stella_err *e)
{
	sqlite3_stmt *s;
	struct store_snapshot *v = NULL;
	size_t cnt = 0, cap = 0;
	int r = 0;
	pthread_mutex_lock(&st->lock);
	if (sqlite3_prepare_v2(st->db, "SELECT version,kit_id,sequence,manifest_sha256,imported_at,files,bytes "
			       "FROM snapshot ORDER BY sequence, version", -1, &s, NULL) != SQLITE_OK) {
		int r0 = db_err(st, e, "read snapshots");
		pthread_mutex_unlock(&st->lock);
		return r0;
	}
	int rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? 2 * cap : 16;
			struct store_snapshot *p = realloc(v, cap * sizeof(*p));
			if (!p) {
				r = -ENOMEM;
				break;
			}
			v = p;
		}
		struct store_snapshot *x = &v[cnt++];
		memset(x, 0, sizeof(*x));
		snprintf(x->version, sizeof(x->version), "%s", (const char *)sqlite3_column_text(s, 0));
		snprintf(x->kit_id, sizeof(x->kit_id), "%s", (const char *)sqlite3_column_text(s, 1));
		x->sequence = sqlite3_column_int64(s, 2);
		snprintf(x->manifest_sha256, sizeof(x->manifest_sha256), "%s", (const char *)sqlite3_column_text(s, 3));
		x->imported_at = sqlite3_column_int64(s, 4);
		x->files = (uint64_t)sqlite3_column_int64(s, 5);
		x->bytes = (uint64_t)sqlite3_column_int64(s, 6);
	}
	/* a step that failed half way is no shorter list: callers drop what is
	 * not listed (the daemon's snapshots, store_sweep's blobs) */
	if (r == 0 && rc != SQLITE_DONE)
		r = db_err(st, e, "read snapshots");
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->lock);
	if (r < 0) {
		free(v);
		return r;
	}
	*out = v;
	*n = cnt;
	return 0;
}

/* Reads fail closed: a query that failed is an error, never "no row" (no
 * current pointer, no such snapshot, no ratchet), which would let a switch
 * or an import go on from a wrong view of the store. */
static int get_pointer(struct store *st, const char *name, char out[129], struct stella_err *e)
{
	sqlite3_stmt *s;
	out[0] = 0;
	if (sqlite3_prepare_v2(st->db, "SELECT version FROM pointer WHERE name=?1", -1, &s, NULL) != SQLITE_OK)
		return db_err(st, e, "read pointer");
	sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s), r = 0;
	if (rc == SQLITE_ROW)
		snprintf(out, 129, "%s", (const char *)sqlite3_column_text(s, 0));
	else if (rc != SQLITE_DONE)
		r = db_err(st, e, "read pointer");
	sqlite3_finalize(s);
	return r;
}

static int get_pointers(struct store *st, char current[129], char previous[129], struct stella_err *e)
{
	int r = get_pointer(st, "current", current, e);
	if (r == 0)
		r = get_pointer(st, "previous", previous, e);
	return r;
}

int store_pointers(struct store *st, char current[129], char previous[129], struct stella_err *e)
{
	pthread_mutex_lock(&st->lock);
	int r = get_pointers(st, current, previous, e);
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* 1 when the store has version (its manifest digest in sha), 0 when not. */
static int has_snapshot(struct store *st, const char *version, char sha[65], struct stella_err *e)
{
	sqlite3_stmt *s;
	if (sqlite3_prepare_v2(st->db, "SELECT manifest_sha256 FROM snapshot WHERE version=?1", -1, &s, NULL) != SQLITE_OK)
		return db_err(st, e, "read snapshots");
	sqlite3_bind_text(s, 1, version, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s), r = 0;
	if (rc == SQLITE_ROW) {
		r = 1;
		if (sha)
			snprintf(sha, 65, "%s", (const char *)sqlite3_column_text(s, 0));
	} else if (rc != SQLITE_DONE) {
		r = db_err(st, e, "read snapshots");
	}
	sqlite3_finalize(s);
	return r;
}

static int exec(struct store *st, const char *sql, struct stella_err *e)
{
	return sqlite3_exec(st->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : db_err(st, e, "update");
}

/* End a write transaction: COMMIT when r is 0, else (or when COMMIT fails)
 * ROLLBACK.  A failed COMMIT can leave the transaction open, and an open
 * transaction on the daemon's long-lived connection would hold the write
 * lock for ever. */
static int end_transaction(struct store *st, int r, struct stella_err *e)
{
	if (r == 0)
		r = exec(st, "COMMIT", e);
	if (r < 0 && !sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return r;
}

static int set_pointer(struct store *st, const char *name, const char *version, struct stella_err *e)
{
	sqlite3_stmt *s;
	if (sqlite3_prepare_v2(st->db, "INSERT OR REPLACE INTO pointer VALUES(?1,?2)", -1, &s, NULL) != SQLITE_OK)
		return db_err(st, e, "update");
	sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, version, -1, SQLITE_STATIC);
	int r = sqlite3_step(s) == SQLITE_DONE ? 0 : db_err(st, e, "update");
	sqlite3_finalize(s);
	return r;
}

/* previous := current, current := version, in one transaction. */
static int switch_to(struct store *st, const char *version, struct stella_err *e)
{
	char cur[129], prev[129];
	int r = get_pointers(st, cur, prev, e);
	if (r < 0 || !strcmp(cur, version))
		return r;
	r = exec(st, "BEGIN IMMEDIATE", e);
	if (r < 0)
		return r;
	if (*cur)
		r = set_pointer(st, "previous", cur, e);
	if (r == 0)
		r = set_pointer(st, "current", version, e);
	return end_transaction(st, r, e);
}

int store_activate(struct store *st, const char *version, struct stella_err *e)
{
	pthread_mutex_lock(&st->lock);
	int r = has_snapshot(st, version, NULL, e);
	if (r > 0)
		r = switch_to(st, version, e);
	else if (r == 0)
		r = stella_fail(e, -ENOENT, "no snapshot \"%s\" in the store", version);
	pthread_mutex_unlock(&st->lock);
	return r;
}

int store_rollback(struct store *st, const char *version, char now_current[129], struct stella_err *e)
{
	char cur[129], prev[129];
	pthread_mutex_lock(&st->lock);
	int r = get_pointers(st, cur, prev, e);
	const char *target = version ? version : prev;
	if (r == 0 && !*target)
		r = stella_fail(e, -ENOENT, "no previous snapshot to roll back to");
	if (r == 0 && (r = has_snapshot(st, target, NULL, e)) == 0)
		r = stella_fail(e, -ENOENT, "no snapshot \"%s\" in the store", target);
	if (r > 0)
		r = switch_to(st, target, e);
	if (r == 0)
		snprintf(now_current, 129, "%s", target);
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* A snapshot's kept manifest: manifests/<its SHA-256>.json and .sig. */
static void manifest_names(const char *sha, char json[72], char sig[72])
{
	snprintf(json, 72, "%.64s.json", sha);
	snprintf(sig, 72, "%.64s.sig", sha);
}

static void unlink_manifest(struct store *st, const char *sha)
{
	char j[72], g[72];
	if (strlen(sha) != 64)
		return;
	manifest_names(sha, j, g);
	unlinkat(st->manfd, j, 0);
	unlinkat(st->manfd, g, 0);
}

int store_manifest_dirfd(const struct store *st) { return st->manfd; }

int store_row(struct store *st, const char *version, struct store_snapshot *row, struct stella_err *e)
{
	sqlite3_stmt *s;
	int r = 0;
	pthread_mutex_lock(&st->lock);
	if (sqlite3_prepare_v2(st->db, "SELECT version,kit_id,sequence,manifest_sha256,imported_at,files,bytes "
			       "FROM snapshot WHERE version=?1", -1, &s, NULL) != SQLITE_OK) {
		r = db_err(st, e, "read snapshots");
	} else {
		sqlite3_bind_text(s, 1, version, -1, SQLITE_STATIC);
		int rc = sqlite3_step(s);
		if (rc == SQLITE_ROW) {
			memset(row, 0, sizeof(*row));
			snprintf(row->version, sizeof(row->version), "%s", (const char *)sqlite3_column_text(s, 0));
			snprintf(row->kit_id, sizeof(row->kit_id), "%s", (const char *)sqlite3_column_text(s, 1));
			row->sequence = sqlite3_column_int64(s, 2);
			snprintf(row->manifest_sha256, sizeof(row->manifest_sha256), "%s",
				 (const char *)sqlite3_column_text(s, 3));
			row->imported_at = sqlite3_column_int64(s, 4);
			row->files = (uint64_t)sqlite3_column_int64(s, 5);
			row->bytes = (uint64_t)sqlite3_column_int64(s, 6);
		} else if (rc == SQLITE_DONE) {
			r = stella_fail(e, -ENOENT, "no snapshot \"%s\" in the store", version);
		} else {
			r = db_err(st, e, "read snapshots");
		}
		sqlite3_finalize(s);
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

int store_remove(struct store *st, const char *version, struct stella_err *e)
{
	char cur[129], prev[129], sha[65] = "";
	pthread_mutex_lock(&st->lock);
	int r = get_pointers(st, cur, prev, e);
	if (r == 0 && (r = has_snapshot(st, version, sha, e)) == 0)
		r = stella_fail(e, -ENOENT, "no snapshot \"%s\" in the store", version);
	if (r > 0 && !strcmp(cur, version))
		r = stella_fail(e, -EBUSY, "%s is current", version);
	if (r > 0) {
		sqlite3_stmt *s;
		r = exec(st, "BEGIN IMMEDIATE", e);
		if (r == 0 && sqlite3_prepare_v2(st->db, "DELETE FROM snapshot WHERE version=?1", -1, &s, NULL) != SQLITE_OK)
			r = db_err(st, e, "remove");
		else if (r == 0) {
			sqlite3_bind_text(s, 1, version, -1, SQLITE_STATIC);
			if (sqlite3_step(s) != SQLITE_DONE)
				r = db_err(st, e, "remove");
			sqlite3_finalize(s);
		}
		if (r == 0 && !strcmp(prev, version))
			r = exec(st, "DELETE FROM pointer WHERE name='previous'", e);
		r = end_transaction(st, r, e);
		if (r == 0) {
			char *p = store_index_path(st, version);
			if (p)
				unlink(p);
			free(p);
			unlink_manifest(st, sha);
		}
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* ---- import ---- */

struct pending {
	char tmp[32];
	char final[68];
	bool tree;
	bool placed;       /* renamed into blobs/ or trees/ by this import */
	bool made_dir;     /* and its ab/ directory made by it */
};

/* The kept manifest's two files, written to tmp/ and renamed into manifests/. */
struct kept {
	char tmp[32];
	char final[72];
	bool placed;       /* new in manifests/ (a failed import takes it back) */
};

struct import {
	struct store *st;
	const struct store_import_opts *o;
	struct index *ix;
	char ix_tmp[4200];
	struct snapshot *base;     /* a delta kit's: what it leaves out is there */
	int blob_fd;              /* the member being received */
	char blob_tmp[32];
	unsigned counter;
	/* The renames still to do, one per carried file and tree: a million
	 * of them is 100 MB, so they go to an unlinked file in tmp/ (pendfd)
	 * in batches of PEND_BATCH, and come back a batch at a time. */
	struct pending *pend;     /* the batch being filled or worked on */
	size_t npend, nbatch;     /* all of them; in pend */
	int pendfd;               /* -1 until the first batch is spilled */
	uint8_t *seen;            /* a bit per artifact of the new manifest */
	size_t nseen;
	bool streamed;            /* kit_verify keeps no artifact list (vo.stream) */
	const struct kitverify_result *res;
	const struct manifest *m;
	const char *kit;
	char *mjson, *sig;        /* the signed manifest and its .sig, as in the kit */
	size_t mlen, slen;
	bool repair;              /* the same kit is in the store: check and mend it */
	struct hasher *hasher;    /* for the blobs a delta kit reuses */
	uint64_t repaired;        /* stored files found damaged and replaced */
	struct kept kept[2];
	/* finish_import's phases */
	uint64_t files, bytes;    /* the snapshot's totals (add_nodes) */
	char mhex[65];            /* the manifest's digest (write_index) */
	char *final;              /* the index's place (place_all) */
	bool index_placed;        /* renamed there by this import */
};

/* The manifest and signature members again, to keep them in the store: the
 * bytes must be the ones kit_verify checked (same digest), and the
 * signatures must still carry the threshold (the .sig is read twice).
 * A kit the caller opened is read again through that open file (a second
 * source on its bytes: the walk is using the first), never by its name,
 * which may name another file by now, or none that this process may
 * open. */
static int imp_head(struct import *im, const uint8_t sha[32], struct stella_err *e)
{
	uint8_t got[32];
	struct source *src = NULL;
	int r = im->o->source ? source_dup(im->o->source, &src, e) : source_open(im->kit, &src, e);
	if (r == 0)
		r = kit_read_head_source(src, &im->mjson, &im->mlen, &im->sig, &im->slen, e);
	source_close(src);
	if (r == 0 && (r = sha256_once(im->mjson, im->mlen, got)) == 0 && memcmp(got, sha, 32))
		r = stella_fail(e, -EBADMSG, "%s: the kit changed while it was being imported", im->kit);
	unsigned signers = 0;
	if (r == 0)
		r = sig_check(im->o->trust, im->o->threshold, (const uint8_t *)im->mjson, im->mlen, im->sig, im->slen,
			      &signers, e);
	return r;
}

static int imp_check(void *ctx, const struct manifest *m, const uint8_t sha[32], struct stella_err *e)
{
	struct import *im = ctx;
	struct store *st = im->st;
	im->m = m;
	sqlite3_stmt *s;
	int64_t ratchet = -1;
	int r = 0, exists = 0, base_ok = 1;
	char have[65], base_sha[65] = "";
	pthread_mutex_lock(&st->lock);
	/* The rollback rule fails closed: an unreadable ratchet is an error,
	 * not "no ratchet yet". */
	if (sqlite3_prepare_v2(st->db, "SELECT sequence FROM ratchet WHERE kit_id=?1", -1, &s, NULL) != SQLITE_OK) {
		r = db_err(st, e, "read ratchet");
	} else {
		sqlite3_bind_text(s, 1, m->kit_id, -1, SQLITE_STATIC);
		int rc = sqlite3_step(s);
		if (rc == SQLITE_ROW)
			ratchet = sqlite3_column_int64(s, 0);
		else if (rc != SQLITE_DONE)
			r = db_err(st, e, "read ratchet");
		sqlite3_finalize(s);
	}
	if (r == 0)
		r = exists = has_snapshot(st, m->version, have, e);
	if (r >= 0 && m->has_base)
		r = base_ok = has_snapshot(st, m->base_version, base_sha, e);
	pthread_mutex_unlock(&st->lock);
	if (r < 0)
		return r;
	char mhex[65];
	hex_encode(sha, 32, mhex);
	/* With o->repair, the very kit a snapshot was made from: not a new
	 * snapshot (no row, no ratchet), but a check of everything it stored,
	 * mending what is damaged, and its manifest kept if an older
	 * stellakit did not.  Without, it is refused as before (ESTALE). */
	im->repair = im->o->repair && exists && !strcmp(have, mhex);
	if (!im->repair && ratchet >= 0 && m->sequence <= ratchet)
		return stella_fail(e, -ESTALE, "kit %s %s: sequence %lld is not newer than %lld, already trusted for %s",
				   m->kit_id, m->version, (long long)m->sequence, (long long)ratchet, m->kit_id);
	if (!im->repair && exists)
		return stella_fail(e, -EEXIST, "kit %s: version %s is already in the store", m->kit_id, m->version);
	if (m->has_base && !im->repair) {
		char want[65];
		hex_encode(m->base_manifest_sha256, 32, want);
		if (!base_ok)
			return stella_fail(e, -ENOENT, "delta kit %s: its base %s is not in the store", m->version,
					   m->base_version);
		if (strcmp(want, base_sha))
			return stella_fail(e, -EBADMSG, "delta kit %s: the store's %s has another manifest than its base",
					   m->version, m->base_version);
	}
	if (m->has_base) {
		/* what the delta leaves out is compared with its base, or, for
		 * the same delta kit again, with the snapshot it made */
		const char *bv = im->repair ? m->version : m->base_version;
		if ((r = store_open_snapshot(st, bv, &im->base, e)) < 0)
			return r;
	}
	/* (a streamed walk hands over the very bytes it checked, with their
	 * signature, when it ends: nothing to read again) */
	if (!im->streamed && (r = imp_head(im, sha, e)) < 0)
		return r;
	snprintf(im->ix_tmp, sizeof(im->ix_tmp), "%s/tmp/index.%d.db", st->dir, (int)getpid());
	/* a bit per artifact: which ones the kit carries */
	if (m->nlisted && !(im->seen = calloc(m->nlisted / 8 + 1, 1)))
		return -ENOMEM;
	im->nseen = m->nlisted;
	return index_create(im->ix_tmp, &im->ix, e);
}

static int imp_data(void *ctx, const uint8_t *buf, size_t len, struct stella_err *e)
{
	struct import *im = ctx;
	if (im->blob_fd < 0) {
		snprintf(im->blob_tmp, sizeof(im->blob_tmp), "blob.%u", im->counter++);
		im->blob_fd = openat(im->st->tmpfd, im->blob_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
		if (im->blob_fd < 0)
			return stella_fail_errno(e, -errno, "store %s/tmp", im->st->dir);
	}
	int r = write_full(im->blob_fd, buf, len);
	return r < 0 ? stella_fail_errno(e, r, "store %s: writing a blob", im->st->dir) : 0;
}

#define PEND_BATCH 4096u

/* Records [first, first + n) of the spill, written or read back. */
static int pend_io(struct import *im, size_t first, size_t n, bool write, struct stella_err *e)
{
	size_t len = n * sizeof(*im->pend);
	off_t off = (off_t)(first * sizeof(*im->pend));
	ssize_t got = write ? pwrite(im->pendfd, im->pend, len, off) : pread(im->pendfd, im->pend, len, off);
	if (got != (ssize_t)len)
		return stella_fail_errno(e, got < 0 ? -errno : -EIO, "store %s: the list of files to place", im->st->dir);
	return 0;
}

/* The batch in memory out to the spill (opened on first use). */
static int pend_flush(struct import *im, struct stella_err *e)
{
	if (im->nbatch == 0)
		return 0;
	if (im->pendfd < 0) {
		im->pendfd = openat(im->st->tmpfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (im->pendfd < 0)
			return stella_fail_errno(e, -errno, "store %s: the list of files to place", im->st->dir);
	}
	int r = pend_io(im, im->npend - im->nbatch, im->nbatch, true, e);
	im->nbatch = 0;
	return r;
}

/* fn over every pending rename, a batch at a time (what fn changes in a
 * record is written back); stops at fn's first failure. */
static int pend_each(struct import *im, int (*fn)(struct import *im, struct pending *p, struct stella_err *e),
		     struct stella_err *e)
{
	int r = 0;
	if (im->pendfd < 0) { /* all of them still in memory */
		for (size_t i = 0; i < im->nbatch && r == 0; i++)
			r = fn(im, &im->pend[i], e);
		return r;
	}
	if ((r = pend_flush(im, e)) < 0)
		return r;
	for (size_t at = 0; at < im->npend && r == 0; at += PEND_BATCH) {
		size_t n = MIN((size_t)PEND_BATCH, im->npend - at);
		if ((r = pend_io(im, at, n, false, e)) < 0)
			return r;
		for (size_t i = 0; i < n && r == 0; i++)
			r = fn(im, &im->pend[i], e);
		int w = pend_io(im, at, n, true, e);
		r = r < 0 ? r : w;
	}
	return r;
}

static int add_pending(struct import *im, const char *tmp, const char *final, bool tree)
{
	if (!im->pend && !(im->pend = malloc(PEND_BATCH * sizeof(*im->pend))))
		return -ENOMEM;
	if (im->nbatch == PEND_BATCH) {
		struct stella_err e = { 0 };
		int r = pend_flush(im, &e);
		if (r < 0)
			return r;
	}
	im->npend++;
	struct pending *p = &im->pend[im->nbatch++];
	snprintf(p->tmp, sizeof(p->tmp), "%s", tmp);
	snprintf(p->final, sizeof(p->final), "%s", final);
	p->tree = tree;
	p->placed = p->made_dir = false;
	return 0;
}

static int imp_visit(void *ctx, size_t i, const struct kit_member *m, const struct hasher_result *h,
		     struct stella_err *e)
{
	struct import *im = ctx;
	(void)m;
	if (i < im->nseen)
		im->seen[i / 8] |= (uint8_t)(1u << (i % 8));
	if (!h)
		return 0;
	if (im->blob_fd >= 0) {
		int fd = im->blob_fd;
		im->blob_fd = -1;
		if (close(fd) < 0)
			return stella_fail_errno(e, -errno, "store %s: writing a blob", im->st->dir);
	}
	char final[68];
	int r;
	fdcache_digest_name(h->sha256, final);
	if (h->geom.data_size > 0 && (r = add_pending(im, im->blob_tmp, final, false)) < 0)
		return r;
	if (!h->geom.levels)
		return 0;
	/* The tree, content-addressed like the data: unchanged files of the
	 * next kit cost nothing, trees included. */
	char tmp[32];
	snprintf(tmp, sizeof(tmp), "tree.%u", im->counter++);
	int fd = openat(im->st->tmpfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
	if (fd < 0)
		return stella_fail_errno(e, -errno, "store %s/tmp", im->st->dir);
	r = write_full(fd, h->tree, merkle_tree_size(&h->geom));
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		return stella_fail_errno(e, r, "store %s: writing a tree", im->st->dir);
	fdcache_digest_name(h->fsverity, final);
	return add_pending(im, tmp, final, true);
}

/* 1 when the stored file dfd/name holds exactly the bytes of tmp/tmpname,
 * 0 when it does not (or cannot be read: damaged too), <0 for our own
 * failure (memory, or tmp unreadable). */
static int same_bytes(int dfd, const char *name, int tmpfd, const char *tmpname)
{
	_cleanup_(closep) int a = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	_cleanup_(closep) int b = openat(tmpfd, tmpname, O_RDONLY | O_CLOEXEC);
	struct stat sa, sb;
	if (b < 0 || fstat(b, &sb) < 0)
		return -errno;
	if (a < 0 || fstat(a, &sa) < 0 || !S_ISREG(sa.st_mode) || sa.st_size != sb.st_size)
		return 0;
	const size_t chunk = 1 << 20;
	_cleanup_(freep) uint8_t *x = malloc(2 * chunk);
	if (!x)
		return -ENOMEM;
	for (uint64_t off = 0; off < (uint64_t)sb.st_size;) {
		size_t n = (size_t)MIN((uint64_t)sb.st_size - off, (uint64_t)chunk);
		int r = pread_full(b, x + chunk, n, off);
		if (r < 0)
			return r;
		if (pread_full(a, x, n, off) < 0 || memcmp(x, x + chunk, n))
			return 0;
		off += n;
	}
	return 1;
}

/* A stored file this import needs is already there: keep it if it holds
 * the verified bytes in tmp/, else replace it with them (the rename is
 * atomic: a reader sees the damaged file or the good one).  Nothing else
 * ever mends a damaged blob: re-importing a good kit that carries the
 * file is the remedy (docs/runbook.md). */
static int keep_or_mend(struct import *im, struct pending *p, int dfd, struct stella_err *e)
{
	struct store *st = im->st;
	int same = same_bytes(dfd, p->final, st->tmpfd, p->tmp);
	if (same < 0)
		return stella_fail_errno(e, same, "store %s: checking a stored file", st->dir);
	if (same) {
		unlinkat(st->tmpfd, p->tmp, 0);
		return 0;
	}
	if (renameat(st->tmpfd, p->tmp, dfd, p->final) < 0)
		return stella_fail_errno(e, -errno, "store %s: replacing the damaged %s/%s", st->dir,
					 p->tree ? "trees" : "blobs", p->final);
	im->repaired++;
	stella_log(LOG_WARNING, "store %s: %s/%s was damaged; replaced by the verified bytes of %s", st->dir,
		   p->tree ? "trees" : "blobs", p->final, im->kit);
	return 0;
}

/* A file a delta kit leaves to its base: its stored blob must still be the
 * signed content (there is no copy in this kit to mend it with), and its
 * tree is rebuilt from it into tmp/ (kept or mended like a carried one). */
static int check_reused(struct import *im, const struct artifact *a, struct stella_err *e)
{
	struct store *st = im->st;
	char name[68];
	fdcache_digest_name(a->sha256, name);
	_cleanup_(closep) int fd = openat(st->blobfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	int r = 0;
	if (!im->hasher && (r = hasher_new(&im->hasher, 0)) < 0)
		return r;
	struct hasher_result h;
	bool good = fd >= 0 && hasher_begin(im->hasher, a->size) == 0;
	for (uint64_t off = 0; good && off < a->size;) {
		size_t n = (size_t)MIN(a->size - off, (uint64_t)HASHER_CHUNK);
		uint8_t *buf = hasher_buf(im->hasher);
		good = pread_full(fd, buf, n, off) == 0;
		hasher_put(im->hasher, good ? n : 0);
		off += n;
	}
	if (fd >= 0 && !good)
		hasher_end(im->hasher, &h); /* back to idle */
	else if (good)
		good = hasher_end(im->hasher, &h) == 0 && !memcmp(h.sha256, a->sha256, 32) &&
		       !memcmp(h.fsverity, a->fsverity, 32);
	if (!good)
		return stella_fail(e, -EUCLEAN, "delta kit %s: the store's copy of \"%.300s\" (from its base) is damaged "
				   "or missing: import a full kit that carries it", im->m->version, a->name);
	if (!h.geom.levels)
		return 0;
	char tmp[32];
	snprintf(tmp, sizeof(tmp), "tree.%u", im->counter++);
	_cleanup_(closep) int tfd = openat(st->tmpfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
	if (tfd < 0)
		return stella_fail_errno(e, -errno, "store %s/tmp", st->dir);
	if ((r = write_full(tfd, h.tree, merkle_tree_size(&h.geom))) < 0)
		return stella_fail_errno(e, r, "store %s: writing a tree", st->dir);
	fdcache_digest_name(a->fsverity, name);
	return add_pending(im, tmp, name, true);
}

/* The signed manifest and its .sig into tmp/, to be renamed into
 * manifests/ with the blobs (durable before the row). */
/* All of from (read from its start) to the end of to. */
static int copy_fd(int from, int to)
{
	_cleanup_(freep) char *buf = malloc(1u << 18);
	if (!buf)
		return -ENOMEM;
	for (off_t off = 0;;) {
		ssize_t n = pread(from, buf, 1u << 18, off);
		if (n < 0)
			return -errno;
		if (n == 0)
			return 0;
		int r = write_full(to, buf, (size_t)n);
		if (r < 0)
			return r;
		off += n;
	}
}

static int write_kept(struct import *im, const char *mhex, struct stella_err *e)
{
	struct store *st = im->st;
	const char *data[2] = { im->mjson, im->streamed ? im->res->sig : im->sig };
	size_t len[2] = { im->mlen, im->streamed ? im->res->sig_len : im->slen };
	char json[72], sig[72];
	manifest_names(mhex, json, sig);
	for (int i = 0; i < 2; i++) {
		struct kept *k = &im->kept[i];
		snprintf(k->tmp, sizeof(k->tmp), "manifest.%u", im->counter++);
		snprintf(k->final, sizeof(k->final), "%s", i ? sig : json);
		int fd = openat(st->tmpfd, k->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
		if (fd < 0)
			return stella_fail_errno(e, -errno, "store %s/tmp", st->dir);
		int r = i == 0 && im->streamed ? copy_fd(im->res->manifest_fd, fd) : write_full(fd, data[i], len[i]);
		if (close(fd) < 0 && r == 0)
			r = -errno;
		if (r < 0)
			return stella_fail_errno(e, r, "store %s: writing the manifest", st->dir);
	}
	return 0;
}

static int place_kept(struct import *im, struct stella_err *e)
{
	struct store *st = im->st;
	for (int i = 0; i < 2; i++) {
		struct kept *k = &im->kept[i];
		bool had = faccessat(st->manfd, k->final, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
		if (renameat(st->tmpfd, k->tmp, st->manfd, k->final) < 0)
			return stella_fail_errno(e, -errno, "store %s: manifests/%s", st->dir, k->final);
		k->placed = !had;
	}
	return 0;
}

/* The commit.  Every statement must run: a prepare that failed is a
 * failed import, not a skipped row (a current pointer to a snapshot
 * without its row, a ratchet that did not move).  A repair adds no row
 * (its journal line, after, tells other processes' data_version that the
 * store changed, so that a mount opens again what it refused). */
static int commit_row(struct import *im, const struct manifest *m, const char *mhex, uint64_t files, uint64_t bytes,
		      struct stella_err *e)
{
	struct store *st = im->st;
	sqlite3_stmt *s = NULL;
	pthread_mutex_lock(&st->lock);
	int r = exec(st, "BEGIN IMMEDIATE", e);
	bool began = r == 0;
	if (r == 0 && !im->repair &&
	    sqlite3_prepare_v2(st->db, "INSERT INTO snapshot VALUES(?1,?2,?3,?4,strftime('%s','now'),?5,?6)", -1, &s,
			       NULL) != SQLITE_OK) {
		r = db_err(st, e, "add snapshot");
	} else if (r == 0 && !im->repair) {
		sqlite3_bind_text(s, 1, m->version, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, m->kit_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 3, m->sequence);
		sqlite3_bind_text(s, 4, mhex, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 5, (sqlite3_int64)files);
		sqlite3_bind_int64(s, 6, (sqlite3_int64)bytes);
		if (sqlite3_step(s) != SQLITE_DONE)
			r = db_err(st, e, "add snapshot");
		sqlite3_finalize(s);
	}
	if (r == 0 && !im->repair &&
	    sqlite3_prepare_v2(st->db, "INSERT OR REPLACE INTO ratchet VALUES(?1,?2)", -1, &s, NULL) != SQLITE_OK) {
		r = db_err(st, e, "ratchet");
	} else if (r == 0 && !im->repair) {
		sqlite3_bind_text(s, 1, m->kit_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, m->sequence);
		if (sqlite3_step(s) != SQLITE_DONE)
			r = db_err(st, e, "ratchet");
		sqlite3_finalize(s);
	}
	char cur[129];
	if (r == 0)
		r = get_pointer(st, "current", cur, e);
	if (r == 0 && (im->o->activate || !*cur) && strcmp(cur, m->version)) {
		if (*cur)
			r = set_pointer(st, "previous", cur, e);
		if (r == 0)
			r = set_pointer(st, "current", m->version, e);
	}
	if (began)
		r = end_transaction(st, r, e);
	pthread_mutex_unlock(&st->lock);
	return r;
}

/* ---- finishing an import, in phases over struct import ----
 *
 * Once the kit has been walked (every carried member in tmp/): the nodes
 * of its index, checking what a delta kit left to its base (add_nodes);
 * the index's facts and the kept manifest (write_index); the files, the
 * manifest and the index renamed into place, durable (place_all); the row
 * that makes the snapshot real (commit_row); on any failure, what this
 * import placed taken back (take_back). */

/* A delta kit's artifact A it did not carry: the same in its base (one
 * rule: artifact_same), and a file's stored blob still intact. */
static int check_left_out(struct import *im, const struct artifact *a, struct index_node *bn, struct stella_err *e)
{
	const struct manifest *m = im->m;
	bool same = im->base && snapshot_lookup_path(im->base, a->name, bn) == 0;
	struct artifact ba;
	if (same) {
		index_node_artifact(bn, &ba);
		same = artifact_same(a, &ba);
	}
	if (!same)
		return stella_fail(e, -EBADMSG, "delta kit %s: \"%.300s\" is neither carried nor the same in base %s",
				   m->version, a->name, m->base_version);
	if (a->type == ARTIFACT_FILE && a->size > 0)
		return check_reused(im, a, e);
	return 0;
}

/* The artifacts once more, in manifest order: from the list, or pulled
 * again from the manifest file the walk checked. */
static int add_nodes(struct import *im, struct stella_err *e)
{
	const struct manifest *m = im->m;
	struct manifest_walk mw = { .m = m };
	struct artifact_iter it = { manifest_walk_next, &mw };
	struct manifest_cursor *cur = NULL;
	struct stella_err ce = { 0 };
	if (!m->artifacts && m->nlisted) {
		int r = manifest_cursor_open_fd(im->res->manifest_fd, &cur, &ce);
		if (r < 0)
			return stella_fail(e, r, "%s: %s", im->kit, stella_err_text(&ce, r));
		it = (struct artifact_iter){ manifest_cursor_next, cur };
	}
	struct index_node *bn = malloc(sizeof(*bn));
	int r = bn ? 0 : -ENOMEM;
	const struct artifact *a;
	for (size_t i = 0; r == 0; i++) {
		if ((r = it.next(it.ctx, &a, &ce)) <= 0) {
			if (r < 0)
				r = stella_fail(e, r, "%s: %s", im->kit, stella_err_text(&ce, r));
			break;
		}
		bool seen = i < im->nseen && (im->seen[i / 8] & (1u << (i % 8)));
		if (!seen && (r = check_left_out(im, a, bn, e)) < 0)
			break;
		r = index_add(im->ix, a, 0, -1, e);
		if (a->type == ARTIFACT_FILE) {
			im->files++;
			im->bytes += a->size;
		}
	}
	free(bn);
	manifest_cursor_free(cur);
	return r;
}

static int write_index(struct import *im, const struct kitverify_result *res, struct stella_err *e)
{
	hex_encode(res->manifest_sha256, 32, im->mhex);
	struct snapshot_facts sf = { .files = im->files, .bytes = im->bytes, .signers = res->signers };
	memcpy(sf.manifest_sha256, res->manifest_sha256, 32);
	int r = snapshot_write_facts(im->ix, im->m, &sf, e);
	if (r == 0)
		r = write_kept(im, im->mhex, e);
	if (r == 0)
		r = index_set_meta(im->ix, "complete", "1", 1, e);
	if (r == 0)
		r = index_finish(im->ix, e);
	index_close(im->ix);
	im->ix = NULL;
	return r;
}

/* Each blob and tree from tmp/ into its ab/ directory (one already there
 * is kept if intact, else mended). */
static int place_one(struct import *im, struct pending *p, struct stella_err *e)
{
	struct store *st = im->st;
	{
		int dfd = p->tree ? st->treefd : st->blobfd;
		char dir[3] = { p->final[0], p->final[1], 0 };
		if (mkdirat(dfd, dir, 0755) == 0)
			p->made_dir = true;
		else if (errno != EEXIST)
			return stella_fail_errno(e, -errno, "store %s: %s/%s", st->dir, p->tree ? "trees" : "blobs", dir);
		int r = 0;
		if (faccessat(dfd, p->final, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
			r = keep_or_mend(im, p, dfd, e); /* already stored: if intact */
		else if (renameat(st->tmpfd, p->tmp, dfd, p->final) < 0)
			r = stella_fail_errno(e, -errno, "store %s: storing a file", st->dir);
		else
			p->placed = true;
		if (r < 0)
			return r;
	}
	return 0;
}

static int place_files(struct import *im, struct stella_err *e)
{
	return pend_each(im, place_one, e);
}

/* Durable before visible: blob data and the index reach the disk, then
 * the renames, then (again durable, by commit_row) the row that makes it
 * real. */
static int place_all(struct import *im, struct stella_err *e)
{
	struct store *st = im->st;
	if (syncfs(st->dirfd) < 0)
		return stella_fail_errno(e, -errno, "store %s: sync", st->dir);
	int r = place_files(im, e);
	if (r == 0)
		r = place_kept(im, e);
	if (r < 0)
		return r;
	if (!(im->final = store_index_path(st, im->m->version)))
		return stella_fail_errno(e, -ENOMEM, "store %s: snapshot index", st->dir);
	if (rename(im->ix_tmp, im->final) < 0)
		return stella_fail_errno(e, -errno, "store %s: snapshot index", st->dir);
	im->index_placed = true;
	if (syncfs(st->dirfd) < 0)
		return stella_fail_errno(e, -errno, "store %s: sync", st->dir);
	return 0;
}

static int take_back_file(struct import *im, struct pending *p, struct stella_err *e)
{
	(void)e;
	if (p->placed)
		unlinkat(p->tree ? im->st->treefd : im->st->blobfd, p->final, 0);
	return 0;
}

static int take_back_dir(struct import *im, struct pending *p, struct stella_err *e)
{
	(void)e;
	if (p->made_dir) {
		char dir[3] = { p->final[0], p->final[1], 0 };
		unlinkat(p->tree ? im->st->treefd : im->st->blobfd, dir, AT_REMOVEDIR);
	}
	return 0;
}

/* No row names them: take back what this import put in place, so that a
 * failed import leaves the store as it found it.  Only what it placed: a
 * blob that was there before belongs to another snapshot. */
static void take_back(struct import *im)
{
	struct store *st = im->st;
	if (im->index_placed && !im->repair)
		unlink(im->final); /* (a repair's index replaced a good one: it stays) */
	for (int i = 0; i < 2; i++)
		if (im->kept[i].placed && !im->repair)
			unlinkat(st->manfd, im->kept[i].final, 0);
	struct stella_err e = { 0 };
	pend_each(im, take_back_file, &e);
	pend_each(im, take_back_dir, &e);
}

/* A repair is journalled as the command it was; the caller's report. */
static void report_done(struct import *im)
{
	if (im->repair) {
		char cmd[300], line[200];
		snprintf(cmd, sizeof(cmd), "import --repair %.270s", im->kit);
		snprintf(line, sizeof(line), "%s checked, %llu damaged stored file(s) replaced", im->m->version,
			 (unsigned long long)im->repaired);
		store_journal_add(im->st, (int64_t)time(NULL), (unsigned)getuid(), cmd, 0, line);
	}
	if (im->o->report) {
		im->o->report->existed = im->repair;
		im->o->report->repaired = im->repaired;
	}
}

static int finish_import(struct import *im, const struct kitverify_result *res, char version[129],
			 struct stella_err *e)
{
	im->m = res->manifest;
	im->res = res;
	im->streamed = res->has_manifest_fd;
	int r = add_nodes(im, e);
	if (r == 0)
		r = write_index(im, res, e);
	if (r < 0)
		return r; /* nothing placed yet */
	r = place_all(im, e);
	if (r == 0)
		r = commit_row(im, im->m, im->mhex, im->files, im->bytes, e);
	if (r < 0) {
		take_back(im);
		return r;
	}
	snprintf(version, 129, "%s", im->m->version);
	report_done(im);
	return 0;
}

int store_import(struct store *st, const char *kit, const struct store_import_opts *o, char version[129],
		 struct stella_err *e)
{
	struct import im = { .st = st, .o = o, .blob_fd = -1, .kit = kit, .pendfd = -1 };
	struct kitverify_opts vo = {
		.trust = o->trust, .threshold = o->threshold, .now = o->now, .allow_expired = o->allow_expired,
		.check_expiry = true, .content = true,
		.visit = imp_visit, .visit_ctx = &im, .check_manifest = imp_check, .data = imp_data,
		.source = o->source, .stream = true,
	};
	im.streamed = true;
	struct kitverify_result res = { 0 };
	int r = kit_verify(kit, &vo, &res, e);
	if (r == 0)
		r = finish_import(&im, &res, version, e);
	if (im.blob_fd >= 0)
		close(im.blob_fd);
	index_close(im.ix);
	snapshot_unref(im.base);
	if (r < 0) {
		/* nothing visible changed; take back what was half made */
		unlink(im.ix_tmp);
		empty_dir(st->tmpfd);
	}
	free(im.final);
	free(im.pend);
	if (im.pendfd >= 0)
		close(im.pendfd);
	free(im.seen);
	free(im.mjson);
	free(im.sig);
	hasher_free(im.hasher);
	kitverify_result_free(&res);
	return r;
}

/* ---- journal ---- */

int store_journal_add(struct store *st, int64_t when, unsigned uid, const char *cmd, int err, const char *result)
{
	sqlite3_stmt *s;
	int r = -EIO;
	pthread_mutex_lock(&st->lock);
	/* The journal is a record, not state: it need not wait for the disk
	 * (in WAL mode NORMAL still never corrupts; a crash may lose the last
	 * lines).  Switches and imports keep their fsync. */
	sqlite3_exec(st->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
	if (sqlite3_prepare_v2(st->db, "INSERT INTO journal(at,uid,command,err,result) VALUES(?1,?2,?3,?4,?5)", -1, &s,
			       NULL) == SQLITE_OK) {
		sqlite3_bind_int64(s, 1, when);
		sqlite3_bind_int64(s, 2, uid);
		sqlite3_bind_text(s, 3, cmd, -1, SQLITE_STATIC);
		sqlite3_bind_int(s, 4, err);
		sqlite3_bind_text(s, 5, result, -1, SQLITE_STATIC);
		r = sqlite3_step(s) == SQLITE_DONE ? 0 : -EIO;
		sqlite3_finalize(s);
	}
	/* keep it bounded */
	sqlite3_exec(st->db, "DELETE FROM journal WHERE id <= (SELECT max(id) FROM journal) - 1000", NULL, NULL, NULL);
	sqlite3_exec(st->db, "PRAGMA synchronous=FULL", NULL, NULL, NULL);
	pthread_mutex_unlock(&st->lock);
	return r;
}

char *store_journal_text(struct store *st, unsigned n)
{
	sqlite3_stmt *s;
	size_t cap = 4096, len = 0;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	out[0] = 0;
	int rc = SQLITE_ERROR;
	pthread_mutex_lock(&st->lock);
	if (sqlite3_prepare_v2(st->db, "SELECT at,uid,command,err,result FROM (SELECT * FROM journal ORDER BY id DESC "
			       "LIMIT ?1) ORDER BY id", -1, &s, NULL) == SQLITE_OK) {
		sqlite3_bind_int(s, 1, (int)n);
		while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
			char t[32];
			time_format(sqlite3_column_int64(s, 0), t);
			int err = sqlite3_column_int(s, 3);
			const char *res = (const char *)sqlite3_column_text(s, 4);
			size_t need = 1200;
			if (len + need > cap) {
				char *p = realloc(out, cap = 2 * cap + need);
				if (!p) {
					rc = SQLITE_NOMEM;
					break;
				}
				out = p;
			}
			len += (size_t)snprintf(out + len, cap - len, "%s uid=%lld %s -> %s%s%s\n", t,
						(long long)sqlite3_column_int64(s, 1), (const char *)sqlite3_column_text(s, 2),
						err ? strerrorname_np(err) : "ok", res && *res ? ": " : "", res ? res : "");
		}
		sqlite3_finalize(s);
	}
	pthread_mutex_unlock(&st->lock);
	if (rc != SQLITE_DONE) { /* unreadable (locked past the timeout...): the caller says what it has */
		free(out);
		return NULL;
	}
	return out;
}

/* ---- sweep ---- */

static int cmp32(const void *a, const void *b) { return memcmp(a, b, 32); }

struct digests {
	uint8_t (*v)[32];
	size_t n, cap;
};

static int digest_add(struct digests *d, const uint8_t *sha)
{
	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 1024;
		void *np = realloc(d->v, cap * 32);
		if (!np)
			return -ENOMEM;
		d->v = np;
		d->cap = cap;
	}
	memcpy(d->v[d->n++], sha, 32);
	return 0;
}

/* What a stored file keeps alive: its blob (named by its SHA-256) unless
 * empty, and its tree (named by its fs-verity digest) if it has levels. */
struct live {
	struct digests blobs, trees;
};

static int live_file(void *ctx, uint64_t size, const uint8_t *sha256, const uint8_t *fsverity)
{
	struct live *l = ctx;
	int r = 0;
	if (size > 0 && sha256)
		r = digest_add(&l->blobs, sha256);
	struct merkle_geom g;
	merkle_geom_init(&g, size);
	if (r == 0 && g.levels && fsverity)
		r = digest_add(&l->trees, fsverity);
	return r;
}

/* Unlink every ab/<hex> file under dirfd that is not in d. */
static uint64_t sweep_dir(int dirfd0, const struct digests *d)
{
	uint64_t removed = 0;
	int d1 = dup(dirfd0);
	DIR *top = d1 >= 0 ? fdopendir(d1) : NULL;
	if (top)
		rewinddir(top); /* the dup shares its offset with dirfd0 */
	struct dirent *de;
	while (top && (de = readdir(top))) {
		if (de->d_name[0] == '.')
			continue;
		int sub = openat(dirfd0, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *dd = sub >= 0 ? fdopendir(sub) : NULL;
		struct dirent *be;
		while (dd && (be = readdir(dd))) {
			uint8_t sha[32];
			if (be->d_name[0] == '.' || hex_decode(be->d_name, sha, 32) < 0)
				continue;
			if (d->n && bsearch(sha, d->v, d->n, 32, cmp32))
				continue;
			if (unlinkat(dirfd(dd), be->d_name, 0) == 0)
				removed++;
		}
		if (dd)
			closedir(dd);
		else if (sub >= 0)
			close(sub);
	}
	if (top)
		closedir(top);
	return removed;
}

/* Kept manifests no row names (removed snapshots, an import that died
 * before its commit). */
static void sweep_manifests(struct store *st, const struct store_snapshot *snaps, size_t n)
{
	DIR *d = dir_stream(st->manfd);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		size_t l = strlen(de->d_name);
		uint8_t sha[32];
		bool json = l == 69 && !strcmp(de->d_name + 64, ".json");
		bool sig = l == 68 && !strcmp(de->d_name + 64, ".sig");
		char hx[65];
		snprintf(hx, sizeof(hx), "%.64s", de->d_name);
		if ((!json && !sig) || hex_decode(hx, sha, 32) < 0)
			continue;
		bool live = false;
		for (size_t i = 0; i < n && !live; i++)
			live = !strncmp(snaps[i].manifest_sha256, de->d_name, 64);
		if (!live)
			unlinkat(st->manfd, de->d_name, 0);
	}
	if (d)
		closedir(d);
}

int store_sweep(struct store *st, uint64_t *removed, struct stella_err *e)
{
	struct store_snapshot *snaps = NULL;
	struct live keep = { 0 };
	size_t n = 0;
	int r = store_list(st, &snaps, &n, e);
	*removed = 0;
	for (size_t i = 0; r == 0 && i < n; i++) {
		char *p = store_index_path(st, snaps[i].version);
		if (!p || index_each_file(p, live_file, &keep) < 0)
			r = stella_fail(e, -EIO, "store %s: cannot read the index of %s", st->dir, snaps[i].version);
		free(p);
	}
	if (r < 0) {
		free(snaps);
		goto out; /* never sweep on a partial view */
	}
	sweep_manifests(st, snaps, n);
	free(snaps);
	if (keep.blobs.n)
		qsort(keep.blobs.v, keep.blobs.n, 32, cmp32);
	if (keep.trees.n)
		qsort(keep.trees.v, keep.trees.n, 32, cmp32);
	/* indexes no row names: left by an import that died before its commit */
	char sdir[4200];
	snprintf(sdir, sizeof(sdir), "%s/snapshots", st->dir);
	DIR *sd = opendir(sdir);
	struct dirent *se;
	while (sd && (se = readdir(sd))) {
		size_t l = strlen(se->d_name);
		if (l < 4 || strcmp(se->d_name + l - 3, ".db"))
			continue;
		char v[256];
		snprintf(v, sizeof(v), "%.*s", (int)(l - 3), se->d_name);
		pthread_mutex_lock(&st->lock);
		int known = has_snapshot(st, v, NULL, NULL);
		pthread_mutex_unlock(&st->lock);
		if (known == 0) /* not when the lookup failed: that may be a live one */
			unlinkat(dirfd(sd), se->d_name, 0);
	}
	if (sd)
		closedir(sd);
	*removed = sweep_dir(st->blobfd, &keep.blobs);
	sweep_dir(st->treefd, &keep.trees);
out:
	free(keep.blobs.v);
	free(keep.trees.v);
	return r;
}
