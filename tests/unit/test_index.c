/* index.c through its public API, without a kit or a mount: a built index
 * answers lookups, getattr and readdir for what was added (implied
 * directories included, with mode 0755), keeps trees, seek points and
 * meta; reopened from its file it answers the same; readdir resumes after
 * a given ino; every file is listed with its digests; a full path is looked up from the root, and a node read
 * back is the artifact added; a name that is not there is -ENOENT; a row damaged in the
 * file (a child moved under the wrong parent, an ino past the bound) is
 * -EIO, never another row. */
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "index.h"

static char dir[] = "/tmp/stella-test-index.XXXXXX";

static struct artifact art(const char *name, enum artifact_type t, uint64_t size, uint8_t fill)
{
	struct artifact a = { .name = (char *)name, .type = t, .size = size, .mode = t == ARTIFACT_DIR ? 0700 : 0644 };
	memset(a.sha256, fill, 32);
	memset(a.fsverity, fill ^ 0xff, 32);
	if (t == ARTIFACT_SYMLINK)
		a.target = (char *)"vuln-db";
	return a;
}

static uint64_t walk(struct index *ix, const char *path, struct index_node *n)
{
	return index_lookup_path(ix, path, n) == 0 ? n->ino : 0;
}

struct names {
	char list[16][256];
	size_t n;
	uint64_t stop_after;   /* stop once this many were seen (0: never) */
};

static int collect(void *ctx, const struct index_node *n)
{
	struct names *l = ctx;
	if (l->n < 16)
		snprintf(l->list[l->n++], sizeof(l->list[0]), "%s", n->name);
	return l->stop_after && l->n >= l->stop_after;
}

static void build(const char *path)
{
	struct index *ix;
	struct stella_err e = { 0 };
	CHECK(index_create(path, &ix, &e) == 0);
	/* sorted by name, as the builder requires */
	struct artifact a[] = {
		art("empty", ARTIFACT_DIR, 0, 0),
		art("feeds/latest", ARTIFACT_SYMLINK, 0, 0),
		art("feeds/vuln-db/a.json", ARTIFACT_FILE, 10, 1),
		art("feeds/vuln-db/b.json", ARTIFACT_FILE, 5000, 2),
		art("feeds/vuln-db/c.json", ARTIFACT_FILE, 0, 3),
		art("tools/scan", ARTIFACT_FILE, 77, 4),
	};
	a[5].mode = 0755;
	for (size_t i = 0; i < sizeof(a) / sizeof(a[0]); i++)
		CHECK(index_add(ix, &a[i], 512 * (i + 1), i == 3 ? -1 : 0, &e) == 0);
	uint8_t root[32], tree[64];
	memset(root, 0xfd, 32);
	memset(tree, 0x5a, sizeof(tree));
	CHECK(index_add_tree(ix, root, tree, sizeof(tree), &e) == 0);
	struct source_point pts[2] = { { .out = 0, .in = 0 }, { .out = 4 << 20, .in = 1234567 } };
	CHECK(index_add_points(ix, pts, 2, 9 << 20, &e) == 0);
	CHECK(index_set_meta(ix, "version", "2025.01.15", 10, &e) == 0);
	CHECK(index_finish(ix, &e) == 0);
	if (e.msg[0])
		fprintf(stderr, "  build: %s\n", e.msg);
	index_close(ix);
}

static void check_tree(struct index *ix)
{
	struct index_node *n = malloc(sizeof(*n));
	uint64_t f = walk(ix, "feeds/vuln-db/b.json", n);
	CHECK(f != 0);
	CHECK(n->type == ARTIFACT_FILE && n->size == 5000 && n->mode == 0644);
	CHECK(n->data_off == 512 * 4 && n->tree_off == -1);
	CHECK(n->sha256[0] == 2 && n->fsverity[31] == (2 ^ 0xff));
	uint64_t vdb = walk(ix, "feeds/vuln-db", n);
	CHECK(vdb != 0 && n->type == ARTIFACT_DIR && n->mode == 0755); /* implied */
	CHECK(walk(ix, "empty", n) && n->type == ARTIFACT_DIR && n->mode == 0700);
	CHECK(walk(ix, "feeds/latest", n) && n->type == ARTIFACT_SYMLINK);
	CHECK_STR(n->target, "vuln-db");
	CHECK(walk(ix, "tools/scan", n) && n->mode == 0755);
	CHECK(index_lookup(ix, INDEX_ROOT_INO, "nope", n) == -ENOENT);
	CHECK(index_lookup_path(ix, "feeds/nope/b.json", n) == -ENOENT);
	CHECK(index_lookup_path(ix, "feeds/vuln-db/b.json/x", n) == -ENOENT);
	CHECK(index_lookup_path(ix, "", n) == 0 && n->ino == INDEX_ROOT_INO);
	struct artifact want = art("feeds/vuln-db/b.json", ARTIFACT_FILE, 5000, 2), got;
	CHECK(index_lookup_path(ix, want.name, n) == 0);
	index_node_artifact(n, &got);
	CHECK(artifact_same(&got, &want) && !strcmp(got.name, "b.json"));
	want = art("feeds/latest", ARTIFACT_SYMLINK, 0, 0);
	CHECK(index_lookup_path(ix, want.name, n) == 0);
	index_node_artifact(n, &got);
	CHECK(artifact_same(&got, &want));
	CHECK(index_lookup(ix, vdb, "a.json", n) == 0 && n->parent == vdb);
	CHECK(index_get(ix, f, n) == 0 && !strcmp(n->name, "b.json"));
	CHECK(index_get(ix, 999999, n) == -ENOENT);

	struct names l = { 0 };
	CHECK(index_readdir(ix, vdb, 0, collect, &l) == 0);
	CHECK(l.n == 3);
	CHECK_STR(l.list[0], "a.json");
	CHECK_STR(l.list[2], "c.json");
	/* resume after the first child, as a second READDIR does */
	CHECK(index_lookup(ix, vdb, "a.json", n) == 0);
	struct names rest = { 0 };
	CHECK(index_readdir(ix, vdb, n->ino, collect, &rest) == 0);
	CHECK(rest.n == 2);
	CHECK_STR(rest.list[0], "b.json");
	/* the callback stops the walk */
	struct names one = { .stop_after = 1 };
	CHECK(index_readdir(ix, vdb, 0, collect, &one) == 0 && one.n == 1);
	/* the root lists its children, not itself */
	struct names top = { 0 };
	CHECK(index_readdir(ix, INDEX_ROOT_INO, 0, collect, &top) == 0);
	CHECK(top.n == 3);
	CHECK_STR(top.list[0], "empty");

	uint8_t root[32], *tree = NULL;
	size_t len = 0;
	memset(root, 0xfd, 32);
	CHECK(index_get_tree(ix, root, &tree, &len) == 0 && len == 64 && tree[63] == 0x5a);
	free(tree);
	memset(root, 0xfc, 32);
	CHECK(index_get_tree(ix, root, &tree, &len) == -ENOENT);

	struct source_point *pts = NULL;
	size_t np = 0;
	uint64_t total = 0;
	CHECK(index_get_points(ix, &pts, &np, &total) == 0);
	CHECK(np == 2 && total == (9u << 20) && pts[1].in == 1234567);
	for (size_t i = 0; i < np; i++)
		free(pts[i].window);
	free(pts);

	char *v = NULL;
	size_t vl = 0;
	CHECK(index_get_meta(ix, "version", &v, &vl) == 0 && vl == 10);
	CHECK_STR(v, "2025.01.15");
	free(v);
	CHECK(index_get_meta(ix, "no-such-key", &v, &vl) == -ENOENT);
	free(n);
}

static void damage(const char *path, const char *sql)
{
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	char *err = NULL;
	CHECK(sqlite3_exec(db, sql, NULL, NULL, &err) == SQLITE_OK);
	if (err)
		fprintf(stderr, "  %s: %s\n", sql, err);
	sqlite3_free(err);
	sqlite3_close(db);
}

static void check_damage(const char *path)
{
	struct index *ix;
	struct stella_err e = { 0 };
	struct index_node *n = malloc(sizeof(*n));
	/* a row renumbered past the bound a built index never exceeds */
	damage(path, "UPDATE node SET ino = ino + 4294967296 WHERE name = CAST('c.json' AS BLOB);");
	CHECK(index_open(path, &ix, &e) == 0);
	uint64_t vdb = walk(ix, "feeds/vuln-db", n);
	CHECK(vdb != 0);
	CHECK(index_lookup(ix, vdb, "c.json", n) == -EIO); /* ino past INDEX_MAX_INO */
	struct names l = { 0 };
	CHECK(index_readdir(ix, vdb, 0, collect, &l) == -EIO);
	index_close(ix);

	/* the root listed under a subdirectory: a walk must not loop */
	damage(path, "UPDATE node SET ino = ino - 4294967296 WHERE name = CAST('c.json' AS BLOB);"
		     "UPDATE node SET parent = (SELECT ino FROM node WHERE name = CAST('vuln-db' AS BLOB)) "
		     "WHERE ino = 1;");
	CHECK(index_open(path, &ix, &e) == 0);
	vdb = walk(ix, "feeds/vuln-db", n);
	struct names loop = { 0 };
	CHECK(vdb == 0 || index_readdir(ix, vdb, 0, collect, &loop) == -EIO);
	index_close(ix);
	free(n);
}

struct files {
	size_t n;
	uint64_t size_sum;
	bool digests_ok;
};

static int each_file(void *ctx, uint64_t size, const uint8_t *sha256, const uint8_t *fsverity)
{
	struct files *f = ctx;
	f->n++;
	f->size_sum += size;
	/* art() filled the SHA-256 with one byte and the fs-verity digest with its complement */
	if (!sha256 || !fsverity)
		f->digests_ok = false;
	else if (sha256[0] != sha256[31] || (fsverity[0] ^ sha256[0]) != 0xff)
		f->digests_ok = false;
	return f->n == 99 ? -ECANCELED : 0;
}

static void check_each_file(const char *path, const char *junk)
{
	struct files f = { .digests_ok = true };
	CHECK(index_each_file(path, each_file, &f) == 0);
	CHECK(f.n == 4); /* files only: not the directories or the symlink */
	CHECK(f.size_sum == 10 + 5000 + 0 + 77);
	CHECK(f.digests_ok);
	CHECK(index_each_file(junk, each_file, &f) == -EIO);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	char path[512];
	snprintf(path, sizeof(path), "%s/kit.db", dir);
	build(path);

	struct index *ix;
	struct stella_err e = { 0 };
	CHECK(index_open(path, &ix, &e) == 0);
	check_tree(ix);
	index_close(ix);

	/* not an index */
	char junk[512];
	snprintf(junk, sizeof(junk), "%s/junk.db", dir);
	FILE *f = fopen(junk, "w");
	fputs("this is not an SQLite database, not even close to one; ", f);
	for (int i = 0; i < 200; i++)
		fputs("padding ", f);
	fclose(f);
	struct index *bad = NULL;
	int r = index_open(junk, &bad, &e);
	if (r == 0) { /* opening is lazy in SQLite: the first query fails */
		struct index_node n;
		CHECK(index_get(bad, INDEX_ROOT_INO, &n) < 0);
		index_close(bad);
	}

	check_each_file(path, junk);
	check_damage(path);

	unlink(path);
	unlink(junk);
	rmdir(dir);
	return CHECK_DONE();
}
