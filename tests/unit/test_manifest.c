/* The manifest parser's rules and the canonical writer's round trip. */
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"
#include "manifest.h"

#define HEAD "{\"schemaVersion\":1,\"kitId\":\"k\",\"version\":\"v1\",\"sequence\":3," \
	     "\"createdAt\":\"2025-01-15T00:00:00Z\",\"expiresAt\":\"2025-02-15T00:00:00Z\","
#define FILE_OK(n) "{\"name\":\"" n "\",\"size\":1,\"sha256\":\"" \
	"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb\",\"fsverity\":\"sha256:" \
	"bce75948b9e7510293f8f2720412af9697c1479281323f3f220623fb8e94b557\"}"

static int parse(const char *json, struct manifest **m, struct stella_err *e)
{
	memset(e, 0, sizeof(*e));
	*m = NULL;
	return manifest_parse(json, strlen(json), m, e);
}

/* ---- the streaming parser, fed in pieces of CHUNK bytes ---- */

struct names {
	char **v;
	size_t n, cap;
};

static int collect(void *ctx, size_t i, const struct artifact *a, struct stella_err *e)
{
	struct names *ns = ctx;
	(void)e;
	CHECK(i == ns->n);
	if (ns->n == ns->cap) {
		ns->cap = ns->cap ? 2 * ns->cap : 64;
		if (!(ns->v = realloc(ns->v, ns->cap * sizeof(*ns->v))))
			abort();
	}
	char buf[8300];
	snprintf(buf, sizeof(buf), "%s|%d|%o|%llu|%02x%02x|%s", a->name, (int)a->type, a->mode,
		 (unsigned long long)a->size, a->sha256[0], a->fsverity[31], a->target ? a->target : "");
	ns->v[ns->n++] = strdup(buf);
	return 0;
}

static void names_free(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
	memset(ns, 0, sizeof(*ns));
}

static int stream(const char *json, size_t len, size_t chunk, struct manifest **m, struct names *ns, bool *unsorted,
		  struct stella_err *e)
{
	struct manifest_stream *ms;
	memset(e, 0, sizeof(*e));
	*m = NULL;
	int r = manifest_stream_new(collect, ns, 0, &ms, e);
	if (r < 0)
		return r;
	for (size_t at = 0; r == 0 && at < len; at += chunk)
		r = manifest_stream_feed(ms, json + at, len - at < chunk ? len - at : chunk);
	if (r == 0)
		r = manifest_stream_finish(ms, m, e);
	*unsorted = manifest_stream_unsorted(ms);
	manifest_stream_free(ms);
	return r;
}

static const size_t chunks[] = { 1, 7, 4096, (size_t)-1 };

/* Both parsers refuse json, with needle in the message; the streaming one
 * whatever the pieces (a name split across two feeds, a duplicate in the
 * next one), or it says the artifacts are not sorted (its caller then
 * falls back to manifest_parse). */
static void refused(const char *json, const char *needle)
{
	struct manifest *m;
	struct stella_err e;
	int r = parse(json, &m, &e);
	CHECK(r == -EBADMSG);
	if (r == -EBADMSG && !strstr(e.msg, needle)) {
		fprintf(stderr, "message \"%s\" lacks \"%s\"\n", e.msg, needle);
		check_failures++;
	}
	manifest_free(m);
	for (size_t c = 0; c < sizeof(chunks) / sizeof(*chunks); c++) {
		struct names ns = { 0 };
		bool unsorted;
		if (chunks[c] < 4096 && strlen(json) > (64u << 10))
			continue; /* the huge ones: pieces of 4 KiB show the same */
		r = stream(json, strlen(json), chunks[c], &m, &ns, &unsorted, &e);
		if (r == -EDOM && unsorted) {
			names_free(&ns);
			continue;
		}
		CHECK(r == -EBADMSG);
		if (r == -EBADMSG && !strstr(e.msg, needle)) {
			fprintf(stderr, "stream (pieces of %zu): message \"%s\" lacks \"%s\"\n", chunks[c], e.msg, needle);
			check_failures++;
		}
		manifest_free(m);
		names_free(&ns);
	}
}

/* Both parsers accept json and agree on the top level and on every
 * artifact, in order (sorted input: the streaming parser's fast path). */
static void agree(const char *json)
{
	struct manifest *m;
	struct stella_err e;
	CHECK(parse(json, &m, &e) == 0);
	if (!m)
		return;
	struct names whole = { 0 };
	for (size_t i = 0; i < m->nartifacts; i++)
		collect(&whole, i, &m->artifacts[i], &e);
	char *id = NULL;
	size_t idl = 0;
	CHECK(manifest_write_identity(m, &id, &idl) == 0);
	for (size_t c = 0; c < sizeof(chunks) / sizeof(*chunks); c++) {
		struct names ns = { 0 };
		struct manifest *sm;
		bool unsorted;
		int r = stream(json, strlen(json), chunks[c], &sm, &ns, &unsorted, &e);
		if (r < 0)
			fprintf(stderr, "stream (pieces of %zu) refused: %s\n", chunks[c], e.msg);
		CHECK(r == 0);
		if (r < 0)
			continue;
		CHECK(sm->nartifacts == 0 && sm->nlisted == m->nartifacts && ns.n == whole.n);
		for (size_t i = 0; i < ns.n && i < whole.n; i++)
			CHECK_STR(ns.v[i], whole.v[i]);
		char *sid = NULL;
		size_t sidl = 0;
		CHECK(manifest_write_identity(sm, &sid, &sidl) == 0 && sidl == idl && !memcmp(sid, id, idl));
		free(sid);
		manifest_free(sm);
		names_free(&ns);
	}
	free(id);
	names_free(&whole);
	manifest_free(m);
}

/* The cursor pulls what the stream accepted, one at a time. */
static void test_cursor(const char *json)
{
	struct manifest_cursor *c;
	struct stella_err e = { 0 };
	struct manifest *m;
	CHECK(parse(json, &m, &e) == 0);
	CHECK(manifest_cursor_open_mem(json, strlen(json), &c, &e) == 0);
	const struct artifact *a;
	size_t i = 0;
	int r;
	while ((r = manifest_cursor_next(c, &a, &e)) > 0) {
		CHECK(m && i < m->nartifacts && !strcmp(a->name, m->artifacts[i].name));
		i++;
	}
	CHECK(r == 0 && m && i == m->nartifacts);
	CHECK(manifest_cursor_next(c, &a, &e) == 0);
	manifest_cursor_free(c);
	manifest_free(m);
}

/* The one rule for "the same in its base" (delta kits, docs/kit-format.md
 * section 9), for the packer and the importer alike. */
static void test_artifact_same(void)
{
	struct artifact f = { .name = (char *)"a", .type = ARTIFACT_FILE, .size = 3, .mode = 0644 };
	memset(f.sha256, 1, 32);
	memset(f.fsverity, 2, 32);
	struct artifact g = f;
	g.name = (char *)"elsewhere/b"; /* names are not compared */
	CHECK(artifact_same(&f, &g));
	g.mode = 0600;
	CHECK(!artifact_same(&f, &g));
	g = f;
	g.size = 4;
	CHECK(!artifact_same(&f, &g));
	g = f;
	g.sha256[31] ^= 1;
	CHECK(!artifact_same(&f, &g));
	g = f;
	g.fsverity[0] ^= 1;  /* the fs-verity digest too, not only SHA-256 */
	CHECK(!artifact_same(&f, &g));
	g = f;
	g.type = ARTIFACT_DIR;
	CHECK(!artifact_same(&f, &g));

	struct artifact l = { .name = (char *)"l", .type = ARTIFACT_SYMLINK, .mode = 0777, .target = (char *)"a" };
	struct artifact k = l;
	k.size = 99; /* no meaning for a symlink */
	CHECK(artifact_same(&l, &k));
	k.target = (char *)"b";
	CHECK(!artifact_same(&l, &k));
	/* A symlink's mode has no effect, but the format's rule names the
	 * mode of every entry: a delta kit carries a symlink whose mode
	 * changed, and an importer does not accept it left out. */
	k = l;
	k.mode = 0700;
	CHECK(!artifact_same(&l, &k));

	struct artifact d = { .name = (char *)"d", .type = ARTIFACT_DIR, .mode = 0755 };
	struct artifact d2 = d;
	CHECK(artifact_same(&d, &d2));
	d2.mode = 0700;
	CHECK(!artifact_same(&d, &d2));
}

int main(void)
{
	test_artifact_same();
	struct manifest *m;
	struct stella_err e;
	const char *good = HEAD "\"components\":{\"db\":{\"path\":\"feeds\",\"records\":5}},"
		"\"artifacts\":[" FILE_OK("feeds/b") "," FILE_OK("feeds/a")
		",{\"name\":\"feeds/latest\",\"type\":\"symlink\",\"target\":\"a\"}"
		",{\"name\":\"empty\",\"type\":\"directory\",\"mode\":448}]}";
	CHECK(parse(good, &m, &e) == 0);
	if (m) {
		CHECK(m->nartifacts == 4);
		CHECK_STR(m->artifacts[0].name, "empty");     /* sorted */
		CHECK_STR(m->artifacts[1].name, "feeds/a");
		CHECK(m->artifacts[0].mode == 0700);
		CHECK(m->artifacts[1].mode == 0644);          /* default */
		CHECK_STR(m->channel, "stable");              /* default */
		CHECK(m->components[0].warn_age_days == 7 && m->components[0].max_age_days == 14);
		CHECK(manifest_find(m, "feeds/latest") && !manifest_find(m, "nope"));
		/* canonical writer: write, parse, write again: same bytes */
		char *a = NULL, *b = NULL;
		size_t al, bl;
		struct manifest *m2;
		CHECK(manifest_write(m, &a, &al) == 0);
		CHECK(parse(a, &m2, &e) == 0);
		CHECK(m2 && manifest_write(m2, &b, &bl) == 0 && al == bl && !memcmp(a, b, al));
		CHECK(a[al - 1] == '\n');
		free(a);
		free(b);
		manifest_free(m2);
	}
	manifest_free(m);

	/* sorted input: both parsers give the same artifacts, whatever the pieces */
	const char *sorted = HEAD "\"components\":{\"db\":{\"path\":\"feeds\",\"records\":5}},"
		"\"artifacts\":[{\"name\":\"empty\",\"type\":\"directory\",\"mode\":448},"
		FILE_OK("feeds/a") "," FILE_OK("feeds/a-b") "," FILE_OK("feeds/a.txt") "," FILE_OK("feeds/b")
		",{\"name\":\"feeds/latest\",\"type\":\"symlink\",\"target\":\"a\"}"
		",{\"name\":\"feeds/s\",\"type\":\"symlink\",\"target\":\"../empty/x\",\"capturedAt\":\"2025-01-01T00:00:00Z\"}]}";
	agree(sorted);
	test_cursor(sorted);
	agree(HEAD "\"artifacts\":[]}");
	/* keys in any order: the artifacts before the top level's other keys */
	agree("{\"artifacts\":[" FILE_OK("a") "],\"schemaVersion\":1,\"kitId\":\"k\",\"version\":\"v1\",\"sequence\":3,"
	      "\"createdAt\":\"2025-01-15T00:00:00Z\",\"expiresAt\":\"2025-02-15T00:00:00Z\"}");
	/* a file that is a string prefix, not a path prefix, of later names */
	agree(HEAD "\"artifacts\":[" FILE_OK("a") "," FILE_OK("a-b") "," FILE_OK("a-b.c") "," FILE_OK("a.b/c") "," FILE_OK("ab") "]}");
	/* rule 2 across names in between: a file "a", then "a-x" and "a.y", then "a/b" */
	refused(HEAD "\"artifacts\":[" FILE_OK("a") "," FILE_OK("a-x") "," FILE_OK("a.y") "," FILE_OK("a/b") "]}", "inside \"a\", which is a file");
	refused(HEAD "\"artifacts\":[{\"name\":\"d\",\"type\":\"directory\"},{\"name\":\"d/l\",\"type\":\"symlink\",\"target\":\"x\"},"
		FILE_OK("d/l-1") "," FILE_OK("d/l/f") "]}", "inside \"d/l\", which is a symlink");
	/* duplicates and disorder, split across any two pieces */
	refused(HEAD "\"artifacts\":[" FILE_OK("feeds/CVE-0000001.json") "," FILE_OK("feeds/CVE-0000001.json") "]}", "duplicate name");
	refused(HEAD "\"artifacts\":[" FILE_OK("b") "," FILE_OK("a") "," FILE_OK("a") "]}", "duplicate name");
	/* truncated in the middle of the artifacts, at every length */
	{
		size_t len = strlen(sorted);
		char *cut = malloc(len + 1);
		if (!cut)
			abort();
		for (size_t l = strlen(HEAD) + 20; l < len; l += 13) {
			memcpy(cut, sorted, l);
			cut[l] = 0;
			refused(cut, "manifest: invalid JSON");
		}
		free(cut);
	}
	/* deep nesting inside an artifact, and a huge string */
	{
		char deep[512];
		int at = sprintf(deep, HEAD "\"artifacts\":[{\"name\":\"a\",\"x\":");
		for (int i = 0; i < 40; i++)
			deep[at++] = '[';
		for (int i = 0; i < 40; i++)
			deep[at++] = ']';
		sprintf(deep + at, "}]}");
		refused(deep, "nested deeper than 16");
		size_t hl = 8u << 20;
		char *huge = malloc(hl + 256);
		if (!huge)
			abort();
		at = sprintf(huge, HEAD "\"artifacts\":[{\"name\":\"");
		memset(huge + at, 'a', hl);
		sprintf(huge + at + hl, "\",\"size\":0}]}");
		refused(huge, "unsafe name");
		free(huge);
	}
	/* valid but not sorted: the streaming parser hands it back */
	{
		const char *un = HEAD "\"artifacts\":[" FILE_OK("b") "," FILE_OK("a") "]}";
		struct names ns = { 0 };
		bool unsorted = false;
		CHECK(stream(un, strlen(un), 5, &m, &ns, &unsorted, &e) == -EDOM && unsorted && !m);
		names_free(&ns);
	}

	refused("{", "invalid JSON");
	refused("[]", "top level");
	refused("{\"schemaVersion\":2}", "schemaVersion");
	refused("{\"schemaVersion\":1,\"version\":\"v\",\"artifacts\":[]}", "kitId");
	refused(HEAD "\"artifacts\":[" FILE_OK("a") "," FILE_OK("a") "]}", "duplicate name");
	refused(HEAD "\"artifacts\":[" FILE_OK("../x") "]}", "unsafe name");
	refused(HEAD "\"artifacts\":[" FILE_OK("/x") "]}", "unsafe name");
	refused(HEAD "\"artifacts\":[" FILE_OK("a//b") "]}", "unsafe name");
	refused(HEAD "\"artifacts\":[" FILE_OK("a\\u0000b") "]}", "unsafe name");
	refused(HEAD "\"artifacts\":[" FILE_OK("manifest/x") "]}", "reserved");
	refused(HEAD "\"artifacts\":[" FILE_OK("a") "," FILE_OK("a/b") "]}", "inside");
	refused(HEAD "\"artifacts\":[{\"name\":\"l\",\"type\":\"symlink\",\"target\":\"../x\"}]}", "escapes");
	refused(HEAD "\"artifacts\":[{\"name\":\"l\",\"type\":\"symlink\",\"target\":\"/etc\"}]}", "escapes");
	/* harmless-looking, but s climbs: a/b/s -> ../.. is the root, l -> s/.. leaves it */
	refused(HEAD "\"artifacts\":[{\"name\":\"a/b/s\",\"type\":\"symlink\",\"target\":\"../..\"},"
		"{\"name\":\"a/b/l\",\"type\":\"symlink\",\"target\":\"s/..\"}]}", "escapes");
	refused(HEAD "\"artifacts\":[{\"name\":\"x\",\"type\":\"symlink\",\"target\":\"y\"},"
		"{\"name\":\"y\",\"type\":\"symlink\",\"target\":\"x/z\"}]}", "too many levels");
	refused(HEAD "\"artifacts\":[{\"name\":\"d\",\"type\":\"fifo\"}]}", "unsupported type");
	refused(HEAD "\"artifacts\":[{\"name\":\"d\",\"type\":\"directory\",\"mode\":2541}]}", "mode");
	refused(HEAD "\"artifacts\":[{\"name\":\"f\",\"size\":1,\"sha256\":\"zz\",\"fsverity\":\"sha256:00\"}]}", "sha256");
	refused("{\"schemaVersion\":1,\"schemaVersion\":1}", "duplicate key");
	refused(HEAD "\"createdAt\":\"x\",\"artifacts\":[]}", "duplicate key");
	refused("{\"schemaVersion\":1,\"kitId\":\"k\",\"version\":\"v/1\",\"sequence\":1}", "version");
	refused("{\"schemaVersion\":1,\"kitId\":\"k\",\"version\":\"v\",\"sequence\":1,"
		"\"createdAt\":\"2025-13-45T00:00:00Z\"}", "createdAt");
	refused("{\"schemaVersion\":1,\"kitId\":\"k\",\"version\":\"v\",\"sequence\":-1}", "sequence");

	/* keys longer than the parser's key cache take the other duplicate check */
	refused("{\"an-unknown-key-longer-than-the-cache-holds\":1,\"schemaVersion\":1,"
		"\"an-unknown-key-longer-than-the-cache-holds\":2}", "duplicate key");
	/* 200 000 distinct such keys in one object: accepted, and at once;
	 * compared pairwise, they took minutes (a mount held by an unsigned
	 * manifest).  Unknown keys are allowed: newer writers add fields. */
	{
		size_t nk = 200000, at = 0;
		char *big = malloc(nk * 64 + 1024);
		if (!big)
			abort();
		at += (size_t)sprintf(big, "%s", HEAD);
		for (size_t i = 0; i < nk; i++)
			at += (size_t)sprintf(big + at, "\"an-unknown-key-longer-than-the-cache-%08zu\":0,", i);
		sprintf(big + at, "\"artifacts\":[" FILE_OK("a") "]}");
		CHECK(parse(big, &m, &e) == 0);
		manifest_free(m);
		free(big);
	}

	/* A chain of 40 symlinks with 4 KiB targets ("s02/./././..."): resolved at
	 * once (it took seconds when the walk moved its rest down per component);
	 * the same chain reached from 100 000 short links is refused, by the bound
	 * on the steps of all resolutions, in well under a second. */
	for (int many = 0; many < 2; many++) {
		size_t nl = many ? 100000 : 64, at = 0;
		char *big = malloc(40 * 4200 + nl * 64 + 1024);
		if (!big)
			abort();
		at += (size_t)sprintf(big, "%s\"artifacts\":[", HEAD);
		for (size_t i = 0; i < nl; i++)
			at += (size_t)sprintf(big + at, "{\"name\":\"L%07zu\",\"type\":\"symlink\",\"target\":\"s01\"},", i);
		for (int i = 1; i <= 40; i++) {
			at += (size_t)sprintf(big + at, "{\"name\":\"s%02d\",\"type\":\"symlink\",\"target\":\"", i);
			at += (size_t)(i < 40 ? sprintf(big + at, "s%02d", i + 1) : sprintf(big + at, "x"));
			for (int k = 0; k < 2040; k++)
				big[at++] = '/', big[at++] = '.';
			at += (size_t)sprintf(big + at, "\"}%s", i < 40 ? "," : "]}");
		}
		if (many) {
			refused(big, "steps");
		} else {
			CHECK(parse(big, &m, &e) == 0);
			manifest_free(m);
		}
		free(big);
	}

	/* 10 000 levels of nesting: refused before yajl_tree recurses. */
	size_t n = 10000;
	char *deep = malloc(2 * n + 16);
	strcpy(deep, "{\"a\":");
	size_t p = strlen(deep);
	for (size_t i = 0; i < n; i++)
		deep[p++] = '[';
	for (size_t i = 0; i < n; i++)
		deep[p++] = ']';
	deep[p++] = '}';
	deep[p] = 0;
	refused(deep, "nested");
	free(deep);
	return CHECK_DONE();
}
