#include "manifest.h"

#include <openssl/evp.h>

#include <ctype.h>
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

/* The string member key of o, borrowed from the parse: 1 found, 0 absent. */
static int get_str(const struct json *o, const char *key, bool required, const char *where,
		   const char **out, struct stella_err *e)
{
	const struct json *v = json_get(o, key);
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

static int get_string(const struct json *o, const char *key, bool required, const char *where,
		      char **out, struct stella_err *e)
{
	const char *s = NULL;
	int r = get_str(o, key, required, where, &s, e);
	if (r > 0 && !(*out = strdup(s)))
		return -ENOMEM;
	return r;
}

static int get_int(const struct json *o, const char *key, bool required, int64_t min, const char *where,
		   int64_t *out, struct stella_err *e)
{
	const struct json *v = json_get(o, key);
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
	const struct json *nm = json_get(v, "name");
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
	if ((r = get_str(v, "type", false, nwhere, &type, e)) < 0)
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
	if ((r = get_int(v, "mode", false, 0, nwhere, &mode, e)) < 0)
		return r;
	if (mode > 0777)
		return stella_fail(e, -EBADMSG, "manifest: %s: mode %#llo has bits beyond 0777 (setuid, setgid and sticky are refused)",
				   nwhere, (long long)mode);
	a->mode = (uint32_t)mode;
	if ((r = get_time(v, "capturedAt", false, nwhere, &a->captured_at, e)) < 0)
		return r;

	if (a->type == ARTIFACT_FILE) {
		int64_t size = 0;
		const char *sha = NULL, *fsv = NULL;
		if ((r = get_int(v, "size", true, 0, nwhere, &size, e)) < 0 ||
		    (r = get_str(v, "sha256", true, nwhere, &sha, e)) < 0 ||
		    (r = get_str(v, "fsverity", true, nwhere, &fsv, e)) < 0)
			return r;
		a->size = (uint64_t)size;
		if (hex_decode(sha, a->sha256, 32) < 0)
			return stella_fail(e, -EBADMSG, "manifest: %s: \"sha256\" must be 64 hex digits", nwhere);
		if (parse_fsverity(fsv, a->fsverity) < 0)
			return stella_fail(e, -EBADMSG, "manifest: %s: \"fsverity\" must be \"sha256:\" and 64 hex digits",
					   nwhere);
	} else if (a->type == ARTIFACT_SYMLINK) {
		if ((r = get_string(v, "target", true, nwhere, &a->target, e)) < 0)
			return r;
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
	if (root->type != JSON_OBJECT) {
		r = stella_fail(e, -EBADMSG, "manifest: invalid JSON: top level must be an object");
		goto out;
	}
	if ((r = obj_check_dups(root, "top level", e)) < 0)
		goto out;
	if ((r = get_int(root, "schemaVersion", true, 0, "", &m->schema_version, e)) < 0)
		goto out;
	if (m->schema_version != MANIFEST_SCHEMA_VERSION) {
		r = stella_fail(e, -EBADMSG, "manifest: unsupported schemaVersion %lld (this stellafs reads %d)",
				(long long)m->schema_version, MANIFEST_SCHEMA_VERSION);
		goto out;
	}
	if ((r = get_ident(root, "kitId", true, "", &m->kit_id, e)) < 0 ||
	    (r = get_ident(root, "version", true, "", &m->version, e)) < 0 ||
	    (r = get_int(root, "sequence", true, 0, "", &m->sequence, e)) < 0 ||
	    (r = get_ident(root, "channel", false, "", &m->channel, e)) < 0 ||
	    (r = get_time(root, "createdAt", true, "", &m->created_at, e)) < 0 ||
	    (r = get_time(root, "expiresAt", true, "", &m->expires_at, e)) < 0)
		goto out;
	if (!m->channel && !(m->channel = strdup("stable"))) {
		r = -ENOMEM;
		goto out;
	}

	const struct json *base = json_get(root, "base");
	if (base) {
		const char *sha = NULL;
		if (base->type != JSON_OBJECT) {
			r = stella_fail(e, -EBADMSG, "manifest: \"base\" must be an object");
			goto out;
		}
		if ((r = obj_check_dups(base, "base", e)) < 0 ||
		    (r = get_ident(base, "version", true, "base", &m->base_version, e)) < 0 ||
		    (r = get_str(base, "manifestSha256", true, "base", &sha, e)) < 0)
			goto out;
		if (hex_decode(sha, m->base_manifest_sha256, 32) < 0) {
			r = stella_fail(e, -EBADMSG, "manifest: base: \"manifestSha256\" must be 64 hex digits");
			goto out;
		}
		m->has_base = true;
	}

	const struct json *idx = json_get(root, "index");
	if (idx) {
		const char *sha = NULL;
		int64_t size = 0;
		if (idx->type != JSON_OBJECT) {
			r = stella_fail(e, -EBADMSG, "manifest: \"index\" must be an object");
			goto out;
		}
		if ((r = obj_check_dups(idx, "index", e)) < 0 ||
		    (r = get_int(idx, "size", true, 1, "index", &size, e)) < 0 ||
		    (r = get_str(idx, "sha256", true, "index", &sha, e)) < 0)
			goto out;
		if (hex_decode(sha, m->index_sha256, 32) < 0) {
			r = stella_fail(e, -EBADMSG, "manifest: index: \"sha256\" must be 64 hex digits");
			goto out;
		}
		if ((uint64_t)size > STELLA_INDEX_MAX) {
			r = stella_fail(e, -EBADMSG, "manifest: index: too large (%lld bytes, limit %llu)", (long long)size,
					(unsigned long long)STELLA_INDEX_MAX);
			goto out;
		}
		m->index_size = (uint64_t)size;
		m->has_index = true;
	}

	const struct json *comps = json_get(root, "components");
	if (comps) {
		if (comps->type != JSON_OBJECT) {
			r = stella_fail(e, -EBADMSG, "manifest: \"components\" must be an object");
			goto out;
		}
		if ((r = obj_check_dups(comps, "components", e)) < 0)
			goto out;
		size_t n = comps->len;
		if (n > 1024) {
			r = stella_fail(e, -EBADMSG, "manifest: more than 1024 components");
			goto out;
		}
		if (n && !(m->components = calloc(n, sizeof(*m->components)))) {
			r = -ENOMEM;
			goto out;
		}
		for (const struct json *c = comps->u.first; c; c = c->next)
			if ((r = parse_component(c->key, c, &m->components[m->ncomponents++], m->created_at, e)) < 0)
				goto out;
	}

	const struct json *arts = json_get(root, "artifacts");
	if (!arts) {
		r = stella_fail(e, -EBADMSG, "manifest: \"artifacts\" is missing");
		goto out;
	}
	if (arts->type != JSON_ARRAY) {
		r = stella_fail(e, -EBADMSG, "manifest: \"artifacts\" must be an array");
		goto out;
	}
	if ((r = manifest_validate(m, e)) < 0)
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
	if (m->ncomponents)
		qsort(m->components, m->ncomponents, sizeof(*m->components), cmp_component);
	for (size_t i = 1; i < m->ncomponents; i++)
		if (!strcmp(m->components[i - 1].name, m->components[i].name))
			return stella_fail(e, -EBADMSG, "manifest: duplicate component \"%s\"", m->components[i].name);
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
