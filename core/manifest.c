#include "manifest.h"

#include <openssl/evp.h>

#include <ctype.h>
#include <unistd.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#include "bounds.h"
#include "json.h"
#include "path.h"
#include "util.h"

const char *artifact_type_name(enum artifact_type t)
{
	switch (t) {
	case ARTIFACT_DIR: return "directory";
	case ARTIFACT_SYMLINK: return "symlink";
	default: return "file";
	}
}

bool manifest_ident_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 128 || !strcmp(s, ".") || !strcmp(s, ".."))
		return false;
	for (const char *p = s; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("._+-", *p))
			return false;
	return true;
}

void manifest_free(struct manifest *m)
{
	if (!m)
		return;
	free(m->kit_id);
	free(m->version);
	free(m->channel);
	free(m->base_version);
	for (size_t i = 0; i < m->ncomponents; i++) {
		free(m->components[i].name);
		free(m->components[i].path);
	}
	free(m->components);
	for (size_t i = 0; i < m->nartifacts; i++) {
		free(m->artifacts[i].name);
		free(m->artifacts[i].target);
	}
	free(m->artifacts);
	free(m);
}

/* ---- field readers: each names the field in its error ---- */

static int obj_check_dups(const struct json *o, const char *where, struct stella_err *e)
{
	/* Two parsers that pick different copies of a duplicated key would
	 * disagree on what was signed: refuse duplicates outright. */
	if (o->dup)
		return stella_fail(e, -EBADMSG, "manifest: %s: duplicate key \"%s\"", where, o->dup);
	return 0;
}

/* The string member key (v, or NULL when absent), borrowed from the
 * parse: 1 found, 0 absent. */
static int str_at(const struct json *v, const char *key, bool required, const char *where, const char **out,
		  struct stella_err *e)
{
	if (!v) {
		if (required)
			return stella_fail(e, -EBADMSG, "manifest: %s%s\"%s\" is missing", where,
					   *where ? ": " : "", key);
		return 0;
	}
	if (v->type != JSON_STRING)
		return stella_fail(e, -EBADMSG, "manifest: %s%s\"%s\" must be a string", where,
				   *where ? ": " : "", key);
	*out = v->u.s;
	return 1;
}

/* The string member key of o, borrowed from the parse: 1 found, 0 absent. */
static int get_str(const struct json *o, const char *key, bool required, const char *where,
		   const char **out, struct stella_err *e)
{
	return str_at(json_get(o, key), key, required, where, out, e);
}

static int get_string(const struct json *o, const char *key, bool required, const char *where,
		      char **out, struct stella_err *e)
{
	const char *s = NULL;
	int r = get_str(o, key, required, where, &s, e);
	if (r > 0 && !(*out = strdup(s)))
		return -ENOMEM;
	return r;
}

static int int_at(const struct json *v, const char *key, bool required, int64_t min, const char *where,
		  int64_t *out, struct stella_err *e)
{
	if (!v) {
		if (required)
			return stella_fail(e, -EBADMSG, "manifest: %s%s\"%s\" is missing", where,
					   *where ? ": " : "", key);
		return 0;
	}
	if (v->type != JSON_INT || v->u.i < min)
		return stella_fail(e, -EBADMSG, "manifest: %s%s\"%s\" must be an integer >= %lld", where,
				   *where ? ": " : "", key, (long long)min);
	*out = v->u.i;
	return 1;
}

static int get_int(const struct json *o, const char *key, bool required, int64_t min, const char *where,
		   int64_t *out, struct stella_err *e)
{
	return int_at(json_get(o, key), key, required, min, where, out, e);
}

static int get_time(const struct json *o, const char *key, bool required, const char *where,
		    int64_t *out, struct stella_err *e)
{
	const char *s = NULL;
	int r = get_str(o, key, required, where, &s, e);
	if (r <= 0)
		return r;
	if (time_parse(s, out) < 0)
		return stella_fail(e, -EBADMSG, "manifest: %s%s\"%s\" is not an RFC 3339 time: \"%.64s\"",
				   where, *where ? ": " : "", key, s);
	return 1;
}

static int get_ident(const struct json *o, const char *key, bool required, const char *where,
		     char **out, struct stella_err *e)
{
	int r = get_string(o, key, required, where, out, e);
	if (r > 0 && !manifest_ident_ok(*out))
		return stella_fail(e, -EBADMSG,
				   "manifest: %s%s\"%s\" must be 1-128 characters of [A-Za-z0-9._+-]: \"%.64s\"",
				   where, *where ? ": " : "", key, *out);
	return r;
}

static int parse_fsverity(const char *s, uint8_t out[32])
{
	if (strncmp(s, FSVERITY_PREFIX, strlen(FSVERITY_PREFIX)))
		return -EINVAL;
	return hex_decode(s + strlen(FSVERITY_PREFIX), out, 32);
}

static int parse_artifact(const struct json *v, size_t idx, struct artifact *a, struct stella_err *e)
{
	/* Until the name is known, the index says which one (formatted only
	 * when needed: this runs once per artifact). */
	char where[64];
#define WHERE (snprintf(where, sizeof(where), "artifacts[%zu]", idx), where)
	if (v->type != JSON_OBJECT)
		return stella_fail(e, -EBADMSG, "manifest: %s must be an object", WHERE);
	int r;
	if (v->dup)
		return obj_check_dups(v, WHERE, e);
	/* Its members found in one pass (no key is there twice: dup above),
	 * not one json_get per field: this runs once per artifact, and the
	 * lookups were a tenth of a first mount's parse. */
	struct { const struct json *name, *type, *mode, *captured, *size, *sha, *fsv, *target; } f = { 0 };
	for (const struct json *m = v->u.first; m; m = m->next) {
		const char *k = m->key;
		switch (k[0]) {
		case 'n': if (!strcmp(k, "name")) f.name = m; break;
		case 't': if (!strcmp(k, "type")) f.type = m; else if (!strcmp(k, "target")) f.target = m; break;
		case 'm': if (!strcmp(k, "mode")) f.mode = m; break;
		case 'c': if (!strcmp(k, "capturedAt")) f.captured = m; break;
		case 's': if (!strcmp(k, "size")) f.size = m; else if (!strcmp(k, "sha256")) f.sha = m; break;
		case 'f': if (!strcmp(k, "fsverity")) f.fsv = m; break;
		default: break;
		}
	}
	const struct json *nm = f.name;
	if (!nm || nm->type != JSON_STRING)
		return get_string(v, "name", true, WHERE, &a->name, e);
	if (!(a->name = strdup(nm->u.s)))
		return -ENOMEM;
	const char *why;
	if (path_check(a->name, strlen(a->name), &why) < 0)
		return stella_fail(e, -EBADMSG, "manifest: unsafe name \"%.300s\": %s", a->name, why);
	if (!strcmp(a->name, "manifest") || !strncmp(a->name, "manifest/", 9))
		return stella_fail(e, -EBADMSG, "manifest: unsafe name \"%.300s\": manifest/ is reserved",
				   a->name);

	/* From here on the artifact's name is the most useful "where". */
#undef WHERE
	char *nwhere = a->name;
	const char *type = NULL;
	if ((r = str_at(f.type, "type", false, nwhere, &type, e)) < 0)
		return r;
	if (!type || !strcmp(type, "file"))
		a->type = ARTIFACT_FILE;
	else if (!strcmp(type, "directory"))
		a->type = ARTIFACT_DIR;
	else if (!strcmp(type, "symlink"))
		a->type = ARTIFACT_SYMLINK;
	else
		return stella_fail(e, -EBADMSG, "manifest: %s: unsupported type \"%.32s\"", nwhere, type);

	int64_t mode = a->type == ARTIFACT_FILE ? 0644 : a->type == ARTIFACT_DIR ? 0755 : 0777;
	if ((r = int_at(f.mode, "mode", false, 0, nwhere, &mode, e)) < 0)
		return r;
	if (mode > 0777)
		return stella_fail(e, -EBADMSG, "manifest: %s: mode %#llo has bits beyond 0777 (setuid, setgid and sticky are refused)",
				   nwhere, (long long)mode);
	a->mode = (uint32_t)mode;
	const char *cap = NULL;
	if ((r = str_at(f.captured, "capturedAt", false, nwhere, &cap, e)) < 0)
		return r;
	if (cap && time_parse(cap, &a->captured_at) < 0)
		return stella_fail(e, -EBADMSG, "manifest: %s: \"capturedAt\" is not an RFC 3339 time: \"%.64s\"", nwhere,
				   cap);

	if (a->type == ARTIFACT_FILE) {
		int64_t size = 0;
		const char *sha = NULL, *fsv = NULL;
		if ((r = int_at(f.size, "size", true, 0, nwhere, &size, e)) < 0 ||
		    (r = str_at(f.sha, "sha256", true, nwhere, &sha, e)) < 0 ||
		    (r = str_at(f.fsv, "fsverity", true, nwhere, &fsv, e)) < 0)
			return r;
		a->size = (uint64_t)size;
		if (hex_decode(sha, a->sha256, 32) < 0)
			return stella_fail(e, -EBADMSG, "manifest: %s: \"sha256\" must be 64 hex digits", nwhere);
		if (parse_fsverity(fsv, a->fsverity) < 0)
			return stella_fail(e, -EBADMSG, "manifest: %s: \"fsverity\" must be \"sha256:\" and 64 hex digits",
					   nwhere);
	} else if (a->type == ARTIFACT_SYMLINK) {
		const char *tg = NULL;
		if ((r = str_at(f.target, "target", true, nwhere, &tg, e)) < 0)
			return r;
		if (!(a->target = strdup(tg)))
			return -ENOMEM;
		size_t tl = strlen(a->target);
		if (tl == 0 || tl > STELLA_NAME_MAX)
			return stella_fail(e, -EBADMSG, "manifest: %s: symlink target must be 1-%u bytes", nwhere,
					   STELLA_NAME_MAX);
	}
	return 0;
}

static int parse_component(const char *name, const struct json *v, struct component *c, int64_t created_at,
			   struct stella_err *e)
{
	if (!(c->name = strdup(name)))
		return -ENOMEM;
	char where[80];
	snprintf(where, sizeof(where), "components.%.60s", name);
	if (strlen(name) == 0 || strlen(name) > 128)
		return stella_fail(e, -EBADMSG, "manifest: %s: component names are 1-128 bytes", where);
	if (v->type != JSON_OBJECT)
		return stella_fail(e, -EBADMSG, "manifest: %s must be an object", where);
	int r = obj_check_dups(v, where, e);
	if (r < 0)
		return r;
	c->captured_at = created_at;
	c->records = -1;
	c->warn_age_days = MANIFEST_DEFAULT_WARN_DAYS;
	c->max_age_days = MANIFEST_DEFAULT_MAX_DAYS;
	if ((r = get_string(v, "path", true, where, &c->path, e)) < 0 ||
	    (r = get_time(v, "capturedAt", false, where, &c->captured_at, e)) < 0 ||
	    (r = get_int(v, "records", false, 0, where, &c->records, e)) < 0 ||
	    (r = get_int(v, "warnAgeDays", false, 0, where, &c->warn_age_days, e)) < 0 ||
	    (r = get_int(v, "maxAgeDays", false, 0, where, &c->max_age_days, e)) < 0)
		return r;
	const char *why;
	if (path_check(c->path, strlen(c->path), &why) < 0)
		return stella_fail(e, -EBADMSG, "manifest: %s: unsafe name \"%.300s\": %s", where, c->path, why);
	return 0;
}

/* The artifacts stream past one at a time (json.h): no tree of them. */
struct parse_ctx {
	struct manifest *m;
	size_t cap;
	struct stella_err *e;
	bool failed;
};

static int on_artifact(void *ctx, size_t i, const struct json *v, struct stella_err *je)
{
	struct parse_ctx *p = ctx;
	struct manifest *m = p->m;
	(void)je;
	if (i >= STELLA_ARTIFACTS_MAX) {
		p->failed = true;
		return stella_fail(p->e, -EBADMSG, "manifest: more than %u artifacts", STELLA_ARTIFACTS_MAX);
	}
	if (m->nartifacts == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 1024;
		struct artifact *a = realloc(m->artifacts, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		m->artifacts = a;
		p->cap = cap;
	}
	struct artifact *a = &m->artifacts[m->nartifacts++];
	memset(a, 0, sizeof(*a));
	int r = parse_artifact(v, i, a, p->e);
	if (r < 0)
		p->failed = true;
	return r;
}

/* The top level's "index" (kit format 1.1), if any. */
static int parse_index(const struct json *root, struct manifest *m, struct stella_err *e)
{
	const struct json *idx = json_get(root, "index");
	if (!idx)
		return 0;
	const char *sha = NULL;
	int64_t size = 0;
	int r;
	if (idx->type != JSON_OBJECT)
		return stella_fail(e, -EBADMSG, "manifest: \"index\" must be an object");
	if ((r = obj_check_dups(idx, "index", e)) < 0 || (r = get_int(idx, "size", true, 1, "index", &size, e)) < 0 ||
	    (r = get_str(idx, "sha256", true, "index", &sha, e)) < 0)
		return r;
	if (hex_decode(sha, m->index_sha256, 32) < 0)
		return stella_fail(e, -EBADMSG, "manifest: index: \"sha256\" must be 64 hex digits");
	if ((uint64_t)size > STELLA_INDEX_MAX)
		return stella_fail(e, -EBADMSG, "manifest: index: too large (%lld bytes, limit %llu)", (long long)size,
				   (unsigned long long)STELLA_INDEX_MAX);
	m->index_size = (uint64_t)size;
	m->has_index = true;
	return 0;
}

/* Everything but the artifacts, from the parsed top level (the artifact
 * array itself was streamed: only its type is left to check). */
static int parse_top(const struct json *root, struct manifest *m, struct stella_err *e)
{
	int r;
	if (root->type != JSON_OBJECT) {
		r = stella_fail(e, -EBADMSG, "manifest: invalid JSON: top level must be an object");
		return r;
	}
	if ((r = obj_check_dups(root, "top level", e)) < 0)
		return r;
	if ((r = get_int(root, "schemaVersion", true, 0, "", &m->schema_version, e)) < 0)
		return r;
	if (m->schema_version != MANIFEST_SCHEMA_VERSION) {
		r = stella_fail(e, -EBADMSG, "manifest: unsupported schemaVersion %lld (this stellafs reads %d)",
				(long long)m->schema_version, MANIFEST_SCHEMA_VERSION);
		return r;
	}
	if ((r = get_ident(root, "kitId", true, "", &m->kit_id, e)) < 0 ||
	    (r = get_ident(root, "version", true, "", &m->version, e)) < 0 ||
	    (r = get_int(root, "sequence", true, 0, "", &m->sequence, e)) < 0 ||
	    (r = get_ident(root, "channel", false, "", &m->channel, e)) < 0 ||
	    (r = get_time(root, "createdAt", true, "", &m->created_at, e)) < 0 ||
	    (r = get_time(root, "expiresAt", true, "", &m->expires_at, e)) < 0)
		return r;
	if (!m->channel && !(m->channel = strdup("stable"))) {
		return -ENOMEM;
	}

	const struct json *base = json_get(root, "base");
	if (base) {
		const char *sha = NULL;
		if (base->type != JSON_OBJECT) {
			r = stella_fail(e, -EBADMSG, "manifest: \"base\" must be an object");
			return r;
		}
		if ((r = obj_check_dups(base, "base", e)) < 0 ||
		    (r = get_ident(base, "version", true, "base", &m->base_version, e)) < 0 ||
		    (r = get_str(base, "manifestSha256", true, "base", &sha, e)) < 0)
			return r;
		if (hex_decode(sha, m->base_manifest_sha256, 32) < 0) {
			r = stella_fail(e, -EBADMSG, "manifest: base: \"manifestSha256\" must be 64 hex digits");
			return r;
		}
		m->has_base = true;
	}

	if ((r = parse_index(root, m, e)) < 0)
		return r;

	const struct json *comps = json_get(root, "components");
	if (comps) {
		if (comps->type != JSON_OBJECT) {
			r = stella_fail(e, -EBADMSG, "manifest: \"components\" must be an object");
			return r;
		}
		if ((r = obj_check_dups(comps, "components", e)) < 0)
			return r;
		size_t n = comps->len;
		if (n > 1024) {
			r = stella_fail(e, -EBADMSG, "manifest: more than 1024 components");
			return r;
		}
		if (n && !(m->components = calloc(n, sizeof(*m->components)))) {
			r = -ENOMEM;
			return r;
		}
		for (const struct json *c = comps->u.first; c; c = c->next)
			if ((r = parse_component(c->key, c, &m->components[m->ncomponents++], m->created_at, e)) < 0)
				return r;
	}

	const struct json *arts = json_get(root, "artifacts");
	if (!arts) {
		r = stella_fail(e, -EBADMSG, "manifest: \"artifacts\" is missing");
		return r;
	}
	if (arts->type != JSON_ARRAY) {
		r = stella_fail(e, -EBADMSG, "manifest: \"artifacts\" must be an array");
		return r;
	}
	return 0;
}

int manifest_parse(const char *buf, size_t len, struct manifest **out, struct stella_err *e)
{
	struct manifest *m = NULL;
	struct json_doc *doc = NULL;
	const struct json *root;
	int r;

	if (len > STELLA_MANIFEST_MAX)
		return stella_fail(e, -EBADMSG, "manifest: too large (%zu bytes, limit %u)", len,
				   STELLA_MANIFEST_MAX);
	/* A raw NUL would end a name early for anyone reading it as a C
	 * string; the parser refuses \u0000 inside strings. */
	const char *nul = memchr(buf, 0, len);
	if (nul)
		return stella_fail(e, -EBADMSG, "manifest: unsafe name or string: NUL byte at offset %zu",
				   (size_t)(nul - buf));
	if (!(m = calloc(1, sizeof(*m))))
		return -ENOMEM;
	struct parse_ctx pc = { .m = m, .e = e };
	struct json_opts jo = {
		.max_depth = STELLA_JSON_DEPTH_MAX, .stream_key = "artifacts", .element = on_artifact, .ctx = &pc,
	};
	struct stella_err je = { 0 };
	if ((r = json_parse(buf, len, &jo, &doc, &root, &je)) < 0) {
		if (!pc.failed)
			r = stella_fail(e, r, "manifest: %s", stella_err_text(&je, r));
		goto out;
	}
	if ((r = parse_top(root, m, e)) < 0 || (r = manifest_validate(m, e)) < 0)
		goto out;
	*out = m;
	m = NULL;
	r = 0;
out:
	manifest_free(m);
	json_doc_free(doc);
	return r;
}

/* ---- whole-manifest rules ---- */

static int cmp_artifact(const void *a, const void *b)
{
	return path_cmp(((const struct artifact *)a)->name, ((const struct artifact *)b)->name);
}

static int cmp_component(const void *a, const void *b)
{
	return strcmp(((const struct component *)a)->name, ((const struct component *)b)->name);
}

ssize_t manifest_index(const struct manifest *m, const char *name)
{
	size_t lo = 0, hi = m->nartifacts;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = path_cmp(name, m->artifacts[mid].name);
		if (c == 0)
			return (ssize_t)mid;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -1;
}

bool artifact_same(const struct artifact *a, const struct artifact *b)
{
	if (a->type != b->type || a->mode != b->mode)
		return false;
	if (a->type == ARTIFACT_FILE)
		return a->size == b->size && !memcmp(a->sha256, b->sha256, 32) && !memcmp(a->fsverity, b->fsverity, 32);
	if (a->type == ARTIFACT_SYMLINK)
		return !strcmp(a->target, b->target);
	return true;
}

const struct artifact *manifest_find(const struct manifest *m, const char *name)
{
	ssize_t i = manifest_index(m, name);
	return i < 0 ? NULL : &m->artifacts[i];
}

static const struct artifact *find_n(const struct manifest *m, const char *name, size_t len)
{
	char buf[STELLA_NAME_MAX + 1];
	if (len > STELLA_NAME_MAX)
		return NULL;
	memcpy(buf, name, len);
	buf[len] = 0;
	return manifest_find(m, buf);
}

/* Resolve a symlink's target the way the kernel would inside the mounted
 * tree, following the kit's own symlinks, and refuse any path that climbs
 * above the kit's root.  A purely lexical check is not enough: with
 * "a/b/s -> ../.." and "a/b/l -> s/..", "l" looks harmless but leads out.
 *
 * The walk consumes `rest` by advancing an offset: moving the rest down
 * for every component made a chain of long targets cost the cube of its
 * length.  Every component walked, over all the manifest's symlinks,
 * draws on *steps (8 Mi, plus 16 for each symlink): the same chain
 * reached from a million short links would be walked a million times,
 * and the manifest is checked before its signature is. */
static int check_symlink(const struct manifest *m, const struct artifact *link, uint64_t *steps,
			 uint64_t budget, struct stella_err *e)
{
	size_t cap = STELLA_NAME_MAX * (STELLA_SYMLINK_HOPS + 2) + 2;
	_cleanup_(freep) char *cur = malloc(cap);   /* resolved prefix, "a/b" */
	_cleanup_(freep) char *rest = malloc(cap);  /* what is left to walk, from rest + at */
	_cleanup_(freep) char *tmp = malloc(cap);
	if (!cur || !rest || !tmp)
		return -ENOMEM;
	size_t plen = path_parent_len(link->name);
	memcpy(cur, link->name, plen);
	cur[plen] = 0;
	size_t cl = plen, at = 0;
	snprintf(rest, cap, "%s", link->target);
	unsigned hops = 0;

	if (link->target[0] == '/')
		goto escape;
	while (rest[at]) {
		if (*steps == 0)
			return stella_fail(e, -EBADMSG, "manifest: symlinks: resolving them takes more than %llu steps",
					   (unsigned long long)budget);
		--*steps;
		const char *c = rest + at;
		size_t n = strcspn(c, "/");
		size_t next = at + n + (c[n] ? 1 : 0);
		if (n == 0 || (n == 1 && c[0] == '.')) {
			at = next;
			continue;
		}
		if (n == 2 && c[0] == '.' && c[1] == '.') {
			if (!cl)
				goto escape;
			cl = path_parent_len(cur);
			cur[cl] = 0;
			at = next;
			continue;
		}
		if (cl + 1 + n + 1 > cap)
			goto escape;
		size_t newl = cl ? cl + 1 + n : n;
		if (cl)
			cur[cl] = '/';
		memcpy(cur + (cl ? cl + 1 : 0), c, n);
		cur[newl] = 0;
		const struct artifact *a = find_n(m, cur, newl);
		if (a && a->type == ARTIFACT_SYMLINK) {
			if (++hops > STELLA_SYMLINK_HOPS)
				return stella_fail(e, -EBADMSG, "manifest: symlink \"%.300s\": too many levels of symlinks",
						   link->name);
			if (a->target[0] == '/')
				goto escape;
			cur[cl] = 0; /* back to the link's directory */
			size_t tl = strlen(a->target), nl = strlen(rest + next);
			if (tl + 1 + nl + 1 > cap)
				goto escape;
			memcpy(tmp, a->target, tl);
			if (nl)
				tmp[tl++] = '/';
			memcpy(tmp + tl, rest + next, nl + 1);
			char *t = rest;
			rest = tmp;
			tmp = t;
			at = 0;
			continue;
		}
		cl = newl;
		at = next;
	}
	return 0;
escape:
	return stella_fail(e, -EBADMSG, "manifest: symlink \"%.300s\" -> \"%.300s\" escapes the kit",
			   link->name, link->target);
}

/* expiresAt after createdAt, components sorted and unique */
static int validate_head(struct manifest *m, struct stella_err *e)
{
	if (m->expires_at <= m->created_at)
		return stella_fail(e, -EBADMSG, "manifest: \"expiresAt\" must be later than \"createdAt\"");
	if (m->ncomponents)
		qsort(m->components, m->ncomponents, sizeof(*m->components), cmp_component);
	for (size_t i = 1; i < m->ncomponents; i++)
		if (!strcmp(m->components[i - 1].name, m->components[i].name))
			return stella_fail(e, -EBADMSG, "manifest: duplicate component \"%s\"", m->components[i].name);
	return 0;
}

/* Rule 3 over the sorted artifacts of m: resolution only ever asks
 * whether a path is a listed symlink, so m may hold the symlinks alone
 * (the streaming parser keeps just those). */
static int check_symlinks(const struct manifest *m, struct stella_err *e)
{
	uint64_t steps = STELLA_SYMLINK_STEPS;
	for (size_t i = 0; i < m->nartifacts; i++)
		if (m->artifacts[i].type == ARTIFACT_SYMLINK)
			steps += STELLA_SYMLINK_STEPS_EACH;
	const uint64_t budget = steps;
	for (size_t i = 0; i < m->nartifacts; i++) {
		if (m->artifacts[i].type != ARTIFACT_SYMLINK)
			continue;
		int r = check_symlink(m, &m->artifacts[i], &steps, budget, e);
		if (r < 0)
			return r;
	}
	return 0;
}

int manifest_validate(struct manifest *m, struct stella_err *e)
{
	if (m->expires_at <= m->created_at)
		return stella_fail(e, -EBADMSG, "manifest: \"expiresAt\" must be later than \"createdAt\"");
	/* Packed manifests come sorted: one pass instead of a sort. */
	bool sorted = true;
	for (size_t i = 1; i < m->nartifacts && sorted; i++)
		sorted = path_cmp(m->artifacts[i - 1].name, m->artifacts[i].name) < 0;
	if (!sorted)
		qsort(m->artifacts, m->nartifacts, sizeof(*m->artifacts), cmp_artifact);
	int r = validate_head(m, e);
	if (r < 0)
		return r;
	m->nlisted = m->nartifacts;
	for (size_t i = 0; i < m->nartifacts; i++) {
		const struct artifact *a = &m->artifacts[i];
		if (i > 0 && !path_cmp(m->artifacts[i - 1].name, a->name))
			return stella_fail(e, -EBADMSG, "manifest: duplicate name \"%.300s\"", a->name);
		/* Every proper prefix must be a directory (or absent: implied).
		 * Siblings share theirs: checked once, for the first of them. */
		size_t plen = path_parent_len(a->name);
		if (i > 0 && plen == path_parent_len(m->artifacts[i - 1].name) &&
		    !memcmp(a->name, m->artifacts[i - 1].name, plen))
			continue;
		for (size_t p = plen; p > 0;) {
			const struct artifact *parent = find_n(m, a->name, p);
			if (parent && parent->type != ARTIFACT_DIR)
				return stella_fail(e, -EBADMSG, "manifest: \"%.300s\" is inside \"%.300s\", which is a %s",
						   a->name, parent->name, artifact_type_name(parent->type));
			while (p > 0 && a->name[p - 1] != '/')
				p--;
			p = p ? p - 1 : 0; /* the next shorter prefix */
		}
	}
	return check_symlinks(m, e);
}

/* ---- the streaming parser: artifacts one at a time, never all ---- */

struct manifest_stream {
	struct json_stream *js;
	struct json_opts jo;
	struct stella_err je;         /* the JSON layer's message */
	struct stella_err *e;
	manifest_artifact_fn fn;
	void *ctx;
	bool failed;                  /* *e holds the message */
	bool unsorted;
	bool skip_links;
	size_t n;                     /* artifacts so far */
	uint64_t fed;                 /* bytes so far */
	char *prev;                   /* the last name */
	size_t prev_cap;
	/* The listed non-directories that may still be a proper prefix of a
	 * later name.  In bytewise order the names that extend X come after X
	 * but not next to it ("a", "a.txt", "a/b"): X stays a candidate while
	 * names in (X, X "0") go by, '0' being the byte after '/'.  Such
	 * candidates are each a string prefix of the next, so they are one
	 * string (the last pushed) and their lengths: at most a name's worth. */
	char *chain;
	size_t chain_cap;
	size_t *clen;
	uint8_t *ctype;
	size_t cn, ccap;
	/* the symlinks, sorted: all rule 3 needs */
	struct manifest links;
	size_t links_cap;
	/* yajl lexes a token split across feeds again from its start at each
	 * feed: a long string fed in small pieces would cost the square of
	 * its length.  While a feed makes no progress, pieces are gathered
	 * into ever larger ones (memory: what yajl holds of the token anyway). */
	char *pend;
	size_t pend_len, pend_cap, pend_want;
};

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return 0;
	size_t c = *cap ? *cap : 16;
	while (c < need)
		c *= 2;
	void *q = realloc(*p, c * size);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

static void artifact_clear(struct artifact *a)
{
	free(a->name);
	free(a->target);
	memset(a, 0, sizeof(*a));
}

/* Rules 1 and 2 for the next name in a sorted manifest. */
static int stream_order(struct manifest_stream *ms, const struct artifact *a)
{
	size_t len = strlen(a->name);
	if (ms->n > 0) {
		int c = path_cmp(ms->prev, a->name);
		if (c == 0)
			return stella_fail(ms->e, -EBADMSG, "manifest: duplicate name \"%.300s\"", a->name);
		if (c > 0) {
			ms->unsorted = true;
			return stella_fail(ms->e, -EDOM, "manifest: artifacts not sorted by name (\"%.300s\" after \"%.300s\")",
					   a->name, ms->prev);
		}
	}
	if (grow((void **)&ms->prev, &ms->prev_cap, len + 1, 1) < 0)
		return -ENOMEM;
	memcpy(ms->prev, a->name, len + 1);
	while (ms->cn) {
		size_t l = ms->clen[ms->cn - 1];
		if (len > l && !memcmp(a->name, ms->chain, l) && (unsigned char)a->name[l] < '0')
			break;
		ms->cn--;
	}
	for (size_t k = ms->cn; k-- > 0;) {
		size_t l = ms->clen[k];
		if (a->name[l] == '/')
			return stella_fail(ms->e, -EBADMSG, "manifest: \"%.300s\" is inside \"%.*s\", which is a %s", a->name,
					   (int)MIN(l, (size_t)300), ms->chain, artifact_type_name(ms->ctype[k]));
	}
	if (a->type == ARTIFACT_DIR)
		return 0;
	if (grow((void **)&ms->chain, &ms->chain_cap, len + 1, 1) < 0 ||
	    grow((void **)&ms->clen, &ms->ccap, ms->cn + 1, sizeof(*ms->clen)) < 0)
		return -ENOMEM;
	/* ctype is as long as clen's capacity; on failure the old block
	 * stays ms's, freed with it */
	uint8_t *ct = realloc(ms->ctype, ms->ccap);
	if (!ct)
		return -ENOMEM;
	ms->ctype = ct;
	memcpy(ms->chain, a->name, len + 1);
	ms->clen[ms->cn] = len;
	ms->ctype[ms->cn++] = (uint8_t)a->type;
	return 0;
}

static int on_stream_artifact(void *ctx, size_t i, const struct json *v, struct stella_err *je)
{
	struct manifest_stream *ms = ctx;
	(void)je;
	struct artifact a = { 0 };
	int r;
	if (i >= STELLA_ARTIFACTS_MAX)
		r = stella_fail(ms->e, -EBADMSG, "manifest: more than %u artifacts", STELLA_ARTIFACTS_MAX);
	else if ((r = parse_artifact(v, i, &a, ms->e)) == 0 && (r = stream_order(ms, &a)) == 0)
		r = ms->fn ? ms->fn(ms->ctx, i, &a, ms->e) : 0;
	if (r == 0 && a.type == ARTIFACT_SYMLINK && !ms->skip_links) {
		if (grow((void **)&ms->links.artifacts, &ms->links_cap, ms->links.nartifacts + 1, sizeof(a)) < 0) {
			r = -ENOMEM;
		} else {
			ms->links.artifacts[ms->links.nartifacts++] = a;
			memset(&a, 0, sizeof(a));
		}
	}
	artifact_clear(&a);
	ms->n = i + 1;
	if (r < 0 && r != -ENOMEM)
		ms->failed = true;
	return r;
}

int manifest_stream_new(manifest_artifact_fn fn, void *ctx, unsigned flags, struct manifest_stream **out,
			struct stella_err *e)
{
	struct manifest_stream *ms = calloc(1, sizeof(*ms));
	if (!ms)
		return -ENOMEM;
	ms->fn = fn;
	ms->ctx = ctx;
	ms->e = e;
	ms->skip_links = flags & MANIFEST_STREAM_CHECKED;
	ms->jo = (struct json_opts){
		.max_depth = STELLA_JSON_DEPTH_MAX, .stream_key = "artifacts", .element = on_stream_artifact, .ctx = ms,
	};
	int r = json_stream_new(&ms->jo, &ms->js, &ms->je);
	if (r < 0) {
		free(ms);
		return r;
	}
	*out = ms;
	return 0;
}

void manifest_stream_free(struct manifest_stream *ms)
{
	if (!ms)
		return;
	json_stream_free(ms->js);
	for (size_t i = 0; i < ms->links.nartifacts; i++)
		artifact_clear(&ms->links.artifacts[i]);
	free(ms->links.artifacts);
	free(ms->prev);
	free(ms->chain);
	free(ms->clen);
	free(ms->ctype);
	free(ms->pend);
	free(ms);
}

int manifest_stream_index(const struct manifest_stream *ms, uint64_t *size, uint8_t sha256[32])
{
	const struct json *root = json_stream_root(ms->js);
	struct manifest m = { 0 };
	struct stella_err e = { 0 };
	if (!root || root->type != JSON_OBJECT || parse_index(root, &m, &e) < 0 || !m.has_index)
		return 0;
	*size = m.index_size;
	memcpy(sha256, m.index_sha256, 32);
	return 1;
}

bool manifest_stream_unsorted(const struct manifest_stream *ms)
{
	return ms->unsorted;
}

/* The JSON layer's failures are named here; the artifact rules named
 * their own. */
static int stream_fail(struct manifest_stream *ms, int r)
{
	if (!ms->failed) {
		ms->failed = true;
		r = stella_fail(ms->e, r, "manifest: %s", stella_err_text(&ms->je, r));
	}
	return r;
}

static int feed_now(struct manifest_stream *ms, const void *buf, size_t len)
{
	uint64_t before = json_stream_events(ms->js);
	int r = json_stream_feed(ms->js, buf, len);
	if (r < 0)
		return stream_fail(ms, r);
	ms->pend_len = 0;
	if (json_stream_events(ms->js) != before)
		ms->pend_want = 0;
	else
		ms->pend_want = 2 * MAX(len, (size_t)MANIFEST_STREAM_CHUNK);
	return 0;
}

int manifest_stream_feed(struct manifest_stream *ms, const void *buf, size_t len)
{
	if (ms->failed)
		return -EBADMSG;
	if (len > STELLA_MANIFEST_MAX - ms->fed) {
		ms->failed = true;
		return stella_fail(ms->e, -EBADMSG, "manifest: too large (%llu bytes, limit %u)",
				   (unsigned long long)ms->fed + len, STELLA_MANIFEST_MAX);
	}
	const char *nul = memchr(buf, 0, len);
	if (nul) {
		ms->failed = true;
		return stella_fail(ms->e, -EBADMSG, "manifest: unsafe name or string: NUL byte at offset %zu",
				   (size_t)(ms->fed + (uint64_t)(nul - (const char *)buf)));
	}
	ms->fed += len;
	if (ms->pend_want) {
		if (grow((void **)&ms->pend, &ms->pend_cap, ms->pend_len + len, 1) < 0)
			return -ENOMEM;
		memcpy(ms->pend + ms->pend_len, buf, len);
		ms->pend_len += len;
		if (ms->pend_len < ms->pend_want)
			return 0;
		buf = ms->pend;
		len = ms->pend_len;
	}
	return feed_now(ms, buf, len);
}

int manifest_stream_finish(struct manifest_stream *ms, struct manifest **out, struct stella_err *e)
{
	const struct json *root;
	if (ms->failed)
		return -EBADMSG;
	int r = ms->pend_len ? feed_now(ms, ms->pend, ms->pend_len) : 0;
	if (r < 0)
		return r;
	r = json_stream_finish(ms->js, &root);
	if (r < 0)
		return stream_fail(ms, r);
	struct manifest *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	const struct json *arts = json_get(root, "artifacts");
	if ((r = parse_top(root, m, e)) == 0 && (r = validate_head(m, e)) == 0 &&
	    (ms->skip_links || (r = check_symlinks(&ms->links, e)) == 0)) {
		m->nlisted = arts ? arts->len : 0;
		*out = m;
		return 0;
	}
	manifest_free(m);
	return r;
}

int manifest_stream_fd(int fd, manifest_artifact_fn fn, void *ctx, struct manifest **out, bool *unsorted,
		       struct stella_err *e)
{
	struct manifest_stream *ms;
	int r = manifest_stream_new(fn, ctx, 0, &ms, e);
	if (r < 0)
		return r;
	_cleanup_(freep) char *buf = malloc(MANIFEST_STREAM_CHUNK);
	uint64_t off = 0;
	while (r == 0) {
		ssize_t n = buf ? pread(fd, buf, MANIFEST_STREAM_CHUNK, (off_t)off) : -1;
		if (n < 0) {
			r = buf ? stella_fail_errno(e, -errno, "manifest: reading it back") : -ENOMEM;
			break;
		}
		if (n == 0) {
			r = manifest_stream_finish(ms, out, e);
			break;
		}
		off += (uint64_t)n;
		r = manifest_stream_feed(ms, buf, (size_t)n);
	}
	*unsorted = ms->unsorted;
	manifest_stream_free(ms);
	return r;
}

/* ---- pulling artifacts one at a time: a chunk's worth queued ---- */

struct manifest_cursor {
	struct manifest_stream *ms;
	int fd;                      /* read from here, or */
	const char *mem;             /* from here */
	uint64_t len, off;
	char *buf;
	struct artifact *q;
	size_t qn, qhead, qcap;
	bool done;
	struct stella_err *e;
};

static int enqueue(void *ctx, size_t i, const struct artifact *a, struct stella_err *e)
{
	struct manifest_cursor *c = ctx;
	(void)i;
	(void)e;
	if (grow((void **)&c->q, &c->qcap, c->qn + 1, sizeof(*c->q)) < 0)
		return -ENOMEM;
	struct artifact *x = &c->q[c->qn];
	*x = *a;
	x->name = strdup(a->name);
	x->target = a->target ? strdup(a->target) : NULL;
	if (!x->name || (a->target && !x->target)) {
		artifact_clear(x);
		return -ENOMEM;
	}
	c->qn++;
	return 0;
}

static void cursor_drain(struct manifest_cursor *c)
{
	for (size_t i = 0; i < c->qn; i++)
		artifact_clear(&c->q[i]);
	c->qn = c->qhead = 0;
}

static int cursor_open(struct manifest_cursor **out, struct stella_err *e)
{
	struct manifest_cursor *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = -1;
	c->e = e;
	int r = manifest_stream_new(enqueue, c, MANIFEST_STREAM_CHECKED, &c->ms, e);
	if (r < 0) {
		free(c);
		return r;
	}
	*out = c;
	return 0;
}

int manifest_cursor_open_fd(int fd, struct manifest_cursor **out, struct stella_err *e)
{
	*out = NULL;
	int r = cursor_open(out, e);
	if (r == 0 && !((*out)->buf = malloc(MANIFEST_STREAM_CHUNK))) {
		manifest_cursor_free(*out);
		*out = NULL;
		return -ENOMEM;
	}
	if (r == 0)
		(*out)->fd = fd;
	return r;
}

int manifest_cursor_open_mem(const char *buf, size_t len, struct manifest_cursor **out, struct stella_err *e)
{
	*out = NULL;
	int r = cursor_open(out, e);
	if (r == 0) {
		(*out)->mem = buf;
		(*out)->len = len;
	}
	return r;
}

void manifest_cursor_free(struct manifest_cursor *c)
{
	if (!c)
		return;
	cursor_drain(c);
	free(c->q);
	free(c->buf);
	manifest_stream_free(c->ms);
	free(c);
}

int manifest_cursor_next(void *ctx, const struct artifact **a, struct stella_err *e)
{
	struct manifest_cursor *c = ctx;
	/* failures are told in this call's e */
	if (e) {
		c->e = e;
		c->ms->e = e;
	}
	while (c->qhead == c->qn) {
		cursor_drain(c);
		if (c->done)
			return 0;
		int r;
		if (c->mem) {
			size_t n = (size_t)MIN(c->len - c->off, (uint64_t)MANIFEST_STREAM_CHUNK);
			r = n ? manifest_stream_feed(c->ms, c->mem + c->off, n) : 0;
			c->off += n;
			if (n == 0)
				c->done = true;
		} else {
			ssize_t n = pread(c->fd, c->buf, MANIFEST_STREAM_CHUNK, (off_t)c->off);
			if (n < 0)
				return stella_fail_errno(c->e, -errno, "manifest: reading it back");
			r = n ? manifest_stream_feed(c->ms, c->buf, (size_t)n) : 0;
			c->off += (uint64_t)n;
			if (n == 0)
				c->done = true;
		}
		if (r == 0 && c->done) {
			struct manifest *m = NULL;
			r = manifest_stream_finish(c->ms, &m, c->e);
			manifest_free(m);
		}
		if (r < 0)
			return r;
	}
	*a = &c->q[c->qhead++];
	return 1;
}

int manifest_walk_next(void *ctx, const struct artifact **a, struct stella_err *e)
{
	struct manifest_walk *w = ctx;
	(void)e;
	if (w->i >= w->m->nartifacts)
		return 0;
	*a = &w->m->artifacts[w->i++];
	return 1;
}

/* ---- canonical writer ---- */

#define G(call) do { if ((call) != yajl_gen_status_ok) goto fail; } while (0)

static yajl_gen_status gstr(yajl_gen g, const char *s)
{
	return yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static yajl_gen_status gtime(yajl_gen g, int64_t t)
{
	char buf[32];
	time_format(t, buf);
	return gstr(g, buf);
}

static int gen_fields(yajl_gen g, const struct manifest *m, bool artifacts);

int manifest_gen_fields(void *gen, const struct manifest *m)
{
	return gen_fields(gen, m, true);
}

static int gen_fields(yajl_gen g, const struct manifest *m, bool artifacts)
{
	char hex[65], fsv[80];

	G(gstr(g, "schemaVersion")); G(yajl_gen_integer(g, m->schema_version));
	G(gstr(g, "kitId")); G(gstr(g, m->kit_id));
	G(gstr(g, "version")); G(gstr(g, m->version));
	G(gstr(g, "sequence")); G(yajl_gen_integer(g, m->sequence));
	G(gstr(g, "channel")); G(gstr(g, m->channel));
	G(gstr(g, "createdAt")); G(gtime(g, m->created_at));
	G(gstr(g, "expiresAt")); G(gtime(g, m->expires_at));
	if (m->has_base) {
		G(gstr(g, "base"));
		G(yajl_gen_map_open(g));
		G(gstr(g, "version")); G(gstr(g, m->base_version));
		hex_encode(m->base_manifest_sha256, 32, hex);
		G(gstr(g, "manifestSha256")); G(gstr(g, hex));
		G(yajl_gen_map_close(g));
	}
	if (m->has_index) {
		G(gstr(g, "index"));
		G(yajl_gen_map_open(g));
		G(gstr(g, "size")); G(yajl_gen_integer(g, (long long)m->index_size));
		hex_encode(m->index_sha256, 32, hex);
		G(gstr(g, "sha256")); G(gstr(g, hex));
		G(yajl_gen_map_close(g));
	}
	G(gstr(g, "components"));
	G(yajl_gen_map_open(g));
	for (size_t i = 0; i < m->ncomponents; i++) {
		const struct component *c = &m->components[i];
		G(gstr(g, c->name));
		G(yajl_gen_map_open(g));
		G(gstr(g, "path")); G(gstr(g, c->path));
		G(gstr(g, "capturedAt")); G(gtime(g, c->captured_at));
		if (c->records >= 0) {
			G(gstr(g, "records")); G(yajl_gen_integer(g, c->records));
		}
		G(gstr(g, "warnAgeDays")); G(yajl_gen_integer(g, c->warn_age_days));
		G(gstr(g, "maxAgeDays")); G(yajl_gen_integer(g, c->max_age_days));
		G(yajl_gen_map_close(g));
	}
	G(yajl_gen_map_close(g));
	G(gstr(g, "artifacts"));
	G(yajl_gen_array_open(g));
	for (size_t i = 0; artifacts && i < m->nartifacts; i++) {
		const struct artifact *a = &m->artifacts[i];
		G(yajl_gen_map_open(g));
		G(gstr(g, "name")); G(gstr(g, a->name));
		if (a->type != ARTIFACT_FILE) {
			G(gstr(g, "type")); G(gstr(g, artifact_type_name(a->type)));
		}
		if (a->type == ARTIFACT_FILE) {
			G(gstr(g, "size")); G(yajl_gen_integer(g, (long long)a->size));
			hex_encode(a->sha256, 32, hex);
			G(gstr(g, "sha256")); G(gstr(g, hex));
			hex_encode(a->fsverity, 32, hex);
			snprintf(fsv, sizeof(fsv), FSVERITY_PREFIX "%s", hex);
			G(gstr(g, "fsverity")); G(gstr(g, fsv));
		}
		if (a->type == ARTIFACT_SYMLINK) {
			G(gstr(g, "target")); G(gstr(g, a->target));
		} else {
			G(gstr(g, "mode")); G(yajl_gen_integer(g, a->mode));
		}
		if (a->captured_at) {
			G(gstr(g, "capturedAt")); G(gtime(g, a->captured_at));
		}
		G(yajl_gen_map_close(g));
	}
	G(yajl_gen_array_close(g));
	return 0;
fail:
	return -ENOMEM;
}

static int write_doc(const struct manifest *m, bool artifacts, char **out, size_t *len);

int manifest_write(const struct manifest *m, char **out, size_t *len)
{
	return write_doc(m, true, out, len);
}

int manifest_write_identity(const struct manifest *m, char **out, size_t *len)
{
	return write_doc(m, false, out, len);
}

static int write_doc(const struct manifest *m, bool artifacts, char **out, size_t *len)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g)
		return -ENOMEM;
	yajl_gen_config(g, yajl_gen_beautify, 1);
	yajl_gen_config(g, yajl_gen_indent_string, "  ");
	G(yajl_gen_map_open(g));
	if (gen_fields(g, m, artifacts) < 0)
		goto fail;
	G(yajl_gen_map_close(g));

	const unsigned char *buf;
	size_t n;
	G(yajl_gen_get_buf(g, &buf, &n));
	char *s = malloc(n + 2);
	if (!s)
		goto fail;
	memcpy(s, buf, n);
	if (n == 0 || s[n - 1] != '\n')
		s[n++] = '\n';
	s[n] = 0;
	*out = s;
	*len = n;
	yajl_gen_free(g);
	return 0;
fail:
	yajl_gen_free(g);
	return -ENOMEM;
}

/* ---- streaming to a file: the manifest of millions of artifacts is
 * hundreds of MB; the packer never holds it (nor yajl's copy of it) ---- */

struct fd_out {
	int fd;
	EVP_MD_CTX *sha;
	uint8_t *buf;
	size_t n;
	uint64_t total;
	int err;
	char last;
};

static void fd_flush(struct fd_out *o)
{
	if (o->n && !o->err) {
		int r = write_full(o->fd, o->buf, o->n);
		if (r < 0)
			o->err = r;
		else if (!EVP_DigestUpdate(o->sha, o->buf, o->n))
			o->err = -ENOMEM;
	}
	o->n = 0;
}

static void fd_print(void *ctx, const char *str, size_t len)
{
	struct fd_out *o = ctx;
	o->total += len;
	if (len)
		o->last = str[len - 1];
	while (len) {
		size_t take = MIN(len, (size_t)(1u << 20) - o->n);
		memcpy(o->buf + o->n, str, take);
		o->n += take;
		str += take;
		len -= take;
		if (o->n == 1u << 20)
			fd_flush(o);
	}
}

int manifest_write_fd(const struct manifest *m, int fd, uint8_t sha256[32], uint64_t *len)
{
	struct fd_out o = { .fd = fd, .sha = EVP_MD_CTX_new(), .buf = malloc(1u << 20) };
	yajl_gen g = yajl_gen_alloc(NULL);
	int r = -ENOMEM;
	if (!g || !o.sha || !o.buf || !EVP_DigestInit_ex2(o.sha, EVP_sha256(), NULL))
		goto out;
	yajl_gen_config(g, yajl_gen_beautify, 1);
	yajl_gen_config(g, yajl_gen_indent_string, "  ");
	yajl_gen_config(g, yajl_gen_print_callback, fd_print, &o);
	if (yajl_gen_map_open(g) != yajl_gen_status_ok || gen_fields(g, m, true) < 0 ||
	    yajl_gen_map_close(g) != yajl_gen_status_ok)
		goto out;
	if (o.total == 0 || o.last != '\n')
		fd_print(&o, "\n", 1);
	fd_flush(&o);
	r = o.err;
	if (r == 0 && !EVP_DigestFinal_ex(o.sha, sha256, NULL))
		r = -ENOMEM;
	*len = o.total;
out:
	if (g)
		yajl_gen_free(g);
	EVP_MD_CTX_free(o.sha);
	free(o.buf);
	return r;
}
