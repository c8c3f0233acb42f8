#include "index.h"

#include <pthread.h>
#include <sqlite3.h>
#include <string.h>
#include <unistd.h>

#include "path.h"
#include "util.h"

#define POOL 8

enum { Q_GET, Q_LOOKUP, Q_READDIR, Q_TREE, Q_META, NQUERIES };

static const char *const queries[] = {
	[Q_GET] = "SELECT ino,parent,name,type,mode,size,data_off,tree_off,sha256,fsverity,target FROM node WHERE ino=?1",
	[Q_LOOKUP] = "SELECT ino,parent,name,type,mode,size,data_off,tree_off,sha256,fsverity,target FROM node WHERE parent=?1 AND name=?2",
	[Q_READDIR] = "SELECT ino,parent,name,type,mode,size,data_off,tree_off,sha256,fsverity,target FROM node WHERE parent=?1 AND ino>?2 ORDER BY ino",
	[Q_TREE] = "SELECT data FROM tree WHERE fsverity=?1",
	[Q_META] = "SELECT value FROM meta WHERE key=?1",
};

/* A reading connection (one descriptor).  Its fields are under conns.lock. */
struct conn {
	sqlite3 *db;               /* NULL: closed (opened again on demand) */
	sqlite3_stmt *q[NQUERIES];
	bool busy;                 /* lent to a query, or being opened */
	struct conn *prev, *next;  /* in conns' LRU while open and idle */
};

struct index {
	char *path;
	/* building */
	sqlite3 *w;
	sqlite3_stmt *ins_node, *ins_tree, *ins_point, *ins_meta, *find;
	uint64_t next_ino;
	char *last_dir;          /* the parent of the previous artifact, and its ino */
	uint64_t last_dir_ino;
	/* reading: at most POOL connections, opened as concurrent queries
	 * need them, within the process's budget (conns) */
	pthread_cond_t cond;     /* one of pool went idle (with conns.lock) */
	struct conn pool[POOL];
};

/* Every index's reading connections count against one budget for the
 * process: a store serves a snapshot per kit ever imported, and eight
 * descriptors each for the mount's life ran the daemon out of descriptors
 * after a hundred.  An idle connection of any index is closed (least
 * recently used first) when another needs one past the budget; a query
 * waits only when every connection in the budget is in use.  A thread
 * holds one connection at a time (no index call runs inside another), so
 * waiting always ends. */
static struct {
	pthread_mutex_t lock;    /* the fields below, and every struct conn */
	pthread_cond_t cond;     /* a connection went idle or was closed */
	unsigned max;            /* the budget */
	unsigned open;           /* connections open or being opened */
	struct conn *head, *tail; /* idle open connections, head most recent */
} conns = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, INDEX_CONNS_DEFAULT, 0, NULL, NULL };

void index_set_conn_budget(unsigned max)
{
	pthread_mutex_lock(&conns.lock);
	conns.max = max < 2 ? 2 : max;
	pthread_mutex_unlock(&conns.lock);
}

unsigned index_conn_budget(void)
{
	pthread_mutex_lock(&conns.lock);
	unsigned m = conns.max;
	pthread_mutex_unlock(&conns.lock);
	return m;
}

static void idle_push(struct conn *c)
{
	c->prev = NULL;
	c->next = conns.head;
	if (conns.head)
		conns.head->prev = c;
	else
		conns.tail = c;
	conns.head = c;
}

static void idle_remove(struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		conns.head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		conns.tail = c->prev;
	c->prev = c->next = NULL;
}

/* Closes handles taken out of a struct conn (no lock needed: nobody else
 * can reach them). */
static void conn_close(sqlite3 *db, sqlite3_stmt **q)
{
	for (int i = 0; i < NQUERIES; i++)
		sqlite3_finalize(q[i]);
	if (db)
		sqlite3_close(db);
}

const char index_schema[] =
	"PRAGMA page_size=4096;"
	"CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB);"
	"CREATE TABLE node(ino INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL,"
	" type INTEGER NOT NULL, mode INTEGER NOT NULL, size INTEGER NOT NULL, data_off INTEGER NOT NULL,"
	" tree_off INTEGER NOT NULL, sha256 BLOB, fsverity BLOB, target BLOB);"
	"CREATE UNIQUE INDEX node_dir ON node(parent, name);"
	/* readdir walks a directory's children in ino order; without this
	 * every call sorted the whole directory (ls of 100 000 files: 3.5 s) */
	"CREATE INDEX node_children ON node(parent, ino);"
	"CREATE TABLE tree(fsverity BLOB PRIMARY KEY, data BLOB NOT NULL);"
	"CREATE TABLE point(out INTEGER PRIMARY KEY, inpos INTEGER NOT NULL, bits INTEGER NOT NULL, window BLOB);";

static int db_fail(struct index *ix, sqlite3 *db, struct stella_err *e, const char *what)
{
	int code = sqlite3_errcode(db);
	int rc = code == SQLITE_FULL ? -ENOSPC : code == SQLITE_NOMEM ? -ENOMEM :
		 code == SQLITE_CORRUPT || code == SQLITE_NOTADB ? -EBADMSG : -EIO;
	return stella_fail(e, rc, "index %s: %s: %s", ix->path, what, sqlite3_errmsg(db));
}

static void index_free(struct index *ix)
{
	if (!ix)
		return;
	sqlite3_finalize(ix->ins_node);
	sqlite3_finalize(ix->ins_tree);
	sqlite3_finalize(ix->ins_point);
	sqlite3_finalize(ix->ins_meta);
	sqlite3_finalize(ix->find);
	if (ix->w)
		sqlite3_close(ix->w);
	/* Nobody queries an index being freed: its open connections are
	 * idle, in the LRU, and leave the budget. */
	struct conn gone[POOL];
	pthread_mutex_lock(&conns.lock);
	for (int i = 0; i < POOL; i++) {
		struct conn *c = &ix->pool[i];
		gone[i] = *c;
		if (c->db) {
			idle_remove(c);
			conns.open--;
		}
		c->db = NULL;
	}
	pthread_cond_broadcast(&conns.cond);
	pthread_mutex_unlock(&conns.lock);
	for (int i = 0; i < POOL; i++)
		conn_close(gone[i].db, gone[i].q);
	pthread_cond_destroy(&ix->cond);
	free(ix->last_dir);
	free(ix->path);
	free(ix);
}

static struct index *index_new(const char *path)
{
	struct index *ix = calloc(1, sizeof(*ix));
	if (!ix)
		return NULL;
	pthread_cond_init(&ix->cond, NULL);
	if (!(ix->path = strdup(path))) {
		index_free(ix);
		return NULL;
	}
	return ix;
}

int index_create(const char *path, struct index **out, struct stella_err *e)
{
	struct index *ix = index_new(path);
	if (!ix)
		return -ENOMEM;
	unlink(path);
	int r;
	if (sqlite3_open_v2(path, &ix->w, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
	    sqlite3_exec(ix->w, index_schema, NULL, NULL, NULL) != SQLITE_OK ||
	    /* One transaction for the whole build; nothing is visible, or
	     * usable, until index_finish commits and the caller renames. */
	    sqlite3_exec(ix->w, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(ix->w, "INSERT INTO node VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)", -1, &ix->ins_node, NULL) ||
	    sqlite3_prepare_v2(ix->w, "INSERT OR IGNORE INTO tree VALUES(?1,?2)", -1, &ix->ins_tree, NULL) ||
	    sqlite3_prepare_v2(ix->w, "INSERT INTO point VALUES(?1,?2,?3,?4)", -1, &ix->ins_point, NULL) ||
	    sqlite3_prepare_v2(ix->w, "INSERT OR REPLACE INTO meta VALUES(?1,?2)", -1, &ix->ins_meta, NULL) ||
	    sqlite3_prepare_v2(ix->w, "SELECT ino,type FROM node WHERE parent=?1 AND name=?2", -1, &ix->find, NULL)) {
		r = ix->w ? db_fail(ix, ix->w, e, "create") : -ENOMEM;
		index_free(ix);
		return r;
	}
	/* the root */
	ix->next_ino = INDEX_ROOT_INO;
	struct artifact root = { .name = (char *)"", .type = ARTIFACT_DIR, .mode = 0755 };
	sqlite3_bind_int64(ix->ins_node, 1, INDEX_ROOT_INO);
	sqlite3_bind_int64(ix->ins_node, 2, INDEX_ROOT_INO);
	sqlite3_bind_blob(ix->ins_node, 3, "", 0, SQLITE_STATIC);
	sqlite3_bind_int(ix->ins_node, 4, root.type);
	sqlite3_bind_int(ix->ins_node, 5, (int)root.mode);
	sqlite3_bind_int64(ix->ins_node, 6, 0);
	sqlite3_bind_int64(ix->ins_node, 7, 0);
	sqlite3_bind_int64(ix->ins_node, 8, -1);
	for (int i = 9; i <= 11; i++)
		sqlite3_bind_null(ix->ins_node, i);
	if (sqlite3_step(ix->ins_node) != SQLITE_DONE) {
		r = db_fail(ix, ix->w, e, "create");
		index_free(ix);
		return r;
	}
	sqlite3_reset(ix->ins_node);
	ix->next_ino = INDEX_ROOT_INO + 1;
	if (!(ix->last_dir = strdup(""))) {
		index_free(ix);
		return -ENOMEM;
	}
	ix->last_dir_ino = INDEX_ROOT_INO;
	*out = ix;
	return 0;
}

static int insert(struct index *ix, uint64_t parent, const char *name, size_t nlen, const struct artifact *a,
		  uint64_t data_off, int64_t tree_off, uint64_t *ino, struct stella_err *e)
{
	sqlite3_stmt *s = ix->ins_node;
	*ino = ix->next_ino++;
	sqlite3_bind_int64(s, 1, (sqlite3_int64)*ino);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)parent);
	sqlite3_bind_blob(s, 3, name, (int)nlen, SQLITE_STATIC);
	sqlite3_bind_int(s, 4, a->type);
	sqlite3_bind_int(s, 5, (int)a->mode);
	sqlite3_bind_int64(s, 6, (sqlite3_int64)a->size);
	sqlite3_bind_int64(s, 7, (sqlite3_int64)data_off);
	sqlite3_bind_int64(s, 8, tree_off);
	if (a->type == ARTIFACT_FILE) {
		sqlite3_bind_blob(s, 9, a->sha256, 32, SQLITE_STATIC);
		sqlite3_bind_blob(s, 10, a->fsverity, 32, SQLITE_STATIC);
	} else {
		sqlite3_bind_null(s, 9);
		sqlite3_bind_null(s, 10);
	}
	if (a->target)
		sqlite3_bind_blob(s, 11, a->target, (int)strlen(a->target), SQLITE_STATIC);
	else
		sqlite3_bind_null(s, 11);
	int r = sqlite3_step(s) == SQLITE_DONE ? 0 : db_fail(ix, ix->w, e, "insert");
	sqlite3_reset(s);
	return r;
}

/* The ino of directory `dir` (a path), creating implied directories. */
static int resolve_dir(struct index *ix, const char *dir, uint64_t *ino, struct stella_err *e)
{
	if (!strcmp(dir, ix->last_dir)) {
		*ino = ix->last_dir_ino;
		return 0;
	}
	uint64_t cur = INDEX_ROOT_INO;
	for (const char *p = dir; *p;) {
		size_t n = strcspn(p, "/");
		sqlite3_bind_int64(ix->find, 1, (sqlite3_int64)cur);
		sqlite3_bind_blob(ix->find, 2, p, (int)n, SQLITE_STATIC);
		int st = sqlite3_step(ix->find);
		if (st == SQLITE_ROW) {
			int type = sqlite3_column_int(ix->find, 1);
			cur = (uint64_t)sqlite3_column_int64(ix->find, 0);
			sqlite3_reset(ix->find);
			if (type != ARTIFACT_DIR)
				return stella_fail(e, -EBADMSG, "index: \"%s\" is not a directory", dir);
		} else {
			sqlite3_reset(ix->find);
			if (st != SQLITE_DONE)
				return db_fail(ix, ix->w, e, "lookup");
			struct artifact implied = { .type = ARTIFACT_DIR, .mode = 0755 };
			int r = insert(ix, cur, p, n, &implied, 0, -1, &cur, e);
			if (r < 0)
				return r;
		}
		p += n;
		if (*p == '/')
			p++;
	}
	char *copy = strdup(dir);
	if (!copy)
		return -ENOMEM;
	free(ix->last_dir);
	ix->last_dir = copy;
	ix->last_dir_ino = cur;
	*ino = cur;
	return 0;
}

int index_add(struct index *ix, const struct artifact *a, uint64_t data_off, int64_t tree_off,
	      struct stella_err *e)
{
	size_t pl = path_parent_len(a->name);
	char dir[pl + 1];
	memcpy(dir, a->name, pl);
	dir[pl] = 0;
	uint64_t parent = 0, ino;
	int r = resolve_dir(ix, dir, &parent, e);
	if (r < 0)
		return r;
	const char *base = a->name + (pl ? pl + 1 : 0);
	return insert(ix, parent, base, strlen(base), a, data_off, tree_off, &ino, e);
}

int index_add_tree(struct index *ix, const uint8_t fsverity[32], const uint8_t *tree, size_t len,
		   struct stella_err *e)
{
	sqlite3_bind_blob(ix->ins_tree, 1, fsverity, 32, SQLITE_STATIC);
	sqlite3_bind_blob64(ix->ins_tree, 2, tree, len, SQLITE_STATIC);
	int r = sqlite3_step(ix->ins_tree) == SQLITE_DONE ? 0 : db_fail(ix, ix->w, e, "insert tree");
	sqlite3_reset(ix->ins_tree);
	return r;
}

int index_add_points(struct index *ix, const struct source_point *pts, size_t n, uint64_t total,
		     struct stella_err *e)
{
	for (size_t i = 0; i < n; i++) {
		sqlite3_stmt *s = ix->ins_point;
		sqlite3_bind_int64(s, 1, (sqlite3_int64)pts[i].out);
		sqlite3_bind_int64(s, 2, (sqlite3_int64)pts[i].in);
		sqlite3_bind_int(s, 3, pts[i].bits);
		if (pts[i].window)
			sqlite3_bind_blob(s, 4, pts[i].window, SOURCE_WINDOW, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 4);
		int r = sqlite3_step(s) == SQLITE_DONE ? 0 : db_fail(ix, ix->w, e, "insert seek point");
		sqlite3_reset(s);
		if (r < 0)
			return r;
	}
	char buf[32];
	snprintf(buf, sizeof(buf), "%llu", (unsigned long long)total);
	return index_set_meta(ix, "streamSize", buf, strlen(buf), e);
}

int index_set_meta(struct index *ix, const char *key, const void *val, size_t len, struct stella_err *e)
{
	sqlite3_bind_text(ix->ins_meta, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_blob(ix->ins_meta, 2, val, (int)len, SQLITE_STATIC);
	int r = sqlite3_step(ix->ins_meta) == SQLITE_DONE ? 0 : db_fail(ix, ix->w, e, "insert meta");
	sqlite3_reset(ix->ins_meta);
	return r;
}

int index_reopen(const char *path, struct index **out, struct stella_err *e)
{
	struct index *ix = index_new(path);
	if (!ix)
		return -ENOMEM;
	int r = 0;
	if (sqlite3_open_v2(path, &ix->w, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
	    (index_harden(ix->w), false) ||
	    sqlite3_exec(ix->w, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA mmap_size=0; BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(ix->w, "INSERT INTO point VALUES(?1,?2,?3,?4)", -1, &ix->ins_point, NULL) ||
	    sqlite3_prepare_v2(ix->w, "INSERT OR REPLACE INTO meta VALUES(?1,?2)", -1, &ix->ins_meta, NULL))
		r = ix->w ? db_fail(ix, ix->w, e, "open") : -ENOMEM;
	if (r < 0) {
		index_free(ix);
		return r;
	}
	*out = ix;
	return 0;
}

int index_rebase_points(struct index *ix, const struct source_point *head, size_t nhead, uint64_t out_base,
			uint64_t in_base, uint64_t body_size, struct stella_err *e)
{
	sqlite3_stmt *s = NULL;
	struct source_point *body = NULL;
	size_t n = 0, cap = 0;
	int r = 0, st;
	if (sqlite3_prepare_v2(ix->w, "SELECT out,inpos FROM point ORDER BY out", -1, &s, NULL) != SQLITE_OK)
		return db_fail(ix, ix->w, e, "seek points");
	while (r == 0 && (st = sqlite3_step(s)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			struct source_point *p = realloc(body, cap * sizeof(*p));
			if (!p) {
				r = -ENOMEM;
				break;
			}
			body = p;
		}
		uint64_t o = (uint64_t)sqlite3_column_int64(s, 0), i = (uint64_t)sqlite3_column_int64(s, 1);
		/* checked as input by source_set_points at every open */
		body[n++] = (struct source_point){ .out = o > UINT64_MAX - out_base ? UINT64_MAX : o + out_base,
						   .in = i > UINT64_MAX - in_base ? UINT64_MAX : i + in_base };
	}
	if (r == 0 && st != SQLITE_DONE)
		r = db_fail(ix, ix->w, e, "seek points");
	sqlite3_finalize(s);
	if (r == 0 && sqlite3_exec(ix->w, "DELETE FROM point", NULL, NULL, NULL) != SQLITE_OK)
		r = db_fail(ix, ix->w, e, "seek points");
	size_t keep = 0;
	while (keep < nhead && head[keep].out < out_base)
		keep++;
	if (r == 0)
		r = index_add_points(ix, head, keep, out_base + body_size, e);
	if (r == 0)
		r = index_add_points(ix, body, n, out_base + body_size, e);
	free(body);
	return r;
}

/* Open c (reserved by the caller, outside conns.lock: this reads the file). */
void index_harden(sqlite3 *db)
{
	sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
	sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
	sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, NULL);
	sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_VIEW, 0, NULL);
}

static int conn_open(struct index *ix, struct conn *c, struct stella_err *e)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *q[NQUERIES] = { 0 };
	int r = 0;
	if (sqlite3_open_v2(ix->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		r = db ? db_fail(ix, db, e, "open") : -ENOMEM;
	} else {
		/* Small caches: the kernel caches what FUSE serves, the page
		 * cache keeps the file; this bounds the daemon's RSS. */
		sqlite3_exec(db, "PRAGMA cache_size=-512; PRAGMA query_only=1; PRAGMA mmap_size=0", NULL, NULL, NULL);
		for (int i = 0; i < NQUERIES && r == 0; i++)
			if (sqlite3_prepare_v3(db, queries[i], -1, SQLITE_PREPARE_PERSISTENT, &q[i], NULL) != SQLITE_OK)
				r = db_fail(ix, db, e, "prepare");
	}
	if (r < 0) {
		conn_close(db, q);
		return r;
	}
	pthread_mutex_lock(&conns.lock);
	c->db = db;
	memcpy(c->q, q, sizeof(q));
	pthread_mutex_unlock(&conns.lock);
	return 0;
}

/* A connection of ix for one query: an idle one of its own, or a new one
 * within the budget (closing the least recently used idle connection of
 * any index when the budget is spent). */
static int conn_get(struct index *ix, struct conn **out, struct stella_err *e)
{
	pthread_mutex_lock(&conns.lock);
	struct conn *c, *slot;
	for (;;) {
		c = slot = NULL;
		for (int i = 0; i < POOL && !c; i++) {
			struct conn *x = &ix->pool[i];
			if (!x->busy && x->db)
				c = x;
			else if (!x->busy && !slot)
				slot = x;
		}
		if (c) {
			idle_remove(c);
			c->busy = true;
			pthread_mutex_unlock(&conns.lock);
			*out = c;
			return 0;
		}
		if (slot && (conns.open < conns.max || conns.tail))
			break;
		pthread_cond_wait(slot ? &conns.cond : &ix->cond, &conns.lock);
	}
	sqlite3 *old = NULL;
	sqlite3_stmt *oldq[NQUERIES] = { 0 };
	if (conns.open >= conns.max) {
		struct conn *v = conns.tail; /* idle: nobody can be using it */
		idle_remove(v);
		old = v->db;
		memcpy(oldq, v->q, sizeof(oldq));
		v->db = NULL;
		memset(v->q, 0, sizeof(v->q));
	} else {
		conns.open++;
	}
	slot->busy = true;
	pthread_mutex_unlock(&conns.lock);
	conn_close(old, oldq);
	int r = conn_open(ix, slot, e);
	if (r < 0) {
		pthread_mutex_lock(&conns.lock);
		slot->busy = false;
		conns.open--;
		pthread_cond_signal(&ix->cond);
		pthread_cond_broadcast(&conns.cond);
		pthread_mutex_unlock(&conns.lock);
		return r;
	}
	*out = slot;
	return 0;
}

static void conn_put(struct index *ix, struct conn *c, sqlite3_stmt *s)
{
	if (s)
		sqlite3_reset(s);
	pthread_mutex_lock(&conns.lock);
	c->busy = false;
	idle_push(c);
	pthread_cond_signal(&ix->cond);
	pthread_cond_broadcast(&conns.cond);
	pthread_mutex_unlock(&conns.lock);
}

int index_finish(struct index *ix, struct stella_err *e)
{
	if (sqlite3_exec(ix->w, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		return db_fail(ix, ix->w, e, "commit");
	sqlite3_finalize(ix->ins_node);
	sqlite3_finalize(ix->ins_tree);
	sqlite3_finalize(ix->ins_point);
	sqlite3_finalize(ix->ins_meta);
	sqlite3_finalize(ix->find);
	ix->ins_node = ix->ins_tree = ix->ins_point = ix->ins_meta = ix->find = NULL;
	if (sqlite3_close(ix->w) != SQLITE_OK)
		return db_fail(ix, ix->w, e, "close");
	ix->w = NULL;
	return 0;
}

int index_open(const char *path, struct index **out, struct stella_err *e)
{
	struct index *ix = index_new(path);
	if (!ix)
		return -ENOMEM;
	/* One connection now: a file that is no index fails here, not at
	 * the first query.  The others open as queries need them. */
	struct conn *c;
	int r = conn_get(ix, &c, e);
	if (r < 0) {
		index_free(ix);
		return r;
	}
	conn_put(ix, c, NULL);
	*out = ix;
	return 0;
}

void index_close(struct index *ix)
{
	index_free(ix);
}

/* A connection for one query; a connection that cannot be opened (again:
 * it may have been closed for another index) fails the query. */
static int conn_for_query(struct index *ix, struct conn **c)
{
	int r = conn_get(ix, c, NULL);
	return r == -ENOMEM || r == 0 ? r : -EIO;
}

static void row_to_node(sqlite3_stmt *s, struct index_node *n)
{
	n->ino = (uint64_t)sqlite3_column_int64(s, 0);
	n->parent = (uint64_t)sqlite3_column_int64(s, 1);
	int nl = sqlite3_column_bytes(s, 2);
	if (nl > 255)
		nl = 255;
	memcpy(n->name, sqlite3_column_blob(s, 2) ? sqlite3_column_blob(s, 2) : "", (size_t)nl);
	n->name[nl] = 0;
	n->type = (enum artifact_type)sqlite3_column_int(s, 3);
	n->mode = (uint32_t)sqlite3_column_int(s, 4);
	n->size = (uint64_t)sqlite3_column_int64(s, 5);
	n->data_off = (uint64_t)sqlite3_column_int64(s, 6);
	n->tree_off = sqlite3_column_int64(s, 7);
	/* a row read back from a file: a digest of the wrong length is none
	 * (zeros match no content), never whatever was in *n before */
	memset(n->sha256, 0, 32);
	memset(n->fsverity, 0, 32);
	if (sqlite3_column_bytes(s, 8) == 32)
		memcpy(n->sha256, sqlite3_column_blob(s, 8), 32);
	if (sqlite3_column_bytes(s, 9) == 32)
		memcpy(n->fsverity, sqlite3_column_blob(s, 9), 32);
	int tl = sqlite3_column_bytes(s, 10);
	if (tl > 4096)
		tl = 4096;
	if (tl > 0)
		memcpy(n->target, sqlite3_column_blob(s, 10), (size_t)tl);
	n->target[tl] = 0;
}

/* One node by query q: key binds ?1, name (when given) ?2. */
static int one_node(struct index *ix, int q, uint64_t key, const char *name, struct index_node *n)
{
	struct conn *c;
	int r = conn_for_query(ix, &c);
	if (r < 0)
		return r;
	sqlite3_stmt *s = c->q[q];
	sqlite3_bind_int64(s, 1, (sqlite3_int64)key);
	if (name)
		sqlite3_bind_blob(s, 2, name, (int)strlen(name), SQLITE_STATIC);
	int st = sqlite3_step(s);
	if (st == SQLITE_ROW) {
		row_to_node(s, n);
		/* A damaged SQLite index can hand back another row than the one
		 * asked for; the row itself says which it is. */
		if (name ? n->parent != key || strcmp(n->name, name) : n->ino != key)
			r = -EIO;
		if (n->ino > INDEX_MAX_INO || n->parent > INDEX_MAX_INO)
			r = -EIO;
	} else {
		r = st == SQLITE_DONE ? -ENOENT : -EIO;
	}
	conn_put(ix, c, s);
	return r;
}

int index_get(struct index *ix, uint64_t ino, struct index_node *n)
{
	return one_node(ix, Q_GET, ino, NULL, n);
}

int index_lookup(struct index *ix, uint64_t parent, const char *name, struct index_node *n)
{
	return one_node(ix, Q_LOOKUP, parent, name, n);
}

int index_lookup_path(struct index *ix, const char *path, struct index_node *n)
{
	char buf[4097];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	uint64_t ino = INDEX_ROOT_INO;
	char *save = NULL, *c = strtok_r(buf, "/", &save);
	if (!c)
		return index_get(ix, ino, n); /* the root */
	for (; c; c = strtok_r(NULL, "/", &save)) {
		int r = index_lookup(ix, ino, c, n);
		if (r < 0)
			return r;
		ino = n->ino;
	}
	return 0;
}

int index_each_file(const char *path,
		    int (*cb)(void *ctx, uint64_t size, const uint8_t *sha256, const uint8_t *fsverity),
		    void *ctx)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	int r = 0, rc = SQLITE_ERROR;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "SELECT size,sha256,fsverity FROM node WHERE type=?1", -1, &s, NULL) != SQLITE_OK)
		r = -EIO;
	else
		sqlite3_bind_int(s, 1, ARTIFACT_FILE);
	while (r == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		const uint8_t *sha = sqlite3_column_bytes(s, 1) == 32 ? sqlite3_column_blob(s, 1) : NULL;
		const uint8_t *fsv = sqlite3_column_bytes(s, 2) == 32 ? sqlite3_column_blob(s, 2) : NULL;
		r = cb(ctx, (uint64_t)sqlite3_column_int64(s, 0), sha, fsv);
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = -EIO;
	sqlite3_finalize(s);
	sqlite3_close(db);
	return r;
}

void index_node_artifact(const struct index_node *n, struct artifact *a)
{
	*a = (struct artifact){ .name = (char *)n->name, .type = n->type, .size = n->size, .mode = n->mode,
				.target = (char *)n->target };
	memcpy(a->sha256, n->sha256, 32);
	memcpy(a->fsverity, n->fsverity, 32);
}

int index_readdir(struct index *ix, uint64_t dir, uint64_t after,
		  int (*cb)(void *ctx, const struct index_node *n), void *ctx)
{
	struct conn *c;
	int r = conn_for_query(ix, &c);
	if (r < 0)
		return r;
	sqlite3_stmt *s = c->q[Q_READDIR];
	sqlite3_bind_int64(s, 1, (sqlite3_int64)dir);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)after);
	struct index_node *n = malloc(sizeof(*n));
	int st = SQLITE_DONE;
	r = n ? 0 : -ENOMEM;
	uint64_t last = after;
	while (r == 0 && (st = sqlite3_step(s)) == SQLITE_ROW) {
		row_to_node(s, n);
		/* Checked, not trusted: a damaged SQLite index can list a row of
		 * another directory, or the root under a subdirectory (`verify
		 * all` then walked in a circle: found by fuzz_index), or go
		 * back, and the kernel would ask again from the same offset
		 * forever.  The builder numbers a directory before anything in
		 * it, so a child's ino is above its parent's: no walk down the
		 * tree can come back. */
		bool root_self = n->ino == dir && dir == INDEX_ROOT_INO;
		if (n->parent != dir || n->ino <= last || (n->ino <= dir && !root_self) || n->ino > INDEX_MAX_INO) {
			r = -EIO;
			break;
		}
		last = n->ino;
		if (n->ino == dir)
			continue; /* the root is its own parent */
		if (cb(ctx, n))
			break;
	}
	if (r == 0 && st != SQLITE_ROW && st != SQLITE_DONE)
		r = -EIO;
	free(n);
	conn_put(ix, c, s);
	return r;
}

static int blob_query(struct index *ix, int q, const void *key, int keylen, bool text, uint8_t **out, size_t *len)
{
	struct conn *c;
	int r = conn_for_query(ix, &c);
	if (r < 0)
		return r;
	sqlite3_stmt *s = c->q[q];
	if (text)
		sqlite3_bind_text(s, 1, key, keylen, SQLITE_STATIC);
	else
		sqlite3_bind_blob(s, 1, key, keylen, SQLITE_STATIC);
	int st = sqlite3_step(s);
	if (st == SQLITE_ROW) {
		size_t n = (size_t)sqlite3_column_bytes(s, 0);
		uint8_t *buf = malloc(n + 1);
		if (buf) {
			if (n)
				memcpy(buf, sqlite3_column_blob(s, 0), n);
			buf[n] = 0;
			*out = buf;
			*len = n;
		} else {
			r = -ENOMEM;
		}
	} else {
		r = st == SQLITE_DONE ? -ENOENT : -EIO;
	}
	conn_put(ix, c, s);
	return r;
}

int index_get_meta(struct index *ix, const char *key, char **val, size_t *len)
{
	size_t l;
	int r = blob_query(ix, Q_META, key, -1, true, (uint8_t **)val, &l);
	if (r == 0 && len)
		*len = l;
	return r;
}

int index_get_tree(struct index *ix, const uint8_t fsverity[32], uint8_t **tree, size_t *len)
{
	return blob_query(ix, Q_TREE, fsverity, 32, false, tree, len);
}

int index_get_points(struct index *ix, struct source_point **pts, size_t *n, uint64_t *total)
{
	struct conn *c;
	int r = conn_for_query(ix, &c);
	if (r < 0)
		return r;
	sqlite3_stmt *s = NULL;
	size_t cap = 0, cnt = 0;
	struct source_point *p = NULL;
	if (sqlite3_prepare_v2(c->db, "SELECT out,inpos,bits,window FROM point ORDER BY out", -1, &s, NULL) != SQLITE_OK) {
		conn_put(ix, c, NULL);
		return -EIO;
	}
	int st;
	while ((st = sqlite3_step(s)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? 2 * cap : 64;
			struct source_point *np = realloc(p, cap * sizeof(*np));
			if (!np) {
				r = -ENOMEM;
				break;
			}
			p = np;
		}
		struct source_point *x = &p[cnt];
		x->out = (uint64_t)sqlite3_column_int64(s, 0);
		x->in = (uint64_t)sqlite3_column_int64(s, 1);
		x->bits = (uint8_t)sqlite3_column_int(s, 2);
		x->window = NULL;
		if (sqlite3_column_bytes(s, 3) == SOURCE_WINDOW) {
			if (!(x->window = malloc(SOURCE_WINDOW))) {
				r = -ENOMEM;
				break;
			}
			memcpy(x->window, sqlite3_column_blob(s, 3), SOURCE_WINDOW);
		}
		cnt++;
	}
	if (r == 0 && st != SQLITE_DONE)
		r = -EIO;
	sqlite3_finalize(s);
	conn_put(ix, c, NULL);
	if (r < 0) {
		for (size_t i = 0; i < cnt; i++)
			free(p[i].window);
		free(p);
		return r;
	}
	char *v = NULL;
	if (index_get_meta(ix, "streamSize", &v, NULL) == 0) {
		*total = strtoull(v, NULL, 10);
		free(v);
	}
	*pts = p;
	*n = cnt;
	return 0;
}
