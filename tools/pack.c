#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_tree.h>

#include "common.h"
#include "kitverify.h"
#include "kitwrite.h"
#include "manifest.h"
#include "path.h"
#include "sig.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " pack -k KEY [-k KEY...] [OPTIONS] SRC_DIR OUT_KIT\n"
	"\n"
	"Pack SRC_DIR into the signed kit OUT_KIT, and write OUT_KIT.sha256,\n"
	"OUT_KIT.metadata.json and OUT_KIT.sig (the whole kit signed with the first\n"
	"key) beside it.  Same inputs, keys and SOURCE_DATE_EPOCH give the same bytes.\n"
	"\n"
	"  -k, --key KEY            sign with this PEM private key (repeatable)\n"
	"      --template FILE      JSON with defaults: kitId, version, sequence,\n"
	"                           channel, expiresAt, expiresInDays, components\n"
	"      --kit-id ID          kit identity (default stella-ops-offline-kit)\n"
	"      --version V          snapshot name, e.g. 2025.01.15 (required)\n"
	"      --sequence N         grows strictly within a kitId (required)\n"
	"      --channel C          default stable\n"
	"      --created-at TIME    default SOURCE_DATE_EPOCH when set, else now\n"
	"      --expires-at TIME    expiry ...\n"
	"      --expires-in DAYS    ... or days after created-at (default 30)\n"
	"      --component NAME=PATH[,warn=DAYS][,max=DAYS][,captured-at=TIME][,records=N]\n"
	"                           a feed component and its freshness limits\n"
	"                           (default warn=7, max=14, captured-at=created-at)\n"
	"      --compress none|gzip|zstd\n"
	"                           default from OUT_KIT's name (.gz/.tgz, .zst), else none\n"
	"      --base OLD_KIT       make a delta kit: artifacts unchanged since\n"
	"                           OLD_KIT are listed but not carried (a delta kit\n"
	"                           carries no index)\n"
	"      --no-index           leave out the carried index (manifest/index): a\n"
	"                           version 1 kit, which a mount indexes by reading it\n"
	"                           whole\n"
	"  -h, --help               show this help\n";

enum {
	OPT_TEMPLATE = 256, OPT_KIT_ID, OPT_VERSION, OPT_SEQUENCE, OPT_CHANNEL, OPT_CREATED_AT,
	OPT_EXPIRES_AT, OPT_EXPIRES_IN, OPT_COMPONENT, OPT_COMPRESS, OPT_BASE, OPT_NO_INDEX,
};

struct pack_args {
	const char *template_path, *kit_id, *version, *sequence, *channel, *created_at, *expires_at,
		*expires_in, *compress, *base;
	const char *keys[16];
	size_t nkeys;
	const char *components[1024];
	size_t ncomponents;
	bool no_index;
};

static int set_string(char **dst, const char *v)
{
	free(*dst);
	return (*dst = strdup(v)) ? 0 : -ENOMEM;
}

static struct component *component_slot(struct manifest *m, const char *name)
{
	for (size_t i = 0; i < m->ncomponents; i++)
		if (!strcmp(m->components[i].name, name))
			return &m->components[i];
	struct component *c = realloc(m->components, (m->ncomponents + 1) * sizeof(*c));
	if (!c)
		return NULL;
	m->components = c;
	c = &m->components[m->ncomponents];
	memset(c, 0, sizeof(*c));
	if (!(c->name = strdup(name)))
		return NULL;
	m->ncomponents++;
	c->records = -1;
	c->warn_age_days = MANIFEST_DEFAULT_WARN_DAYS;
	c->max_age_days = MANIFEST_DEFAULT_MAX_DAYS;
	return c;
}

/* The template is the operator's file: its errors are usage errors. */
static int load_template(const char *path, struct manifest *m, int64_t *expires_in_days)
{
	_cleanup_(freep) char *buf = NULL;
	int r = read_file(path, 1 << 20, &buf, NULL);
	if (r < 0)
		return usage_error("pack", "--template %s: %s", path, strerror(-r));
	char ebuf[256] = "";
	yajl_val root = yajl_tree_parse(buf, ebuf, sizeof(ebuf));
	if (!root || !YAJL_IS_OBJECT(root)) {
		ebuf[strcspn(ebuf, "\n")] = 0;
		if (root)
			yajl_tree_free(root);
		return usage_error("pack", "--template %s: not a JSON object%s%s", path, ebuf[0] ? ": " : "", ebuf);
	}
	r = 0;
	for (size_t i = 0; i < root->u.object.len && r == 0; i++) {
		const char *k = root->u.object.keys[i];
		yajl_val v = root->u.object.values[i];
		if (!strcmp(k, "kitId") || !strcmp(k, "version") || !strcmp(k, "channel") || !strcmp(k, "expiresAt")) {
			if (!YAJL_IS_STRING(v)) {
				r = usage_error("pack", "--template %s: \"%s\" must be a string", path, k);
			} else if (!strcmp(k, "expiresAt")) {
				if (time_parse(v->u.string, &m->expires_at) < 0)
					r = usage_error("pack", "--template %s: expiresAt: not an RFC 3339 time", path);
			} else {
				char **dst = !strcmp(k, "kitId") ? &m->kit_id : !strcmp(k, "version") ? &m->version : &m->channel;
				r = set_string(dst, v->u.string) < 0 ? 1 : 0;
			}
		} else if (!strcmp(k, "sequence") || !strcmp(k, "expiresInDays")) {
			if (!YAJL_IS_INTEGER(v) || v->u.number.i < 0)
				r = usage_error("pack", "--template %s: \"%s\" must be a non-negative integer", path, k);
			else if (!strcmp(k, "sequence"))
				m->sequence = v->u.number.i;
			else
				*expires_in_days = v->u.number.i;
		} else if (!strcmp(k, "components")) {
			if (!YAJL_IS_OBJECT(v)) {
				r = usage_error("pack", "--template %s: \"components\" must be an object", path);
				break;
			}
			for (size_t j = 0; j < v->u.object.len && r == 0; j++) {
				yajl_val cv = v->u.object.values[j];
				struct component *c = component_slot(m, v->u.object.keys[j]);
				if (!c) {
					r = 1;
					break;
				}
				if (!YAJL_IS_OBJECT(cv)) {
					r = usage_error("pack", "--template %s: component \"%s\" must be an object", path, c->name);
					break;
				}
				for (size_t f = 0; f < cv->u.object.len && r == 0; f++) {
					const char *fk = cv->u.object.keys[f];
					yajl_val fv = cv->u.object.values[f];
					if (!strcmp(fk, "path") && YAJL_IS_STRING(fv)) {
						r = set_string(&c->path, fv->u.string) < 0 ? 1 : 0;
					} else if (!strcmp(fk, "capturedAt") && YAJL_IS_STRING(fv)) {
						if (time_parse(fv->u.string, &c->captured_at) < 0)
							r = usage_error("pack", "--template %s: %s.capturedAt: not an RFC 3339 time", path, c->name);
					} else if ((!strcmp(fk, "warnAgeDays") || !strcmp(fk, "maxAgeDays") || !strcmp(fk, "records")) &&
						   YAJL_IS_INTEGER(fv) && fv->u.number.i >= 0) {
						int64_t *dst = !strcmp(fk, "warnAgeDays") ? &c->warn_age_days :
							       !strcmp(fk, "maxAgeDays") ? &c->max_age_days : &c->records;
						*dst = fv->u.number.i;
					} else {
						r = usage_error("pack", "--template %s: component \"%s\": bad field \"%s\"", path, c->name, fk);
					}
				}
			}
		} else {
			r = usage_error("pack", "--template %s: unknown key \"%s\"", path, k);
		}
	}
	yajl_tree_free(root);
	return r;
}

/* NAME=PATH[,warn=DAYS][,max=DAYS][,captured-at=TIME][,records=N] */
static int parse_component_arg(const char *arg, struct manifest *m)
{
	_cleanup_(freep) char *s = strdup(arg);
	if (!s)
		return 1;
	char *eq = strchr(s, '=');
	if (!eq || eq == s)
		return usage_error("pack", "--component '%s': expected NAME=PATH[,warn=DAYS][,max=DAYS][,captured-at=TIME][,records=N]", arg);
	*eq = 0;
	char *rest = eq + 1, *save = NULL;
	char *path = strtok_r(rest, ",", &save);
	if (!path || !*path)
		return usage_error("pack", "--component '%s': missing PATH", arg);
	struct component *c = component_slot(m, s);
	if (!c || set_string(&c->path, path) < 0)
		return 1;
	for (char *kv; (kv = strtok_r(NULL, ",", &save));) {
		char *v = strchr(kv, '=');
		uint64_t n;
		if (!v)
			return usage_error("pack", "--component '%s': '%s' is not KEY=VALUE", arg, kv);
		*v++ = 0;
		if (!strcmp(kv, "captured-at")) {
			if (time_parse(v, &c->captured_at) < 0)
				return usage_error("pack", "--component '%s': captured-at: not an RFC 3339 time", arg);
			continue;
		}
		if (strcmp(kv, "warn") && strcmp(kv, "max") && strcmp(kv, "records"))
			return usage_error("pack", "--component '%s': unknown key '%s' (warn, max, captured-at, records)", arg, kv);
		if (parse_u64(v, &n) < 0 || n > INT32_MAX)
			return usage_error("pack", "--component '%s': %s: not a non-negative integer", arg, kv);
		if (!strcmp(kv, "warn"))
			c->warn_age_days = (int64_t)n;
		else if (!strcmp(kv, "max"))
			c->max_age_days = (int64_t)n;
		else
			c->records = (int64_t)n;
	}
	return 0;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && !strcmp(s + a - b, suffix);
}

static int build_identity(struct pack_args *a, struct manifest *m, const char *out_path,
			  enum kit_compression *comp)
{
	int64_t expires_in = -1;
	int r;
	m->schema_version = MANIFEST_SCHEMA_VERSION;
	m->sequence = -1;
	if (a->template_path && (r = load_template(a->template_path, m, &expires_in)) != 0)
		return r;
	if (a->kit_id && set_string(&m->kit_id, a->kit_id) < 0)
		return 1;
	if (!m->kit_id && set_string(&m->kit_id, "stella-ops-offline-kit") < 0)
		return 1;
	if (a->version && set_string(&m->version, a->version) < 0)
		return 1;
	if (!m->version)
		return usage_error("pack", "missing --version (or \"version\" in the template)");
	if (a->channel && set_string(&m->channel, a->channel) < 0)
		return 1;
	if (!m->channel && set_string(&m->channel, "stable") < 0)
		return 1;
	for (const char **p = (const char *[]){ "kit-id", m->kit_id, "version", m->version, "channel", m->channel, NULL }; *p; p += 2)
		if (!manifest_ident_ok(p[1]))
			return usage_error("pack", "--%s '%s': use 1-128 characters of [A-Za-z0-9._+-]", p[0], p[1]);
	if (a->sequence) {
		uint64_t n;
		if (parse_u64(a->sequence, &n) < 0 || n > INT64_MAX)
			return usage_error("pack", "--sequence '%s': not a non-negative integer", a->sequence);
		m->sequence = (int64_t)n;
	}
	if (m->sequence < 0)
		return usage_error("pack", "missing --sequence (or \"sequence\" in the template)");

	if (a->created_at) {
		if (time_parse(a->created_at, &m->created_at) < 0)
			return usage_error("pack", "--created-at '%s': not an RFC 3339 time", a->created_at);
	} else if (getenv("SOURCE_DATE_EPOCH")) {
		uint64_t n;
		if (parse_u64(getenv("SOURCE_DATE_EPOCH"), &n) < 0 || n > INT32_MAX * 4ull)
			return usage_error("pack", "SOURCE_DATE_EPOCH='%s': not a number of seconds", getenv("SOURCE_DATE_EPOCH"));
		m->created_at = (int64_t)n;
	} else {
		m->created_at = (int64_t)time(NULL);
	}
	if (a->expires_at && a->expires_in)
		return usage_error("pack", "--expires-at and --expires-in exclude each other");
	if (a->expires_at) {
		if (time_parse(a->expires_at, &m->expires_at) < 0)
			return usage_error("pack", "--expires-at '%s': not an RFC 3339 time", a->expires_at);
	} else if (a->expires_in || expires_in >= 0 || !m->expires_at) {
		uint64_t days = expires_in >= 0 ? (uint64_t)expires_in : 30;
		if (a->expires_in && (parse_u64(a->expires_in, &days) < 0 || days == 0 || days > 36500))
			return usage_error("pack", "--expires-in '%s': a number of days from 1 to 36500", a->expires_in);
		m->expires_at = m->created_at + (int64_t)days * 86400;
	}
	if (m->expires_at <= m->created_at)
		return usage_error("pack", "the kit would expire before it is created (expiresAt <= createdAt)");

	for (size_t i = 0; i < a->ncomponents; i++)
		if ((r = parse_component_arg(a->components[i], m)) != 0)
			return r;
	for (size_t i = 0; i < m->ncomponents; i++) {
		struct component *c = &m->components[i];
		const char *why = NULL;
		if (!c->path)
			return usage_error("pack", "component '%s' has no path", c->name);
		if (strlen(c->name) > 128)
			return usage_error("pack", "component name '%.40s...' is longer than 128 bytes", c->name);
		if (path_check(c->path, strlen(c->path), &why) < 0)
			return usage_error("pack", "component '%s': path '%s': %s", c->name, c->path, why);
		if (!c->captured_at)
			c->captured_at = m->created_at;
		if (c->max_age_days < c->warn_age_days)
			return usage_error("pack", "component '%s': max (%lld days) is below warn (%lld days)", c->name,
					   (long long)c->max_age_days, (long long)c->warn_age_days);
	}

	if (!a->compress)
		*comp = ends_with(out_path, ".gz") || ends_with(out_path, ".tgz") ? KIT_COMPRESS_GZIP :
			ends_with(out_path, ".zst") ? KIT_COMPRESS_ZSTD : KIT_COMPRESS_NONE;
	else if (!strcmp(a->compress, "none"))
		*comp = KIT_COMPRESS_NONE;
	else if (!strcmp(a->compress, "gzip"))
		*comp = KIT_COMPRESS_GZIP;
	else if (!strcmp(a->compress, "zstd"))
		*comp = KIT_COMPRESS_ZSTD;
	else
		return usage_error("pack", "--compress must be none, gzip or zstd, not '%s'", a->compress);
	return 0;
}

/* The command line into a; returns -1 to go on, else the exit code (help
 * printed, or a usage error). */
static int parse_args(int argc, char **argv, struct pack_args *a)
{
	static const struct option opts[] = {
		{ "key", required_argument, NULL, 'k' },
		{ "template", required_argument, NULL, OPT_TEMPLATE },
		{ "kit-id", required_argument, NULL, OPT_KIT_ID },
		{ "version", required_argument, NULL, OPT_VERSION },
		{ "sequence", required_argument, NULL, OPT_SEQUENCE },
		{ "channel", required_argument, NULL, OPT_CHANNEL },
		{ "created-at", required_argument, NULL, OPT_CREATED_AT },
		{ "expires-at", required_argument, NULL, OPT_EXPIRES_AT },
		{ "expires-in", required_argument, NULL, OPT_EXPIRES_IN },
		{ "component", required_argument, NULL, OPT_COMPONENT },
		{ "compress", required_argument, NULL, OPT_COMPRESS },
		{ "base", required_argument, NULL, OPT_BASE },
		{ "no-index", no_argument, NULL, OPT_NO_INDEX },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+k:h", opts, NULL)) != -1) {
		switch (c) {
		case 'k':
			if (a->nkeys == ARRAY_SIZE(a->keys))
				return usage_error("pack", "at most %zu keys", ARRAY_SIZE(a->keys));
			a->keys[a->nkeys++] = optarg;
			break;
		case OPT_TEMPLATE: a->template_path = optarg; break;
		case OPT_KIT_ID: a->kit_id = optarg; break;
		case OPT_VERSION: a->version = optarg; break;
		case OPT_SEQUENCE: a->sequence = optarg; break;
		case OPT_CHANNEL: a->channel = optarg; break;
		case OPT_CREATED_AT: a->created_at = optarg; break;
		case OPT_EXPIRES_AT: a->expires_at = optarg; break;
		case OPT_EXPIRES_IN: a->expires_in = optarg; break;
		case OPT_COMPONENT:
			if (a->ncomponents == ARRAY_SIZE(a->components))
				return usage_error("pack", "too many --component options");
			a->components[a->ncomponents++] = optarg;
			break;
		case OPT_COMPRESS: a->compress = optarg; break;
		case OPT_BASE: a->base = optarg; break;
		case OPT_NO_INDEX: a->no_index = true; break;
		case 'h': fputs(help, stdout); return 0;
		default: return usage_error("pack", "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (a->nkeys == 0)
		return usage_error("pack", "at least one -k KEY is required");
	if (argc - optind != 2)
		return usage_error("pack", "expected SRC_DIR and OUT_KIT");
	return -1;
}

/* --base: the base kit's manifest, for its identity and digests (its
 * signature was checked when it was received), tied into m.  Returns -1 to
 * go on (*base set), else the exit code. */
static int load_base(const char *path, struct manifest *m, struct manifest **base)
{
	struct stella_err e = { 0 };
	struct kitverify_opts vo = { 0 };
	struct kitverify_result vr;
	int r = kit_verify(path, &vo, &vr, &e);
	if (r < 0)
		return report(&e, r);
	*base = vr.manifest;
	m->has_base = true;
	if (!(m->base_version = strdup(vr.manifest->version)))
		return report(&e, -ENOMEM);
	memcpy(m->base_manifest_sha256, vr.manifest_sha256, 32);
	if (strcmp(vr.manifest->kit_id, m->kit_id))
		return usage_error("pack", "--base %s belongs to kit '%s', not '%s'", path, vr.manifest->kit_id, m->kit_id);
	if (vr.manifest->sequence >= m->sequence)
		return usage_error("pack", "--sequence %lld must be greater than the base's %lld", (long long)m->sequence,
				   (long long)vr.manifest->sequence);
	return -1;
}

static void print_result(const char *out, const struct manifest *m, const struct manifest *base,
			 enum kit_compression comp, const struct kitwrite_result *wr)
{
	char hex[65];
	hex_encode(wr->kit_sha256, 32, hex);
	printf("wrote %s: %s %s (sequence %lld), %llu files, %llu bytes of content, %s, %llu bytes, sha256 %s\n",
	       out, m->kit_id, m->version, (long long)m->sequence, (unsigned long long)wr->files,
	       (unsigned long long)wr->bytes, kit_compression_name(comp), (unsigned long long)wr->kit_size, hex);
	if (base)
		printf("delta on %s: %llu artifacts carried, %llu left to the base\n", base->version,
		       (unsigned long long)wr->carried, (unsigned long long)wr->from_base);
}

int cmd_pack(int argc, char **argv)
{
	struct pack_args a = { 0 };
	int rc = parse_args(argc, argv, &a), r;
	if (rc >= 0)
		return rc;
	const char *src = argv[optind], *out = argv[optind + 1];

	struct stella_err e = { 0 };
	struct manifest *m = calloc(1, sizeof(*m));
	struct manifest *base = NULL;
	EVP_PKEY *keys[ARRAY_SIZE(a.keys)] = { 0 };
	enum kit_compression comp = KIT_COMPRESS_NONE;
	if (!m)
		return report(&e, -ENOMEM);
	if ((rc = build_identity(&a, m, out, &comp)) != 0) {
		if (rc == 1)
			rc = report(&e, -ENOMEM);
		goto done;
	}
	for (size_t i = 0; i < a.nkeys; i++)
		if ((r = key_load_private(a.keys[i], &keys[i], &e)) < 0) {
			rc = report(&e, r);
			goto done;
		}
	if (a.base && (rc = load_base(a.base, m, &base)) >= 0)
		goto done;

	struct kitwrite_opts wo = {
		.src_dir = src, .out_path = out, .keys = keys, .nkeys = a.nkeys, .manifest = m,
		.compression = comp, .no_index = a.no_index, .base = base, .progress = progress_cb, .progress_ctx = (void *)"packing",
	};
	struct kitwrite_result wr;
	if ((r = kit_write(&wo, &wr, &e)) < 0) {
		rc = report(&e, r);
		goto done;
	}
	progress_done();
	print_result(out, m, base, comp, &wr);
	rc = 0;
done:
	for (size_t i = 0; i < a.nkeys; i++)
		EVP_PKEY_free(keys[i]);
	manifest_free(base);
	manifest_free(m);
	return rc;
}
