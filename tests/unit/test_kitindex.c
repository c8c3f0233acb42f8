/* core/kitindex: the carried index against its manifest. */
#include <fcntl.h>
#include <sqlite3.h>
#include <string.h>

#include "kit_fixture.h"
#include "hasher.h"
#include "kitindex.h"
#include "util.h"

static int count_each(void *ctx, size_t i, const struct artifact *a, uint64_t off, struct stella_err *e)
{
	(void)i, (void)a, (void)off, (void)e;
	(*(size_t *)ctx)++;
	return 0;
}

/* A copy of the index at src with SQL run on it, checked: the result. */
static int check_edited(const char *src, const char *sql, const struct manifest *m, const struct kitindex_geom *g,
			struct stella_err *e)
{
	char dst[600], cmd[1400];
	snprintf(dst, sizeof(dst), "%s/edited.db", fx_dir);
	snprintf(cmd, sizeof(cmd), "cp %s %s", src, dst);
	CHECK(system(cmd) == 0);
	sqlite3 *db = NULL;
	CHECK(sqlite3_open(dst, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
	struct kitindex_info info;
	memset(e, 0, sizeof(*e));
	return kitindex_check(dst, "kit: manifest/index", m, g, NULL, NULL, &info, e);
}

/* The push form, driven by the streaming parser as a first mount drives
 * it: begin at the first artifact, with the "index" the stream has seen. */
struct pushed {
	struct manifest_stream *ms;
	const char *idx;
	const struct kitindex_geom *g;
	struct kitindex_check *c;
	struct kitindex_info info;
	struct stella_err e;
	int seen, rc;
	uint64_t isize;
	uint8_t isha[32];
};

static int push_one(void *ctx, size_t i, const struct artifact *a, struct stella_err *e)
{
	struct pushed *p = ctx;
	(void)e;
	if (i == 0) {
		p->seen = manifest_stream_index(p->ms, &p->isize, p->isha);
		p->rc = kitindex_begin(p->idx, "k", p->g, NULL, NULL, &p->info, &p->c, &p->e);
	}
	if (p->rc == 0)
		p->rc = kitindex_step(p->c, i, a);
	return 0;
}

static int push_check(const char *idx, const char *json, size_t jlen, const struct kitindex_geom *g,
		      uint64_t body_max, struct pushed *p)
{
	memset(p, 0, sizeof(*p));
	p->idx = idx;
	p->g = g;
	struct stella_err e = { 0 };
	struct manifest *m = NULL;
	CHECK(manifest_stream_new(push_one, p, 0, &p->ms, &e) == 0);
	for (size_t at = 0; at < jlen; at += 7) /* small pieces: "index" complete anyway */
		CHECK(manifest_stream_feed(p->ms, json + at, jlen - at < 7 ? jlen - at : 7) == 0);
	CHECK(manifest_stream_finish(p->ms, &m, &e) == 0);
	manifest_stream_free(p->ms);
	manifest_free(m);
	if (p->rc < 0) {
		kitindex_abort(p->c);
		return p->rc;
	}
	return kitindex_end(p->c, body_max, &p->e);
}

int main(void)
{
	EVP_PKEY *key = NULL;
	struct trust *trust = NULL;
	fx_setup(&key, &trust);
	char kit[512], idx[512], cmd[1600];
	snprintf(kit, sizeof(kit), "%s/kit.tar", fx_dir);
	snprintf(idx, sizeof(idx), "%s/index.db", fx_dir);
	struct kitwrite_result wr;
	struct stella_err e = { 0 };
	CHECK(fx_pack(kit, key, KIT_COMPRESS_NONE, &wr, &e) == 0);
	snprintf(cmd, sizeof(cmd), "tar -xOf %s manifest/index > %s", kit, idx);
	CHECK(system(cmd) == 0);
	char *json = NULL;
	size_t jlen = 0;
	snprintf(cmd, sizeof(cmd), "%s/m.json", fx_dir);
	char x[2400];
	snprintf(x, sizeof(x), "tar -xOf %s manifest/offline-manifest.json > %s", kit, cmd);
	CHECK(system(x) == 0);
	CHECK(read_file(cmd, 1 << 20, &json, &jlen) == 0);
	struct manifest *m = NULL;
	CHECK(manifest_parse(json, jlen, &m, &e) == 0);
	CHECK(m->has_index);

	/* the manifest binds the index's size and digest */
	int fd = open(idx, O_RDONLY);
	uint8_t d[32];
	CHECK(fd >= 0 && sha256_fd(fd, d) == 0);
	CHECK(!memcmp(d, m->index_sha256, 32));
	CHECK((uint64_t)lseek(fd, 0, SEEK_END) == m->index_size);
	close(fd);

	struct kitindex_geom g = { .body_max = 1 << 20, .merkle_size = 0, .compressed = false };
	snprintf(cmd, sizeof(cmd), "tar -tvf %s manifest/merkle.bin | awk '{print $3}' > %s/msize", kit, fx_dir);
	CHECK(system(cmd) == 0);
	snprintf(cmd, sizeof(cmd), "%s/msize", fx_dir);
	char *ms = NULL;
	size_t msl;
	CHECK(read_file(cmd, 64, &ms, &msl) == 0);
	g.merkle_size = strtoull(ms, NULL, 10);
	free(ms);
	CHECK(g.merkle_size > 24);

	struct kitindex_info info;
	size_t n = 0;
	CHECK(kitindex_check(idx, "kit: manifest/index", m, &g, count_each, &n, &info, &e) == 0);
	CHECK(n == m->nartifacts);
	CHECK(info.files == 3 && info.bytes == 100 + 3 * 4096 + 17);
	CHECK(info.nodes == 1 + 1 + m->nartifacts); /* the root, the implied d/ */

	/* pushed beside the streaming parser: the same verdict, and the
	 * manifest's "index" known at its first artifact */
	struct pushed p;
	CHECK(push_check(idx, json, jlen, &g, g.body_max, &p) == 0);
	CHECK(p.seen == 1 && p.isize == m->index_size && !memcmp(p.isha, m->index_sha256, 32));
	CHECK(p.info.files == info.files && p.info.nodes == info.nodes);
	/* a body bound known only at the end (a compressed kit's) still holds */
	struct kitindex_geom open = g;
	open.body_max = UINT64_MAX;
	CHECK(push_check(idx, json, jlen, &open, 1000, &p) == -EBADMSG);
	CHECK(strstr(p.e.msg, "does not fit") != NULL);

	/* the wrong merkle.bin size, a body too small for the data */
	struct kitindex_geom bad = g;
	bad.merkle_size = g.merkle_size + 1;
	CHECK(kitindex_check(idx, "k", m, &bad, NULL, NULL, &info, &e) == -EBADMSG);
	bad = g;
	bad.body_max = 1000;
	CHECK(kitindex_check(idx, "k", m, &bad, NULL, NULL, &info, &e) == -EBADMSG);
	/* seek points in an uncompressed kit */
	bad = g;
	bad.compressed = true;
	CHECK(kitindex_check(idx, "k", m, &bad, NULL, NULL, &info, &e) == -EBADMSG);

	/* edits: each refused with its class */
	const struct { const char *sql; int rc; const char *word; } edits[] = {
		{ "UPDATE node SET sha256=zeroblob(32) WHERE type=0 AND size=100", -EUCLEAN, "sha256" },
		{ "UPDATE node SET mode=448 WHERE ino=2", -EUCLEAN, "mode" },
		{ "DELETE FROM node WHERE ino=(SELECT max(ino) FROM node)", -EUCLEAN, "missing" },
		{ "INSERT INTO node VALUES(99,1,CAST('zz' AS BLOB),0,420,0,0,-1,zeroblob(32),zeroblob(32),NULL)", -EUCLEAN,
		  "not in the manifest" },
		{ "UPDATE node SET parent=4 WHERE ino=3", -EUCLEAN, "parent" },
		{ "UPDATE node SET data_off=999999999 WHERE size=100", -EBADMSG, "outside" },
		{ "UPDATE node SET tree_off=-1 WHERE size>4096", -EBADMSG, "tree" },
		{ "UPDATE node SET tree_off=0 WHERE size=100", -EBADMSG, "tree" },
		{ "UPDATE meta SET value='2' WHERE key='format'", -EBADMSG, "format" },
		{ "DELETE FROM meta WHERE key='bodySize'", -EBADMSG, "missing" },
		{ "CREATE VIEW v AS SELECT 1", -EBADMSG, "schema" },
		{ "DROP INDEX node_children", -EBADMSG, "schema" },
		{ "INSERT INTO tree VALUES(zeroblob(32), zeroblob(10))", -EBADMSG, "trees" },
	};
	for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
		int r = check_edited(idx, edits[i].sql, m, &g, &e);
		if (r != edits[i].rc || !strstr(e.msg, edits[i].word))
			fprintf(stderr, "edit %zu (%s): %d %s\n", i, edits[i].sql, r, e.msg);
		CHECK(r == edits[i].rc);
		CHECK(strstr(e.msg, edits[i].word) != NULL);
		CHECK(strchr(e.msg, '\n') == NULL);
	}
	/* not a database at all */
	snprintf(cmd, sizeof(cmd), "%s/junk", fx_dir);
	CHECK(write_file_atomic(cmd, "junk junk junk", 14, 0600) == 0);
	CHECK(kitindex_check(cmd, "k", m, &g, NULL, NULL, &info, &e) == -EBADMSG);

	manifest_free(m);
	free(json);
	fx_teardown(key, trust);
	return CHECK_DONE();
}
