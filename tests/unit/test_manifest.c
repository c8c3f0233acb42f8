/* The manifest parser's rules and the canonical writer's round trip. */
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
