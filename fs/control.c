/* The virtual files of the mount: status, status.json, health, metrics, and
 * control, the one writable file, with the commands of SPEC's control-file
 * section.  In direct mode there is one snapshot, so the commands that move
 * between snapshots answer as an operator would expect from a single kit. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "kitverify.h"
#include "stellafs.h"
#include "util.h"

int64_t sf_now(struct stellafs *sf)
{
	return sf->fixed_now ? sf->fixed_now : (int64_t)time(NULL);
}

struct snapshot *sf_snapshot(struct stellafs *sf, uint64_t slot)
{
	struct snapshot *s = NULL;
	pthread_mutex_lock(&sf->lock);
	if (slot == 1 && sf->current)
		s = snapshot_ref(sf->current);
	pthread_mutex_unlock(&sf->lock);
	return s;
}

static char *journal_text(struct stellafs *sf, size_t *len)
{
	size_t cap = 1024 + JOURNAL_LEN * 900;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	size_t n = 0;
	pthread_mutex_lock(&sf->lock);
	n += (size_t)snprintf(out + n, cap - n,
			      "# last %u command(s), oldest first: time uid command -> result\n"
			      "# commands: activate VERSION | rollback [VERSION] | import PATH | verify [VERSION|all]\n"
			      "#           remove VERSION | gc [keep=N] | reload\n",
			      sf->journal_n);
	for (unsigned i = 0; i < sf->journal_n; i++) {
		const struct journal_entry *j = &sf->journal[(sf->journal_next + JOURNAL_LEN - sf->journal_n + i) % JOURNAL_LEN];
		char t[32];
		time_format(j->when, t);
		n += (size_t)snprintf(out + n, cap - n, "%s uid=%u %s -> %s%s%s\n", t, (unsigned)j->uid, j->cmd,
				      j->err ? strerrorname_np(j->err) : "ok", j->result[0] ? ": " : "", j->result);
		if (n >= cap)
			n = cap - 1;
	}
	pthread_mutex_unlock(&sf->lock);
	*len = n;
	return out;
}

char *vfile_content(struct stellafs *sf, fuse_ino_t ino, size_t *len)
{
	if (ino == INO_CONTROL)
		return journal_text(sf, len);
	pthread_mutex_lock(&sf->lock);
	struct snapshot *s = sf->current ? snapshot_ref(sf->current) : NULL;
	struct health_input in = {
		.mode = "direct",
		.source = sf->source,
		.kit = s ? s->identity : NULL,
		.snapshots = s ? (const char *const *)&s->version : NULL,
		.nsnapshots = s ? 1 : 0,
		.now = sf_now(sf),
		.trust_ok = sf->trust_ok,
		.trust_detail = sf->trust_detail,
		.signers = sf->signers,
		.threshold = sf->threshold,
		.verified_bytes = s ? atomic_load(&s->verified_bytes) : 0,
		.failures = s ? atomic_load(&s->failures) : 0,
		.last_failure = s ? s->last_failure : NULL,
		.store_usage_pct = -1,
		.switches = atomic_load(&sf->switches),
	};
	pthread_mutex_unlock(&sf->lock);
	char *out = NULL;
	switch (ino) {
	case INO_STATUS: out = health_render_status(&in); break;
	case INO_STATUS_JSON: out = health_render_json(&in); break;
	case INO_HEALTH: out = health_render_health(&in); break;
	case INO_METRICS: out = health_render_metrics(&in); break;
	}
	snapshot_unref(s);
	if (out)
		*len = strlen(out);
	return out;
}

bool control_allowed(struct stellafs *sf, fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	if (ctx->uid == 0)
		return true;
	if (!sf->has_admin_gid)
		return false;
	if (ctx->gid == sf->admin_gid)
		return true;
	gid_t groups[256];
	int n = fuse_req_getgroups(req, 256, groups);
	for (int i = 0; i < n && i < 256; i++)
		if (groups[i] == sf->admin_gid)
			return true;
	return false;
}

static void journal_add(struct stellafs *sf, uid_t uid, const char *cmd, int err, const char *result)
{
	pthread_mutex_lock(&sf->lock);
	struct journal_entry *j = &sf->journal[sf->journal_next];
	j->when = sf_now(sf);
	j->uid = uid;
	snprintf(j->cmd, sizeof(j->cmd), "%s", cmd);
	j->err = err;
	snprintf(j->result, sizeof(j->result), "%s", result);
	sf->journal_next = (sf->journal_next + 1) % JOURNAL_LEN;
	if (sf->journal_n < JOURNAL_LEN)
		sf->journal_n++;
	pthread_mutex_unlock(&sf->lock);
}

/* Re-read the trust store and ask it again whether it vouches for the kit. */
static int cmd_reload(struct stellafs *sf, char *res, size_t rl)
{
	struct stella_err e = { 0 };
	struct trust *t = NULL;
	char *mjson = NULL, *sig = NULL;
	size_t mlen, slen;
	unsigned signers = 0;
	int r = trust_load(sf->trust_path, &t, &e);
	if (r == 0)
		r = kit_read_head(sf->source, &mjson, &mlen, &sig, &slen, &e);
	if (r == 0)
		r = sig_check(t, sf->threshold, (const uint8_t *)mjson, mlen, sig, slen, &signers, &e);
	free(mjson);
	free(sig);
	pthread_mutex_lock(&sf->lock);
	if (r == 0 || t) {
		trust_free(sf->trust);
		sf->trust = t;
		t = NULL;
	}
	sf->trust_ok = r == 0;
	sf->signers = signers;
	snprintf(sf->trust_detail, sizeof(sf->trust_detail), "%s", r == 0 ? "" : stella_err_text(&e, r));
	pthread_mutex_unlock(&sf->lock);
	trust_free(t);
	if (r < 0) {
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r == -EINVAL ? -EKEYREJECTED : r;
	}
	snprintf(res, rl, "trust store %s reloaded: %u trusted signature(s), threshold %u", sf->trust_path, signers,
		 sf->threshold);
	return 0;
}

static int cmd_verify(struct stellafs *sf, const char *arg, char *res, size_t rl)
{
	struct snapshot *s = sf_snapshot(sf, 1);
	if (!s)
		return -ENOENT;
	if (arg && strcmp(arg, "all") && strcmp(arg, s->version)) {
		snprintf(res, rl, "no snapshot \"%s\" (this mount serves %s)", arg, s->version);
		snapshot_unref(s);
		return -ENOENT;
	}
	struct stella_err e = { 0 };
	uint64_t files = 0, bytes = 0;
	int r = snapshot_verify_all(s, &files, &bytes, &e);
	if (r < 0)
		snprintf(res, rl, "%s: %s", s->version, stella_err_text(&e, r));
	else
		snprintf(res, rl, "%s: %llu files, %llu bytes: every block matches the signed manifest", s->version,
			 (unsigned long long)files, (unsigned long long)bytes);
	snapshot_unref(s);
	return r;
}

static int run_command(struct stellafs *sf, char *line, char *res, size_t rl)
{
	char *save = NULL;
	char *cmd = strtok_r(line, " \t", &save);
	char *arg = strtok_r(NULL, " \t", &save);
	char *extra = strtok_r(NULL, " \t", &save);
	struct snapshot *s = sf_snapshot(sf, 1);
	const char *cur = s ? s->version : "";
	int r;

	if (!cmd) {
		r = -EINVAL;
	} else if (!strcmp(cmd, "verify")) {
		r = extra ? -EINVAL : cmd_verify(sf, arg, res, rl);
	} else if (!strcmp(cmd, "activate")) {
		if (!arg || extra)
			r = -EINVAL;
		else if (strcmp(arg, cur))
			snprintf(res, rl, "no snapshot \"%s\" (this mount serves %s)", arg, cur), r = -ENOENT;
		else
			snprintf(res, rl, "%s is already current", cur), r = 0;
	} else if (!strcmp(cmd, "rollback")) {
		if (extra)
			r = -EINVAL;
		else
			snprintf(res, rl, "no %s snapshot to roll back to: a kit file mounted directly holds one (%s)",
				 arg ? "such" : "previous", cur), r = -ENOENT;
	} else if (!strcmp(cmd, "remove")) {
		if (!arg || extra)
			r = -EINVAL;
		else if (!strcmp(arg, cur))
			snprintf(res, rl, "%s is current and in use", cur), r = -EBUSY;
		else
			snprintf(res, rl, "no snapshot \"%s\"", arg), r = -ENOENT;
	} else if (!strcmp(cmd, "gc")) {
		uint64_t keep = 1;
		if (extra || (arg && (strncmp(arg, "keep=", 5) || parse_u64(arg + 5, &keep) < 0 || keep == 0)))
			r = -EINVAL;
		else
			snprintf(res, rl, "nothing to collect: one snapshot (%s)", cur), r = 0;
	} else if (!strcmp(cmd, "import")) {
		if (!arg || extra)
			r = -EINVAL;
		else
			snprintf(res, rl, "import needs a store: this mount serves one kit file (%s)", sf->source),
				r = -EOPNOTSUPP;
	} else if (!strcmp(cmd, "reload")) {
		r = arg ? -EINVAL : cmd_reload(sf, res, rl);
	} else {
		r = -EINVAL;
	}
	if (r == -EINVAL && !res[0])
		snprintf(res, rl, "bad command: expected activate VERSION | rollback [VERSION] | import PATH | "
				  "verify [VERSION|all] | remove VERSION | gc [keep=N] | reload");
	snapshot_unref(s);
	return r;
}

int control_write(struct stellafs *sf, uid_t uid, const char *buf, size_t len)
{
	if (len > 4096)
		return -EINVAL;
	if (pthread_mutex_trylock(&sf->cmd_lock) != 0)
		return -EBUSY;
	char text[4097];
	memcpy(text, buf, len);
	text[len] = 0;
	int r = 0;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line && r == 0; line = strtok_r(NULL, "\n", &save)) {
		size_t l = strlen(line);
		while (l && (line[l - 1] == '\r' || line[l - 1] == ' ' || line[l - 1] == '\t'))
			line[--l] = 0;
		while (*line == ' ' || *line == '\t')
			line++;
		if (!*line || *line == '#')
			continue;
		char shown[256], res[512] = "";
		snprintf(shown, sizeof(shown), "%s", line);
		for (char *p = shown; *p; p++)
			if ((unsigned char)*p < 0x20)
				*p = '?';
		r = run_command(sf, line, res, sizeof(res));
		journal_add(sf, uid, shown, -r, res);
		stella_log(r ? LOG_WARNING : LOG_INFO, "control: uid %u: %s: %s%s%s", (unsigned)uid, shown,
			   r ? strerror(-r) : "ok", res[0] ? ": " : "", res);
	}
	pthread_mutex_unlock(&sf->cmd_lock);
	return r;
}
