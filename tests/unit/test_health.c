/* health.c through its public API, without a mount: the checks' levels at
 * their boundaries (expiry, component age, store disk, integrity, trust),
 * the overall level as the worst of them, and the four renderings: health
 * has its level on the first line and one line per check after it,
 * status.json parses and carries the keys docs/mount.md lists, metrics
 * carry the names docs/mount.md promises. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "check.h"
#include "health.h"

#define DAY INT64_C(86400)
#define NOW (INT64_C(1736899200)) /* 2025-01-15T00:00:00Z */

static struct component comps[2];
static struct manifest kit;

/* A kit created a day ago, expiring in expire_days, with two components
 * captured age0 and age1 days ago (warn 7, max 14). */
static void make_kit(double expire_days, double age0, double age1)
{
	static char kid[] = "stella-ops-offline-kit", ver[] = "2025.01.15", chan[] = "stable";
	static char n0[] = "vulnerability-database", p0[] = "feeds/vuln-db";
	static char n1[] = "advisories", p1[] = "feeds/adv";
	memset(&kit, 0, sizeof(kit));
	kit.schema_version = 1;
	kit.kit_id = kid;
	kit.version = ver;
	kit.sequence = 20250115;
	kit.channel = chan;
	kit.created_at = NOW - DAY;
	kit.expires_at = NOW + (int64_t)(expire_days * DAY);
	comps[0] = (struct component){ n0, p0, NOW - (int64_t)(age0 * DAY), 245000, 7, 14 };
	comps[1] = (struct component){ n1, p1, NOW - (int64_t)(age1 * DAY), -1, 7, 14 };
	kit.components = comps;
	kit.ncomponents = 2;
}

static struct health_input base_input(void)
{
	static const char *const snaps[] = { "2025.01.08", "2025.01.15" };
	return (struct health_input){
		.mode = "store", .source = "/var/lib/stella/store", .kit = &kit,
		.snapshots = snaps, .nsnapshots = 2, .now = NOW, .trust_ok = true,
		.signers = 1, .threshold = 1, .verified_bytes = 4096, .store_usage_pct = 10,
	};
}

/* The line of `health` whose label is label, or NULL. */
static char *health_line(const char *text, const char *label, char *out, size_t n)
{
	char want[200];
	snprintf(want, sizeof(want), " %s: ", label);
	for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		const char *end = strchr(l, '\n');
		size_t len = end ? (size_t)(end - l) : strlen(l);
		char line[512];
		snprintf(line, sizeof(line), "%.*s", (int)len, l);
		if (strstr(line, want)) {
			snprintf(out, n, "%s", line);
			return out;
		}
	}
	return NULL;
}

static void check_level(const struct health_input *in, const char *label, const char *word)
{
	char *h = health_render_health(in), line[512];
	CHECK(h != NULL);
	char *l = h ? health_line(h, label, line, sizeof(line)) : NULL;
	CHECK(l != NULL);
	if (l && strncmp(l, word, strlen(word))) {
		fprintf(stderr, "  %s: wanted %s, got \"%s\"\n", label, word, l);
		check_failures++;
	}
	free(h);
}

static void test_healthy(void)
{
	make_kit(30, 1, 2);
	struct health_input in = base_input();
	CHECK(health_overall(&in) == HEALTH_OK);
	char *h = health_render_health(&in);
	CHECK(h && !strncmp(h, "HEALTHY\n", 8));
	/* one line per check: kit-expiry, two components, signature,
	 * integrity, store-disk */
	size_t lines = 0;
	for (const char *p = h; p && *p; p++)
		lines += *p == '\n';
	CHECK(lines == 1 + 6);
	free(h);
	check_level(&in, "kit-expiry", "OK");
	check_level(&in, "freshness:vulnerability-database", "OK");
	check_level(&in, "store-disk", "OK");
}

static void test_boundaries(void)
{
	struct health_input in;
	make_kit(3, 1, 2); /* under HEALTH_EXPIRY_WARN_DAYS */
	in = base_input();
	check_level(&in, "kit-expiry", "WARNING");
	CHECK(health_overall(&in) == HEALTH_WARNING);
	make_kit(-0.5, 1, 2);
	in = base_input();
	check_level(&in, "kit-expiry", "CRITICAL");
	CHECK(health_overall(&in) == HEALTH_CRITICAL);

	make_kit(30, 8, 2); /* past warnAgeDays */
	in = base_input();
	check_level(&in, "freshness:vulnerability-database", "WARNING");
	check_level(&in, "freshness:advisories", "OK");
	CHECK(health_overall(&in) == HEALTH_WARNING);
	make_kit(30, 1, 15); /* past maxAgeDays */
	in = base_input();
	check_level(&in, "freshness:advisories", "CRITICAL");
	CHECK(health_overall(&in) == HEALTH_CRITICAL);

	make_kit(30, 1, 2);
	in = base_input();
	in.store_usage_pct = HEALTH_STORE_WARN_PCT; /* "over 80 %" warns: 80 does not */
	check_level(&in, "store-disk", "OK");
	in.store_usage_pct = HEALTH_STORE_WARN_PCT + 1;
	check_level(&in, "store-disk", "WARNING");
	in.store_usage_pct = HEALTH_STORE_CRIT_PCT;
	check_level(&in, "store-disk", "CRITICAL");
	in.store_usage_pct = -1; /* direct mode: no such check */
	char *h = health_render_health(&in), line[512];
	CHECK(h && !health_line(h, "store-disk", line, sizeof(line)));
	free(h);
}

static void test_failures_and_trust(void)
{
	make_kit(30, 1, 2);
	struct health_input in = base_input();
	in.failures = 3;
	in.last_failure = "feeds/vuln-db/vuln.db: block 7";
	check_level(&in, "integrity", "CRITICAL");
	char *h = health_render_health(&in), line[512];
	CHECK(h && health_line(h, "integrity", line, sizeof(line)) && strstr(line, "block 7"));
	free(h);

	in = base_input();
	in.trust_ok = false;
	in.trust_detail = "trust store /etc/stella/keys: no key vouches for the kit";
	check_level(&in, "signature", "CRITICAL");
	CHECK(health_overall(&in) == HEALTH_CRITICAL);

	in = base_input();
	in.kit = NULL; /* an empty store */
	check_level(&in, "kit", "CRITICAL");
}

static const char *jstr(yajl_val root, const char *const *path)
{
	yajl_val v = yajl_tree_get(root, (const char **)path, yajl_t_string);
	return v ? YAJL_GET_STRING(v) : NULL;
}

static void test_json(void)
{
	make_kit(30, 8, 2);
	struct health_input in = base_input();
	char *j = health_render_json(&in), err[256] = "";
	CHECK(j != NULL);
	yajl_val root = j ? yajl_tree_parse(j, err, sizeof(err)) : NULL;
	CHECK(root != NULL);
	if (!root) {
		fprintf(stderr, "  status.json: %s\n", err);
		free(j);
		return;
	}
	CHECK_STR(jstr(root, (const char *const[]){ "health", NULL }), "WARNING");
	CHECK_STR(jstr(root, (const char *const[]){ "current", NULL }), "2025.01.15");
	CHECK_STR(jstr(root, (const char *const[]){ "kit", "kitId", NULL }), "stella-ops-offline-kit");
	yajl_val seq = yajl_tree_get(root, (const char *[]){ "kit", "sequence", NULL }, yajl_t_number);
	CHECK(seq && YAJL_GET_INTEGER(seq) == 20250115);
	yajl_val days = yajl_tree_get(root, (const char *[]){ "kit", "daysUntilExpiry", NULL }, yajl_t_number);
	CHECK(days && fabs(YAJL_GET_DOUBLE(days) - 30.0) < 0.01);
	yajl_val comps_v = yajl_tree_get(root, (const char *[]){ "components", NULL }, yajl_t_array);
	CHECK(comps_v && YAJL_GET_ARRAY(comps_v)->len == 2);
	yajl_val snaps = yajl_tree_get(root, (const char *[]){ "snapshots", NULL }, yajl_t_array);
	CHECK(snaps && YAJL_GET_ARRAY(snaps)->len == 2);
	yajl_val checks = yajl_tree_get(root, (const char *[]){ "checks", NULL }, yajl_t_array);
	CHECK(checks && YAJL_GET_ARRAY(checks)->len == 6);
	yajl_val integ = yajl_tree_get(root, (const char *[]){ "integrity", "verifiedBytes", NULL }, yajl_t_number);
	CHECK(integ && YAJL_GET_INTEGER(integ) == 4096);
	yajl_tree_free(root);
	free(j);

	in.kit = NULL;
	j = health_render_json(&in);
	root = j ? yajl_tree_parse(j, err, sizeof(err)) : NULL;
	CHECK(root != NULL);
	CHECK(root && yajl_tree_get(root, (const char *[]){ "current", NULL }, yajl_t_null));
	yajl_tree_free(root);
	free(j);
}

static void test_metrics(void)
{
	make_kit(30, 1, 2);
	struct health_input in = base_input();
	in.failures = 2;
	char *m = health_render_metrics(&in);
	CHECK(m != NULL);
	static const char *const want[] = {
		"\noffline_kit_age_days 1.000\n", "\noffline_kit_expiry_days 30.000\n",
		"\nfeed_freshness_days{component=\"advisories\"} 2.000\n", "\ntrust_store_valid 1\n",
		"\nstellafs_health_status 2\n", "\nstellafs_integrity_failures_total 2\n",
		"\nstellafs_verified_bytes_total 4096\n", "\nstellafs_snapshot_switches_total 0\n",
		"# TYPE stellafs_integrity_failures_total counter\n",
	};
	for (size_t i = 0; m && i < sizeof(want) / sizeof(want[0]); i++)
		if (!strstr(m, want[i])) {
			fprintf(stderr, "  metrics lack \"%s\"\n", want[i]);
			check_failures++;
		}
	free(m);

	/* With no current kit the promised names are still there. */
	in.kit = NULL;
	m = health_render_metrics(&in);
	CHECK(m && strstr(m, "\noffline_kit_age_days NaN\n") && strstr(m, "# TYPE feed_freshness_days gauge\n"));
	free(m);
}

int main(void)
{
	test_healthy();
	test_boundaries();
	test_failures_and_trust();
	test_json();
	test_metrics();
	return CHECK_DONE();
}
