#include "health.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#include "escape.h"
#include "http.h"
#include "util.h"

#define MAX_CHECKS 1100   /* the fixed ones + one per component (<= 1024) */

struct check {
	const char *name;
	char label[160];          /* name, or "freshness:<component>" */
	enum health_level level;
	char detail[320];
};

struct report {
	enum health_level overall;
	size_t n;
	struct check c[MAX_CHECKS];
};

const char *health_level_name(enum health_level l)
{
	return l == HEALTH_CRITICAL ? "CRITICAL" : l == HEALTH_WARNING ? "WARNING" : "HEALTHY";
}

static const char *check_word(enum health_level l)
{
	return l == HEALTH_CRITICAL ? "CRITICAL" : l == HEALTH_WARNING ? "WARNING" : "OK";
}

static double days(int64_t seconds)
{
	return (double)seconds / 86400.0;
}

static struct check *add(struct report *r, const char *label, enum health_level l, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static struct check *add(struct report *r, const char *label, enum health_level l, const char *fmt, ...)
{
	if (r->n >= MAX_CHECKS)
		return NULL;
	struct check *c = &r->c[r->n++];
	snprintf(c->label, sizeof(c->label), "%s", label);
	c->level = l;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	va_end(ap);
	if (l > r->overall)
		r->overall = l;
	return c;
}

static enum health_level component_level(const struct component *c, int64_t now)
{
	double age = days(now - c->captured_at);
	return age > (double)c->max_age_days ? HEALTH_CRITICAL :
	       age > (double)c->warn_age_days ? HEALTH_WARNING : HEALTH_OK;
}

/* "host:port" of "scheme://host:port" */
static const char *host_port(const char *origin)
{
	const char *p = strstr(origin, "://");
	return p ? p + 3 : origin;
}

/* A kit on mirrors: WARNING for each mirror that fails (reads go on from
 * the next one or the cache), CRITICAL only once a read could not be
 * served because no mirror had bytes that verify.  follow=: WARNING while
 * its last poll or import failed for a reason of the moment. */
static void evaluate_remote(const struct health_input *in, struct report *r)
{
	if (in->remote) {
		size_t failing = 0;
		for (size_t i = 0; i < in->nmirrors; i++) {
			const struct health_mirror *m = &in->mirrors[i];
			if (strcmp(m->state, "failing"))
				continue;
			failing++;
			char label[160];
			snprintf(label, sizeof(label), "mirror:%s", host_port(m->origin));
			add(r, label, HEALTH_WARNING, "%s failing (%llu failure(s)): %s", host_port(m->origin),
			    (unsigned long long)m->failures, *m->last_error ? m->last_error : "?");
		}
		if (in->unserved)
			add(r, "mirrors", HEALTH_CRITICAL,
			    "%llu read(s) not served: bytes failed verification and no mirror had good ones",
			    (unsigned long long)in->unserved);
		else if (!failing)
			add(r, "mirrors", HEALTH_OK, "%zu location(s), none failing", in->nmirrors);
	}
	if (in->follow && in->follow_err && in->follow_err != ESTALE && in->follow_err != EEXIST)
		add(r, "follow", HEALTH_WARNING, "%s: %s", in->follow, in->follow_result ? in->follow_result : "failed");
}

static void evaluate(const struct health_input *in, struct report *r)
{
	memset(r, 0, sizeof(*r));
	const struct manifest *k = in->kit;
	char t[32];
	if (!k) {
		add(r, "kit", HEALTH_CRITICAL, "no snapshot is current");
	} else {
		time_format(k->expires_at, t);
		double left = days(k->expires_at - in->now);
		if (left <= 0)
			add(r, "kit-expiry", HEALTH_CRITICAL, "expired %.1f days ago (%s)", -left, t);
		else if (left < HEALTH_EXPIRY_WARN_DAYS)
			add(r, "kit-expiry", HEALTH_WARNING, "expires in %.1f days (%s)", left, t);
		else
			add(r, "kit-expiry", HEALTH_OK, "expires in %.1f days (%s)", left, t);
		for (size_t i = 0; i < k->ncomponents; i++) {
			const struct component *c = &k->components[i];
			char label[160];
			snprintf(label, sizeof(label), "freshness:%s", c->name);
			double age = days(in->now - c->captured_at);
			add(r, label, component_level(c, in->now), "%s is %.1f days old (warn %lld, max %lld)", c->path,
			    age, (long long)c->warn_age_days, (long long)c->max_age_days);
		}
	}
	if (in->trust_ok)
		add(r, "signature", HEALTH_OK, "%u trusted signature(s), threshold %u", in->signers, in->threshold);
	else
		add(r, "signature", HEALTH_CRITICAL, "%s", in->trust_detail ? in->trust_detail : "trust store invalid");
	for (size_t i = 0; i < in->nproblems; i++)
		add(r, "snapshot", in->problem_levels ? in->problem_levels[i] : HEALTH_CRITICAL, "%s", in->problems[i]);
	if (in->failures)
		add(r, "integrity", HEALTH_CRITICAL, "%llu block(s) failed verification; last: %s",
		    (unsigned long long)in->failures, in->last_failure ? in->last_failure : "?");
	else
		add(r, "integrity", HEALTH_OK, "%llu bytes verified, no failures", (unsigned long long)in->verified_bytes);
	evaluate_remote(in, r);
	if (in->store_usage_pct >= 0) {
		enum health_level l = in->store_usage_pct >= HEALTH_STORE_CRIT_PCT ? HEALTH_CRITICAL :
				      in->store_usage_pct > HEALTH_STORE_WARN_PCT ? HEALTH_WARNING : HEALTH_OK;
		add(r, "store-disk", l, "%d%% of the store's filesystem used", in->store_usage_pct);
	}
}

enum health_level health_overall(const struct health_input *in)
{
	struct report *r = malloc(sizeof(*r));
	if (!r)
		return HEALTH_CRITICAL;
	evaluate(in, r);
	enum health_level l = r->overall;
	free(r);
	return l;
}

/* A growable string. */
struct sb {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sb *b, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		size_t room = b->cap - b->len;
		va_start(ap, fmt);
		int n = b->p ? vsnprintf(b->p + b->len, room, fmt, ap) : -1;
		va_end(ap);
		if (n >= 0 && (size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? 2 * b->cap : 4096;
		while (n >= 0 && cap < b->len + (size_t)n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

static char *sb_done(struct sb *b)
{
	if (b->oom) {
		free(b->p);
		return NULL;
	}
	if (!b->p)
		return strdup("");
	return b->p;
}

/* Names from a kit, paths and the last failure are untrusted: escaped into
 * one visible line for the text views (a newline in a component name forged
 * whole "OK" lines in health).  Labels and details are escaped whole: the
 * fixed text around the names has nothing to escape. */
#define ESC(var, s) \
	char var[4 * 160 + 1]; \
	escape((s), ESCAPE_TEXT, var, sizeof(var))

/* s escaped in style into b; nothing allocated when s needs no escape (an
 * escape always makes the text longer) */
static void sb_escaped(struct sb *b, const char *s, enum escape_style style)
{
	if (escape(s, style, NULL, 0) == strlen(s)) {
		sb_add(b, "%s", s);
		return;
	}
	char *e = escape_dup(s, style);
	if (!e)
		b->oom = true;
	else
		sb_add(b, "%s", e);
	free(e);
}

static void sb_esc(struct sb *b, const char *s)
{
	sb_escaped(b, s, ESCAPE_TEXT);
}

/* One line per check: "WORD label: detail" (health) or aligned (status). */
static void check_lines(struct sb *b, const struct report *r, bool aligned)
{
	for (size_t i = 0; i < r->n; i++) {
		char label[4 * sizeof(r->c[i].label)], detail[4 * sizeof(r->c[i].detail)];
		escape(r->c[i].label, ESCAPE_TEXT, label, sizeof(label));
		escape(r->c[i].detail, ESCAPE_TEXT, detail, sizeof(detail));
		if (aligned)
			sb_add(b, "  %-8s %-36s %s\n", check_word(r->c[i].level), label, detail);
		else
			sb_add(b, "%-8s %s: %s\n", check_word(r->c[i].level), label, detail);
	}
}

char *health_render_health(const struct health_input *in)
{
	struct report *r = malloc(sizeof(*r));
	if (!r)
		return NULL;
	evaluate(in, r);
	struct sb b = { 0 };
	sb_add(&b, "%s\n", health_level_name(r->overall));
	check_lines(&b, r, false);
	free(r);
	return sb_done(&b);
}

char *health_render_status(const struct health_input *in)
{
	struct report *r = malloc(sizeof(*r));
	if (!r)
		return NULL;
	evaluate(in, r);
	struct sb b = { 0 };
	const struct manifest *k = in->kit;
	char t1[32], t2[32];
	sb_add(&b, "Offline Kit Status\n");
	if (k) {
		time_format(k->created_at, t1);
		time_format(k->expires_at, t2);
		ESC(kit_id, k->kit_id);
		ESC(version, k->version);
		ESC(channel, k->channel);
		sb_add(&b, "  Kit:         %s %s (sequence %lld, channel %s)\n", kit_id, version,
		       (long long)k->sequence, channel);
		sb_add(&b, "  Created:     %s (%.1f days ago)\n", t1, days(in->now - k->created_at));
		double left = days(k->expires_at - in->now);
		if (left > 0)
			sb_add(&b, "  Expires:     %s (in %.1f days)\n", t2, left);
		else
			sb_add(&b, "  Expires:     %s (EXPIRED %.1f days ago)\n", t2, -left);
	} else {
		sb_add(&b, "  Kit:         none current\n");
	}
	sb_add(&b, "  Health:      %s\n", health_level_name(r->overall));
	sb_add(&b, "  Integrity:   %llu bytes verified, %llu failure(s)\n", (unsigned long long)in->verified_bytes,
	       (unsigned long long)in->failures);
	sb_add(&b, "  Signature:   %s\n", in->trust_ok ? "valid" : "INVALID");
	sb_add(&b, "  Mode:        %s (", in->mode);
	char *shown = http_redact(in->source);   /* never a password */
	sb_esc(&b, shown ? shown : "");
	free(shown);
	sb_add(&b, ")\n");
	if (in->remote) {
		sb_add(&b, "  Cache:       %llu bytes, %llu hit(s); %llu read(s) timed out\n",
		       (unsigned long long)in->cache_bytes, (unsigned long long)in->cache_hits,
		       (unsigned long long)in->read_timeouts);
		sb_add(&b, "Mirrors:\n");
		for (size_t i = 0; i < in->nmirrors; i++) {
			const struct health_mirror *m = &in->mirrors[i];
			sb_add(&b, "  ");
			sb_esc(&b, m->url);
			sb_add(&b, "  %s, %llu failure(s)", m->state, (unsigned long long)m->failures);
			if (*m->last_error) {
				sb_add(&b, ", last: ");
				sb_esc(&b, m->last_error);
			}
			sb_add(&b, "\n");
		}
	}
	if (in->follow) {
		sb_add(&b, "  Follow:      ");
		sb_esc(&b, in->follow);
		if (in->follow_last_poll) {
			time_format(in->follow_last_poll, t1);
			sb_add(&b, " (polled %s", t1);
			if (in->follow_result && *in->follow_result) {
				sb_add(&b, "; ");
				sb_esc(&b, in->follow_result);
			}
			sb_add(&b, ")\n");
		} else {
			sb_add(&b, " (not polled yet)\n");
		}
	}
	sb_add(&b, "  Snapshots:  ");
	for (size_t i = 0; i < in->nsnapshots; i++) {
		ESC(version, in->snapshots[i]);
		sb_add(&b, " %s%s", version, k && !strcmp(in->snapshots[i], k->version) ? " (current)" : "");
	}
	sb_add(&b, "\n");
	if (k && k->ncomponents) {
		sb_add(&b, "Components:\n");
		for (size_t i = 0; i < k->ncomponents; i++) {
			const struct component *c = &k->components[i];
			time_format(c->captured_at, t1);
			ESC(name, c->name);
			sb_add(&b, "  %-26s %-8s %5.1f days old, captured %s (warn %lld, max %lld)\n", name,
			       check_word(component_level(c, in->now)), days(in->now - c->captured_at), t1,
			       (long long)c->warn_age_days, (long long)c->max_age_days);
		}
	}
	sb_add(&b, "Checks:\n");
	check_lines(&b, r, true);
	free(r);
	return sb_done(&b);
}

/* yajl escapes quotes and control characters; bytes that are not UTF-8
 * (a name read back from a damaged index) it would copy into the text and
 * make it no JSON: they become \xHH. */
static void gs(yajl_gen g, const char *s)
{
	size_t n = strlen(s);
	if (escape(s, ESCAPE_JSON, NULL, 0) == n) {
		/* valid UTF-8: as it is, with nothing to allocate */
		yajl_gen_string(g, (const unsigned char *)s, n);
		return;
	}
	char *e = escape_dup(s, ESCAPE_JSON);
	/* a string, whatever happens: a key that is not one breaks the map */
	const char *v = e ? e : "?";
	yajl_gen_string(g, (const unsigned char *)v, strlen(v));
	free(e);
}

static void gnum(yajl_gen g, double v)
{
	char buf[64];
	snprintf(buf, sizeof(buf), "%.2f", v);
	yajl_gen_number(g, buf, strlen(buf));
}

static void gtime(yajl_gen g, int64_t t)
{
	char buf[32];
	time_format(t, buf);
	gs(g, buf);
}

/* A string, or null when there is none to show. */
static void gs_or_null(yajl_gen g, const char *s)
{
	if (s && *s)
		gs(g, s);
	else
		yajl_gen_null(g);
}

static void gint(yajl_gen g, const char *key, long long v)
{
	gs(g, key);
	yajl_gen_integer(g, v);
}

static void json_kit(yajl_gen g, const struct manifest *k, int64_t now)
{
	gs(g, "kit");
	if (!k) {
		yajl_gen_null(g);
		return;
	}
	yajl_gen_map_open(g);
	gs(g, "kitId"); gs(g, k->kit_id);
	gs(g, "version"); gs(g, k->version);
	gint(g, "sequence", k->sequence);
	gs(g, "channel"); gs(g, k->channel);
	gs(g, "createdAt"); gtime(g, k->created_at);
	gs(g, "expiresAt"); gtime(g, k->expires_at);
	gs(g, "daysUntilExpiry"); gnum(g, days(k->expires_at - now));
	yajl_gen_map_close(g);
}

static void json_components(yajl_gen g, const struct manifest *k, int64_t now)
{
	gs(g, "components");
	yajl_gen_array_open(g);
	for (size_t i = 0; k && i < k->ncomponents; i++) {
		const struct component *c = &k->components[i];
		yajl_gen_map_open(g);
		gs(g, "name"); gs(g, c->name);
		gs(g, "path"); gs(g, c->path);
		gs(g, "capturedAt"); gtime(g, c->captured_at);
		gs(g, "ageDays"); gnum(g, days(now - c->captured_at));
		gint(g, "warnAgeDays", c->warn_age_days);
		gint(g, "maxAgeDays", c->max_age_days);
		if (c->records >= 0)
			gint(g, "records", c->records);
		gs(g, "status"); gs(g, check_word(component_level(c, now)));
		yajl_gen_map_close(g);
	}
	yajl_gen_array_close(g);
}

static void json_integrity(yajl_gen g, const struct health_input *in)
{
	gs(g, "integrity");
	yajl_gen_map_open(g);
	gint(g, "verifiedBytes", (long long)in->verified_bytes);
	gint(g, "failures", (long long)in->failures);
	gs(g, "lastFailure"); gs_or_null(g, in->last_failure);
	yajl_gen_map_close(g);
}

static void json_checks(yajl_gen g, const struct report *r)
{
	gs(g, "checks");
	yajl_gen_array_open(g);
	for (size_t i = 0; i < r->n; i++) {
		yajl_gen_map_open(g);
		gs(g, "name"); gs(g, r->c[i].label);
		gs(g, "status"); gs(g, check_word(r->c[i].level));
		gs(g, "detail"); gs(g, r->c[i].detail);
		yajl_gen_map_close(g);
	}
	yajl_gen_array_close(g);
}

/* Remote kits only (docs/remote.md): each mirror, the disk cache, timeouts. */
static void json_remote(yajl_gen g, const struct health_input *in)
{
	gs(g, "mirrors");
	yajl_gen_array_open(g);
	for (size_t i = 0; i < in->nmirrors; i++) {
		const struct health_mirror *m = &in->mirrors[i];
		yajl_gen_map_open(g);
		gs(g, "url"); gs(g, m->url);
		gs(g, "state"); gs(g, m->state);
		gint(g, "failures", (long long)m->failures);
		gs(g, "lastError"); gs_or_null(g, m->last_error);
		gint(g, "bytes", (long long)m->bytes);
		yajl_gen_map_close(g);
	}
	yajl_gen_array_close(g);
	gs(g, "cache");
	yajl_gen_map_open(g);
	gint(g, "bytes", (long long)in->cache_bytes);
	gint(g, "hits", (long long)in->cache_hits);
	yajl_gen_map_close(g);
	gint(g, "readTimeouts", (long long)in->read_timeouts);
}

static void json_follow(yajl_gen g, const struct health_input *in)
{
	gs(g, "follow");
	yajl_gen_map_open(g);
	gs(g, "url"); gs(g, in->follow);
	gs(g, "lastPoll");
	if (in->follow_last_poll)
		gtime(g, in->follow_last_poll);
	else
		yajl_gen_null(g);
	gs(g, "lastError"); gs_or_null(g, in->follow_err ? strerror(in->follow_err) : NULL);
	gs(g, "lastResult"); gs(g, in->follow_result ? in->follow_result : "");
	yajl_gen_map_close(g);
}

char *health_render_json(const struct health_input *in)
{
	struct report *r = malloc(sizeof(*r));
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!r || !g) {
		free(r);
		if (g)
			yajl_gen_free(g);
		return NULL;
	}
	evaluate(in, r);
	yajl_gen_config(g, yajl_gen_beautify, 1);
	yajl_gen_config(g, yajl_gen_indent_string, "  ");
	const struct manifest *k = in->kit;
	yajl_gen_map_open(g);
	gs(g, "health"); gs(g, health_level_name(r->overall));
	gs(g, "mode"); gs(g, in->mode);
	char *shown = http_redact(in->source);   /* never a password */
	gs(g, "source"); gs(g, shown ? shown : "");
	free(shown);
	gs(g, "current"); gs_or_null(g, k ? k->version : NULL);
	gs(g, "snapshots");
	yajl_gen_array_open(g);
	for (size_t i = 0; i < in->nsnapshots; i++)
		gs(g, in->snapshots[i]);
	yajl_gen_array_close(g);
	json_kit(g, k, in->now);
	json_components(g, k, in->now);
	json_integrity(g, in);
	json_checks(g, r);
	if (in->remote)
		json_remote(g, in);
	if (in->follow)
		json_follow(g, in);
	gs(g, "snapshotSwitches"); yajl_gen_integer(g, (long long)in->switches);
	gs(g, "now"); gtime(g, in->now);
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	char *out = NULL;
	if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok && (out = malloc(len + 2))) {
		memcpy(out, buf, len);
		out[len] = '\n';
		out[len + 1] = 0;
	}
	yajl_gen_free(g);
	free(r);
	return out;
}

/* Prometheus label values: backslash, quote and newline escaped as the
 * format says, other controls and non-UTF-8 bytes made visible. */
static void label(struct sb *b, const char *v)
{
	sb_escaped(b, v, ESCAPE_PROM);
}

static void metric(struct sb *b, const char *name, const char *type, const char *help)
{
	sb_add(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static const char *const result_names[HEALTH_REMOTE_RESULTS] = {
	"ok", "http_error", "timeout", "short", "bad_bytes", "refused",
};

static void mirror_label(struct sb *b, const char *origin)
{
	sb_add(b, "mirror=\"");
	label(b, origin);
	sb_add(b, "\"");
}

/* docs/mirrors.md, "Health and metrics": by mirror, labelled by its
 * scheme://host:port; two mirrors on one origin add up in one series. */
static void remote_metrics(struct sb *b, const struct health_input *in)
{
	metric(b, "stellafs_remote_bytes_total", "counter", "Kit bytes fetched from each mirror since mount.");
	for (size_t i = 0; i < in->nmirrors; i++) {
		bool seen = false;
		for (size_t k = 0; k < i && !seen; k++)
			seen = !strcmp(in->mirrors[k].origin, in->mirrors[i].origin);
		if (seen)
			continue;
		uint64_t total = 0;
		for (size_t k = i; k < in->nmirrors; k++)
			if (!strcmp(in->mirrors[k].origin, in->mirrors[i].origin))
				total += in->mirrors[k].bytes;
		sb_add(b, "stellafs_remote_bytes_total{");
		mirror_label(b, in->mirrors[i].origin);
		sb_add(b, "} %llu\n", (unsigned long long)total);
	}
	metric(b, "stellafs_remote_requests_total", "counter", "Requests to each mirror since mount, by result.");
	for (size_t i = 0; i < in->nmirrors; i++) {
		bool seen = false;
		for (size_t k = 0; k < i && !seen; k++)
			seen = !strcmp(in->mirrors[k].origin, in->mirrors[i].origin);
		if (seen)
			continue;
		for (size_t res = 0; res < HEALTH_REMOTE_RESULTS; res++) {
			uint64_t total = 0;
			for (size_t k = i; k < in->nmirrors; k++)
				if (!strcmp(in->mirrors[k].origin, in->mirrors[i].origin))
					total += in->mirrors[k].requests[res];
			sb_add(b, "stellafs_remote_requests_total{");
			mirror_label(b, in->mirrors[i].origin);
			sb_add(b, ",result=\"%s\"} %llu\n", result_names[res], (unsigned long long)total);
		}
	}
	metric(b, "stellafs_cache_bytes", "gauge", "Kit bytes kept in the mirror cache (file data and head).");
	sb_add(b, "stellafs_cache_bytes %llu\n", (unsigned long long)in->cache_bytes);
	metric(b, "stellafs_cache_hits_total", "counter", "Reads of kit bytes served from the mirror cache since mount.");
	sb_add(b, "stellafs_cache_hits_total %llu\n", (unsigned long long)in->cache_hits);
	metric(b, "stellafs_remote_unserved_total", "counter",
	       "Reads no mirror could serve with bytes that verify, since mount.");
	sb_add(b, "stellafs_remote_unserved_total %llu\n", (unsigned long long)in->unserved);
	metric(b, "stellafs_read_timeouts_total", "counter", "Reads answered EIO at timeout= since mount.");
	sb_add(b, "stellafs_read_timeouts_total %llu\n", (unsigned long long)in->read_timeouts);
}

char *health_render_metrics(const struct health_input *in)
{
	struct sb b = { 0 };
	const struct manifest *k = in->kit;
	enum health_level overall = health_overall(in);
	/* stellafs(8) promises these names in every metrics file: with no current
	 * kit (an empty store) they are NaN, and feed_freshness_days is
	 * declared with no samples, rather than missing. */
	if (!k) {
		metric(&b, "offline_kit_age_days", "gauge", "Days since the current kit was created.");
		sb_add(&b, "offline_kit_age_days NaN\n");
		metric(&b, "offline_kit_expiry_days", "gauge", "Days until the current kit expires (negative: expired).");
		sb_add(&b, "offline_kit_expiry_days NaN\n");
		metric(&b, "feed_freshness_days", "gauge", "Age in days of each component's captured data.");
	} else {
		metric(&b, "stellafs_kit_info", "gauge", "The current kit (value 1), by identity.");
		sb_add(&b, "stellafs_kit_info{kit_id=\"");
		label(&b, k->kit_id);
		sb_add(&b, "\",version=\"");
		label(&b, k->version);
		sb_add(&b, "\",channel=\"");
		label(&b, k->channel);
		sb_add(&b, "\",sequence=\"%lld\"} 1\n", (long long)k->sequence);
		metric(&b, "offline_kit_age_days", "gauge", "Days since the current kit was created.");
		sb_add(&b, "offline_kit_age_days %.3f\n", days(in->now - k->created_at));
		metric(&b, "offline_kit_expiry_days", "gauge", "Days until the current kit expires (negative: expired).");
		sb_add(&b, "offline_kit_expiry_days %.3f\n", days(k->expires_at - in->now));
		metric(&b, "feed_freshness_days", "gauge", "Age in days of each component's captured data.");
		for (size_t i = 0; i < k->ncomponents; i++) {
			sb_add(&b, "feed_freshness_days{component=\"");
			label(&b, k->components[i].name);
			sb_add(&b, "\"} %.3f\n", days(in->now - k->components[i].captured_at));
		}
	}
	metric(&b, "trust_store_valid", "gauge", "1 when the trust store loads and vouches for the current kit.");
	sb_add(&b, "trust_store_valid %d\n", in->trust_ok ? 1 : 0);
	metric(&b, "stellafs_health_status", "gauge", "0 healthy, 1 warning, 2 critical.");
	sb_add(&b, "stellafs_health_status %d\n", (int)overall);
	metric(&b, "stellafs_integrity_failures_total", "counter", "Blocks that failed verification since mount.");
	sb_add(&b, "stellafs_integrity_failures_total %llu\n", (unsigned long long)in->failures);
	metric(&b, "stellafs_verified_bytes_total", "counter", "Bytes served after verification since mount.");
	sb_add(&b, "stellafs_verified_bytes_total %llu\n", (unsigned long long)in->verified_bytes);
	metric(&b, "stellafs_snapshot_switches_total", "counter", "Switches of the current snapshot since mount.");
	sb_add(&b, "stellafs_snapshot_switches_total %llu\n", (unsigned long long)in->switches);
	metric(&b, "stellafs_snapshots", "gauge", "Snapshots available.");
	sb_add(&b, "stellafs_snapshots %zu\n", in->nsnapshots);
	if (in->remote)
		remote_metrics(&b, in);
	return sb_done(&b);
}
