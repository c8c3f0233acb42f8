#include "kitindex.h"

#include <sqlite3.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "bounds.h"
#include "index.h"
#include "merkle.h"
#include "merklefile.h"
#include "path.h"
#include "util.h"

/* ---- the directories index_add has made so far, by (parent, name) ---- */

struct dnode {
	struct dnode *next;
	uint64_t parent, ino;
	size_t len;
	char name[];
};

struct dirs {
	struct dnode **b;
	size_t nb, n;
};

static uint64_t dkey(uint64_t parent, const char *name, size_t len)
{
	uint64_t h = 1469598103934665603ull ^ parent;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)name[i]) * 1099511628211ull;
	return h;
}

static void dirs_free(struct dirs *d)
{
	for (size_t i = 0; i < d->nb; i++)
		for (struct dnode *x = d->b[i], *nx; x; x = nx) {
			nx = x->next;
			free(x);
		}
	free(d->b);
}

static int dirs_grow(struct dirs *d)
{
	size_t nb = d->nb ? 2 * d->nb : 1024;
	struct dnode **b = calloc(nb, sizeof(*b));
	if (!b)
		return -ENOMEM;
	for (size_t i = 0; i < d->nb; i++)
		for (struct dnode *x = d->b[i], *nx; x; x = nx) {
			nx = x->next;
			size_t k = dkey(x->parent, x->name, x->len) & (nb - 1);
			x->next = b[k];
			b[k] = x;
		}
	free(d->b);
	d->b = b;
	d->nb = nb;
	return 0;
}

static uint64_t dirs_find(const struct dirs *d, uint64_t parent, const char *name, size_t len)
{
	if (!d->nb)
		return 0;
	for (struct dnode *x = d->b[dkey(parent, name, len) & (d->nb - 1)]; x; x = x->next)
		if (x->parent == parent && x->len == len && !memcmp(x->name, name, len))
			return x->ino;
	return 0;
}

static int dirs_add(struct dirs *d, uint64_t parent, const char *name, size_t len, uint64_t ino)
{
	if (d->n >= d->nb / 2 * 1 + d->nb / 4 && dirs_grow(d) < 0)
		return -ENOMEM;
	struct dnode *x = malloc(sizeof(*x) + len);
	if (!x)
		return -ENOMEM;
	x->parent = parent;
	x->ino = ino;
	x->len = len;
	memcpy(x->name, name, len);
	size_t k = dkey(parent, name, len) & (d->nb - 1);
	x->next = d->b[k];
	d->b[k] = x;
	d->n++;
	return 0;
}

/* ---- the check ---- */

/* A failed SQLite call on the carried index: a file we wrote ourselves,
 * so memory and I/O failures are ours (exit 1), anything else is the
 * kit's (malformed: 3). */
static int db_error(sqlite3 *db, struct stella_err *e, const char *path, const char *what)
{
	int code = sqlite3_errcode(db) & 0xff;
	if (code == SQLITE_NOMEM)
		return stella_fail(e, -ENOMEM, "%s: %s: out of memory", path, what);
	if (code == SQLITE_IOERR || code == SQLITE_FULL || code == SQLITE_CANTOPEN)
		return stella_fail(e, -EIO, "%s: %s: %s", path, what, sqlite3_errmsg(db));
	return stella_fail(e, -EBADMSG, "%s: %s: %s", path, what, sqlite3_errmsg(db));
}

struct kitindex_check {
	const char *path;
	const struct kitindex_geom *g;
	struct kitindex_geom geom;  /* g points here */
	struct kitindex_info *info;
	struct stella_err *e;
	sqlite3 *db;
	sqlite3_stmt *rows;
	struct dirs dirs;
	uint64_t next_ino;
	char *last_dir;            /* index_add's shortcut: the previous parent */
	uint64_t last_dir_ino;
	uint64_t data_end;         /* end of the previous file's data */
	int (*each)(void *ctx, size_t i, const struct artifact *a, uint64_t data_off, struct stella_err *e);
	void *ctx;
};

/* What index_add would insert next. */
struct want {
	uint64_t ino, parent;
	const char *name;
	size_t nlen;
	const struct artifact *a;  /* NULL: an implied directory */
};

static const char *type_name(int t)
{
	return t == ARTIFACT_FILE ? "file" : t == ARTIFACT_DIR ? "directory" : t == ARTIFACT_SYMLINK ? "symlink" : "?";
}

/* The next row: it must be w, exactly. */
static int next_row(struct kitindex_check *c, const struct want *w, uint64_t *data_off)
{
	const char *what = w->a ? w->a->name : "an implied directory";
	int st = sqlite3_step(c->rows);
	if (st == SQLITE_DONE)
		return stella_fail(c->e, -EUCLEAN, "%s: entry \"%.300s\" is missing", c->path, what);
	if (st != SQLITE_ROW)
		return db_error(c->db, c->e, c->path, "reading its entries");
	sqlite3_stmt *s = c->rows;
	c->info->nodes++;
	uint64_t ino = (uint64_t)sqlite3_column_int64(s, 0), parent = (uint64_t)sqlite3_column_int64(s, 1);
	const void *name = sqlite3_column_blob(s, 2);
	size_t nlen = (size_t)sqlite3_column_bytes(s, 2);
	int type = sqlite3_column_int(s, 3);
	int64_t mode = sqlite3_column_int64(s, 4), size = sqlite3_column_int64(s, 5);
	int64_t doff = sqlite3_column_int64(s, 6), toff = sqlite3_column_int64(s, 7);
	if (sqlite3_column_type(s, 0) != SQLITE_INTEGER || ino != w->ino)
		return stella_fail(c->e, -EBADMSG, "%s: row %llu where entry %llu (\"%.300s\") belongs", c->path,
				   (unsigned long long)ino, (unsigned long long)w->ino, what);
	if (parent != w->parent || nlen != w->nlen || (nlen && memcmp(name, w->name, nlen)))
		return stella_fail(c->e, -EUCLEAN, "%s: entry %llu is not \"%.300s\" (name or parent differs)", c->path,
				   (unsigned long long)ino, what);
	int wtype = w->a ? (int)w->a->type : ARTIFACT_DIR;
	if (type != wtype)
		return stella_fail(c->e, -EUCLEAN, "%s: \"%.300s\": type mismatch (manifest: %s, index: %s)", c->path,
				   what, type_name(wtype), type_name(type));
	uint32_t wmode = w->a ? w->a->mode : 0755;
	if (mode != (int64_t)wmode)
		return stella_fail(c->e, -EUCLEAN, "%s: \"%.300s\": mode mismatch (manifest: %04o, index: %04llo)",
				   c->path, what, wmode, (unsigned long long)mode & 07777777);
	uint64_t wsize = w->a && w->a->type == ARTIFACT_FILE ? w->a->size : 0;
	if (size != (int64_t)wsize)
		return stella_fail(c->e, -EUCLEAN, "%s: \"%.300s\": size mismatch (manifest: %llu, index: %lld)",
				   c->path, what, (unsigned long long)wsize, (long long)size);
	bool file = wtype == ARTIFACT_FILE, link = wtype == ARTIFACT_SYMLINK;
	for (int col = 8; col <= 9; col++) {
		const uint8_t *want = col == 8 ? (file ? w->a->sha256 : NULL) : (file ? w->a->fsverity : NULL);
		bool ok = want ? sqlite3_column_bytes(s, col) == 32 && !memcmp(sqlite3_column_blob(s, col), want, 32) :
				 sqlite3_column_type(s, col) == SQLITE_NULL;
		if (!ok)
			return stella_fail(c->e, -EUCLEAN, "%s: \"%.300s\": %s mismatch", c->path, what,
					   col == 8 ? "sha256" : "fsverity");
	}
	const char *target = link ? w->a->target : NULL;
	size_t tl = target ? strlen(target) : 0;
	if (target ? (size_t)sqlite3_column_bytes(s, 10) != tl || memcmp(sqlite3_column_blob(s, 10), target, tl) :
		     sqlite3_column_type(s, 10) != SQLITE_NULL)
		return stella_fail(c->e, -EUCLEAN, "%s: \"%.300s\": symlink target mismatch", c->path, what);

	/* structure: where the bytes and the tree are */
	if (doff < 0 || (uint64_t)doff > c->g->body_max || size > (int64_t)(c->g->body_max - (uint64_t)doff))
		return stella_fail(c->e, -EBADMSG, "%s: \"%.300s\": data offset %lld outside the kit", c->path, what,
				   (long long)doff);
	if (file && wsize) {
		if ((uint64_t)doff < c->data_end)
			return stella_fail(c->e, -EBADMSG, "%s: \"%.300s\": data at %lld overlaps the previous file's, or goes back",
					   c->path, what, (long long)doff);
		c->data_end = (uint64_t)doff + wsize;
	}
	if (file && wsize > MERKLE_BLOCK) {
		struct merkle_geom g;
		merkle_geom_init(&g, wsize);
		uint64_t ts = merkle_tree_size(&g);
		if (toff < (int64_t)MERKLEFILE_HEADER || (uint64_t)toff > c->g->merkle_size ||
		    ts > c->g->merkle_size - (uint64_t)toff)
			return stella_fail(c->e, -EBADMSG, "%s: \"%.300s\": tree offset %lld outside merkle.bin", c->path,
					   what, (long long)toff);
	} else if (toff != -1) {
		return stella_fail(c->e, -EBADMSG, "%s: \"%.300s\": a tree offset for an entry without a tree",
				   c->path, what);
	}
	if (file) {
		c->info->files++;
		c->info->bytes += wsize;
	}
	*data_off = (uint64_t)doff;
	return 0;
}

/* index_add's resolve_dir, without a database: the ino of directory DIR,
 * checking the implied directories it would insert. */
static int check_dir(struct kitindex_check *c, const char *dir, uint64_t *ino)
{
	if (!strcmp(dir, c->last_dir)) {
		*ino = c->last_dir_ino;
		return 0;
	}
	uint64_t cur = INDEX_ROOT_INO;
	for (const char *p = dir; *p;) {
		size_t n = strcspn(p, "/");
		uint64_t found = dirs_find(&c->dirs, cur, p, n);
		if (found) {
			cur = found;
		} else {
			struct want w = { .ino = c->next_ino++, .parent = cur, .name = p, .nlen = n };
			uint64_t off;
			int r = next_row(c, &w, &off);
			if (r < 0 || (r = dirs_add(&c->dirs, cur, p, n, w.ino)) < 0)
				return r;
			cur = w.ino;
		}
		p += n;
		if (*p == '/')
			p++;
	}
	char *copy = strdup(dir);
	if (!copy)
		return -ENOMEM;
	free(c->last_dir);
	c->last_dir = copy;
	c->last_dir_ino = cur;
	*ino = cur;
	return 0;
}

static int check_artifact(struct kitindex_check *c, size_t i, const struct artifact *a)
{
	size_t pl = path_parent_len(a->name);
	char *dir = strndup(a->name, pl);
	if (!dir)
		return -ENOMEM;
	uint64_t parent = 0, off = 0;
	int r = check_dir(c, dir, &parent);
	free(dir);
	if (r < 0)
		return r;
	const char *base = a->name + (pl ? pl + 1 : 0);
	struct want w = { .ino = c->next_ino++, .parent = parent, .name = base, .nlen = strlen(base), .a = a };
	if ((r = next_row(c, &w, &off)) < 0)
		return r;
	if (a->type == ARTIFACT_DIR && (r = dirs_add(&c->dirs, parent, base, w.nlen, w.ino)) < 0)
		return r;
	return c->each ? c->each(c->ctx, i, a, off, c->e) : 0;
}

/* The schema: exactly index.c's, object by object (a carried database
 * with other tables, triggers or views is not one we wrote). */
static int check_schema(struct kitindex_check *c)
{
	sqlite3 *ref = NULL;
	sqlite3_stmt *a = NULL, *b = NULL;
	const char *q = "SELECT type,name,tbl_name,sql FROM sqlite_master ORDER BY name";
	int r = 0;
	if (sqlite3_open_v2(":memory:", &ref, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
	    sqlite3_exec(ref, index_schema, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(ref, q, -1, &a, NULL) != SQLITE_OK) {
		r = -ENOMEM;
		goto out;
	}
	if (sqlite3_prepare_v2(c->db, q, -1, &b, NULL) != SQLITE_OK) {
		r = db_error(c->db, c->e, c->path, "reading its schema");
		goto out;
	}
	for (;;) {
		int sa = sqlite3_step(a), sb = sqlite3_step(b);
		if (sa == SQLITE_DONE && sb == SQLITE_DONE)
			break;
		if (sa != SQLITE_ROW && sa != SQLITE_DONE) {
			r = db_error(ref, c->e, c->path, "the reference schema");
			break;
		}
		if (sb != SQLITE_ROW && sb != SQLITE_DONE) {
			r = db_error(c->db, c->e, c->path, "reading its schema");
			break;
		}
		bool same = sa == SQLITE_ROW && sb == SQLITE_ROW;
		for (int k = 0; same && k < 4; k++) {
			const unsigned char *x = sqlite3_column_text(a, k), *y = sqlite3_column_text(b, k);
			same = (!x && !y) || (x && y && !strcmp((const char *)x, (const char *)y));
		}
		if (!same) {
			r = stella_fail(c->e, -EBADMSG, "%s: its schema is not the one stellafs writes", c->path);
			break;
		}
	}
out:
	sqlite3_finalize(a);
	sqlite3_finalize(b);
	sqlite3_close(ref);
	return r;
}

static int one_int(struct kitindex_check *c, const char *sql, int64_t *v)
{
	sqlite3_stmt *s = NULL;
	int r = -EBADMSG;
	if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
		*v = sqlite3_column_int64(s, 0);
		r = 0;
	}
	if (r < 0)
		r = db_error(c->db, c->e, c->path, "reading it");
	sqlite3_finalize(s);
	return r;
}

/* meta: only the keys a packer writes, each a decimal number or the format. */
static int check_meta(struct kitindex_check *c, uint64_t *body, uint64_t *merkle)
{
	sqlite3_stmt *s = NULL;
	if (sqlite3_prepare_v2(c->db, "SELECT key,value FROM meta", -1, &s, NULL) != SQLITE_OK)
		return db_error(c->db, c->e, c->path, "reading its meta");
	int r = 0, st, seen = 0;
	while (r == 0 && (st = sqlite3_step(s)) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(s, 0);
		const char *v = (const char *)sqlite3_column_text(s, 1);
		uint64_t n = 0;
		if (!k || !v)
			r = stella_fail(c->e, -EBADMSG, "%s: a meta row without key or value", c->path);
		else if (!strcmp(k, "format"))
			r = strcmp(v, KITINDEX_FORMAT) ? stella_fail(c->e, -EBADMSG, "%s: format \"%.40s\", this stellafs reads \"%s\"",
								   c->path, v, KITINDEX_FORMAT) : (seen |= 1, 0);
		else if ((!strcmp(k, "bodySize") || !strcmp(k, "merkleSize") || !strcmp(k, "streamSize")) &&
			 parse_u64(v, &n) == 0) {
			if (!strcmp(k, "bodySize"))
				*body = n, seen |= 2;
			else if (!strcmp(k, "merkleSize"))
				*merkle = n, seen |= 4;
		} else
			r = stella_fail(c->e, -EBADMSG, "%s: unexpected meta key \"%.40s\"", c->path, k);
	}
	if (r == 0 && st != SQLITE_DONE)
		r = db_error(c->db, c->e, c->path, "reading its meta");
	if (r == 0 && seen != 7)
		r = stella_fail(c->e, -EBADMSG, "%s: format, bodySize or merkleSize missing", c->path);
	sqlite3_finalize(s);
	return r;
}

static void check_free(struct kitindex_check *c)
{
	sqlite3_finalize(c->rows);
	if (c->db)
		sqlite3_close(c->db);
	dirs_free(&c->dirs);
	free(c->last_dir);
	free(c);
}

static int body_fits(struct kitindex_check *c, uint64_t body, uint64_t body_max)
{
	if (body <= body_max)
		return 0;
	return stella_fail(c->e, -EBADMSG, "%s: a body of %llu bytes does not fit the kit", c->path,
			   (unsigned long long)body);
}

int kitindex_check(const char *file, const char *path, const struct manifest *m, const struct kitindex_geom *g,
		   kitindex_each_fn each, void *ctx, struct kitindex_info *info, struct stella_err *e)
{
	struct manifest_walk w = { .m = m };
	struct artifact_iter it = { manifest_walk_next, &w };
	return kitindex_check_iter(file, path, &it, g, each, ctx, info, e);
}

/* The index opened, its schema, meta, trees and points checked, its root
 * row read: the rows that follow are checked one artifact at a time. */
int kitindex_begin(const char *file, const char *path, const struct kitindex_geom *g, kitindex_each_fn each,
		   void *ctx, struct kitindex_info *info, struct kitindex_check **out, struct stella_err *e)
{
	struct kitindex_check *c = calloc(1, sizeof(*c));
	*out = NULL;
	if (!c)
		return -ENOMEM;
	*c = (struct kitindex_check){ .path = path, .info = info, .e = e, .next_ino = INDEX_ROOT_INO + 1,
			     .each = each, .ctx = ctx, .last_dir_ino = INDEX_ROOT_INO, .geom = *g };
	c->g = &c->geom;
	memset(info, 0, sizeof(*info));
	int r = 0;
	/* one thread uses the connection: no mutex taken on every column
	 * read (4% of a 100,000-file first mount) */
	if (sqlite3_open_v2(file, &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		r = c->db ? db_error(c->db, e, path, "opening it") : stella_fail(e, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	/* a hostile file: nothing in its schema runs, no memory map, SQLite's
	 * own checks of every cell */
	index_harden(c->db);
	sqlite3_exec(c->db, "PRAGMA query_only=1; PRAGMA mmap_size=0; PRAGMA cell_size_check=1; PRAGMA cache_size=-1024",
		     NULL, NULL, NULL);
	if ((r = check_schema(c)) < 0)
		goto out;
	uint64_t body = 0, merkle = 0;
	if ((r = check_meta(c, &body, &merkle)) < 0)
		goto out;
	if (merkle != g->merkle_size) {
		r = stella_fail(e, -EBADMSG, "%s: merkle.bin is %llu bytes, the index says %llu", path,
				(unsigned long long)g->merkle_size, (unsigned long long)merkle);
		goto out;
	}
	if ((r = body_fits(c, body, g->body_max)) < 0)
		goto out;
	info->body_size = body;
	c->geom.body_max = body; /* every offset inside what the index says the body is */
	int64_t n = 0;
	if ((r = one_int(c, "SELECT count(*) FROM tree", &n)) < 0)
		goto out;
	if (n) {
		r = stella_fail(e, -EBADMSG, "%s: holds trees (a carried index keeps them in merkle.bin)", path);
		goto out;
	}
	if ((r = one_int(c, "SELECT count(*) FROM point WHERE window IS NOT NULL OR bits != 0", &n)) < 0)
		goto out;
	int64_t np = 0;
	if (r == 0 && (r = one_int(c, "SELECT count(*) FROM point", &np)) < 0)
		goto out;
	/* a point starts each piece of at least 1 MiB, but the last */
	if (n || (!g->compressed && np) || (g->compressed && (np < 1 || (uint64_t)np > body / (1u << 20) + 1))) {
		r = stella_fail(e, -EBADMSG, "%s: seek points that do not fit the kit", path);
		goto out;
	}
	/* one statement stepped in rowid order beside the artifacts: no
	 * lookup per entry */
	if (sqlite3_prepare_v2(c->db, "SELECT ino,parent,name,type,mode,size,data_off,tree_off,sha256,fsverity,target FROM node ORDER BY rowid",
			       -1, &c->rows, NULL) != SQLITE_OK) {
		r = db_error(c->db, e, path, "reading its entries");
		goto out;
	}
	if (!(c->last_dir = strdup(""))) {
		r = -ENOMEM;
		goto out;
	}
	struct want root = { .ino = INDEX_ROOT_INO, .parent = INDEX_ROOT_INO, .name = "", .nlen = 0 };
	uint64_t off;
	r = next_row(c, &root, &off);
out:
	if (r < 0) {
		check_free(c);
		return r;
	}
	*out = c;
	return 0;
}

int kitindex_step(struct kitindex_check *c, size_t i, const struct artifact *a)
{
	return check_artifact(c, i, a);
}

int kitindex_end(struct kitindex_check *c, uint64_t body_max, struct stella_err *e)
{
	c->e = e;
	int r = body_fits(c, c->info->body_size, body_max);
	if (r == 0) {
		int st = sqlite3_step(c->rows);
		if (st == SQLITE_ROW)
			r = stella_fail(c->e, -EUCLEAN, "%s: entry %lld is not in the manifest", c->path,
					(long long)sqlite3_column_int64(c->rows, 0));
		else if (st != SQLITE_DONE)
			r = db_error(c->db, c->e, c->path, "reading its entries");
	}
	check_free(c);
	return r;
}

void kitindex_abort(struct kitindex_check *c)
{
	if (c)
		check_free(c);
}

int kitindex_check_iter(const char *file, const char *path, const struct artifact_iter *it,
			const struct kitindex_geom *g, kitindex_each_fn each, void *ctx, struct kitindex_info *info,
			struct stella_err *e)
{
	struct kitindex_check *c;
	int r = kitindex_begin(file, path, g, each, ctx, info, &c, e);
	if (r < 0)
		return r;
	const struct artifact *a;
	for (size_t i = 0; r == 0; i++) {
		if ((r = it->next(it->ctx, &a, e)) <= 0)
			break;
		r = check_artifact(c, i, a);
	}
	if (r < 0) {
		check_free(c);
		return r;
	}
	return kitindex_end(c, g->body_max, e);
}
