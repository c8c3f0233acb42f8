/* The virtual files of the mount: status, status.json, health, metrics, and
 * control, the one writable file, with the commands of stellafs(8)'s control-file
 * section.  In store mode they act on the store; in direct mode there is
 * one snapshot, so the commands that move between snapshots answer as an
 * operator would expect from a single kit. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <syslog.h>
#include <time.h>

#include "command.h"
#include "fdcache.h"
#include "kitpath.h"
#include "kitverify.h"
#include "location.h"
#include "source.h"
#include "store.h"
#include "escape.h"
#include "stellafs.h"
#include "util.h"

/* ---- import, shared by the control file and the incoming watcher ---- */

/* The absolute path P with "//", "/./" and "/../" folded by text into OUT
 * (no symbolic link followed: nothing here may reach into the mount). */
static int path_fold(const char *p, char *out, size_t n)
{
	size_t len = 0;
	if (p[0] != '/' || n < 2)
		return -EINVAL;
	out[0] = 0;
	while (*p) {
		while (*p == '/')
			p++;
		size_t c = strcspn(p, "/");
		if (c == 0 || (c == 1 && p[0] == '.')) {
			/* nothing */
		} else if (c == 2 && p[0] == '.' && p[1] == '.') {
			while (len > 0 && out[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
			out[len] = 0;
		} else {
			if (len + 1 + c + 1 > n)
				return -ENAMETOOLONG;
			out[len++] = '/';
			memcpy(out + len, p, c);
			len += c;
			out[len] = 0;
		}
		p += c;
	}
	if (len == 0)
		strcpy(out, "/");
	return 0;
}

static int import_source(struct stellafs *sf, const char *path, struct source *src, bool activate, char *res,
			 size_t rl);

int control_import(struct stellafs *sf, const char *path, const struct writer *w, bool activate, char *res, size_t rl)
{
	struct stella_err e = { 0 };
	/* Reading a kit through this mount would send the command's own
	 * thread requests to itself: with -s (one thread) it never returns.
	 * First by text, "//", "." and ".." folded (libfuse gave us the mount
	 * point through realpath), then by device at every step of the walk
	 * that opens it (kitpath.c), before any lookup inside the mount:
	 * symbolic links and /proc/self/root included. */
	char norm[4096];
	size_t ml = sf->opt.mountpoint ? strlen(sf->opt.mountpoint) : 0;
	if (ml && path_fold(path, norm, sizeof(norm)) == 0 && !strncmp(norm, sf->opt.mountpoint, ml) &&
	    (norm[ml] == '/' || !norm[ml] || ml == 1)) {
		snprintf(res, rl, "%s: inside this mount (%s): copy the kit out of it first", path, sf->opt.mountpoint);
		return -EINVAL;
	}
	/* Without our device the walk could not stop at our mount: refuse
	 * (with -s, reading through it would hang the whole mount). */
	if (!sf->opt.self_dev) {
		snprintf(res, rl, "%s: this mount's device is not known, so a path through it cannot be refused: "
			 "import with stellakit import -s STORE", path);
		return -EIO;
	}
	struct source *src = NULL;
	int r = kitpath_open(path, sf->opt.self_dev, w, &e);
	if (r >= 0)
		r = source_open_fd(r, path, &src, &e);
	if (r < 0) {
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r;
	}
	return import_source(sf, path, src, activate, res, rl);
}

int control_import_location(struct stellafs *sf, const char *url, bool activate, char *res, size_t rl)
{
	struct stella_err e = { 0 };
	struct bytes *b = NULL;
	struct source *src = NULL;
	/* nothing of it is kept on disk but what the store keeps: the import
	 * reads the kit once, from start to end */
	struct remote_opts ro = sf->opt.remote;
	ro.cache_dir = NULL;
	ro.cancel = &sf->follow.cancel; /* the daemon stops: the import ends */
	int r = location_open(url, NULL, 0, &ro, &b, &e);
	if (r == 0)
		r = source_open_bytes(b, &src, &e);
	if (r < 0) {
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r;
	}
	return import_source(sf, url, src, activate, res, rl);
}

/* Import the kit src reads (taken over), named path in messages. */
static int import_source(struct stellafs *sf, const char *path, struct source *src, bool activate, char *res,
			 size_t rl)
{
	struct stella_err e = { 0 };
	char version[129];
	int r;
	pthread_mutex_lock(&sf->lock);
	struct trust *t = sf->trust.keys;
	pthread_mutex_unlock(&sf->lock);
	struct store_import_opts o = { .trust = t, .threshold = sf->opt.threshold, .now = sf_now(sf),
				       .allow_expired = sf->opt.allow_expired, .source = src };
	/* Made current (auto_activate) as `activate` does it: only once this
	 * mount can serve it, so a second transaction. */
	struct stella_err ae = { 0 };
	int ar = 0;
	r = store_lock(sf->store, &e);
	if (r == 0) {
		r = store_import(sf->store, path, &o, version, &e);
		if (r == 0 && activate && (ar = sf_check_servable(sf, version, &ae)) == 0)
			ar = store_activate(sf->store, version, &ae);
		store_unlock(sf->store);
	}
	source_close(src);
	if (r < 0) {
		stella_err_hint(&e, r, -EKEYEXPIRED, SF_EXPIRED_HINT);
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r;
	}
	sf_changed(sf, &e);
	if (ar < 0) {
		snprintf(res, rl, "%s: imported as %s, not made current: %s", path, version, stella_err_text(&ae, ar));
		return ar;
	}
	snprintf(res, rl, "%s: imported as %s%s", path, version, activate ? ", now current" : "");
	return 0;
}

/* Store mode, after a reload: every served snapshot's kept manifest is
 * judged again under the new trust; one that falls short is no longer
 * served (docs/store.md, "Trust").  EKEYREJECTED when that is current. */
static int reload_store(struct stellafs *sf, char *res, size_t rl)
{
	size_t dropped = sf_retrust(sf);
	struct stella_err e = { 0 };
	sf_changed(sf, &e);
	char cur[129];
	struct refusal ref;
	pthread_mutex_lock(&sf->lock);
	snprintf(cur, sizeof(cur), "%s", sf->tab.current);
	size_t nref = sf->tab.nrefused;
	pthread_mutex_unlock(&sf->lock);
	if (*cur && sf_refused(sf, cur, &ref) && ref.err == -EKEYREJECTED) {
		snprintf(res, rl, "trust store %.100s reloaded, but the current snapshot %.128s is not served: %.200s", sf->opt.trust_path,
			 cur, ref.why);
		return ref.err;
	}
	snprintf(res, rl, "trust store %s reloaded: %zu snapshot(s) no longer served, %zu refused in all", sf->opt.trust_path,
		 dropped, nref);
	return 0;
}

/* Direct mode: how many keys of T sign the manifest this mount serves.
 * Read from the kit file the mount has open, not from SOURCE's path: that
 * may name another file by now (a kit signed by another key put in its
 * place), and vouching for it would say nothing of what is served.  The
 * manifest must still be the one the mount checked when it opened it. */
static int served_signers(struct stellafs *sf, const struct trust *t, unsigned *signers, struct stella_err *e)
{
	struct snapshot *s = sf_current(sf, NULL);
	struct source *src = NULL;
	char *mjson = NULL, *sig = NULL;
	size_t mlen = 0, slen = 0;
	uint8_t sha[32];
	int r = s && s->src ? source_dup(s->src, &src, e) : stella_fail(e, -EIO, "%s: no kit open", sf->opt.source);
	if (r == 0)
		r = kit_read_head_source(src, &mjson, &mlen, &sig, &slen, e);
	if (r == 0 && (r = sha256_once(mjson, mlen, sha)) < 0)
		stella_fail_errno(e, r, "manifest: SHA-256");
	if (r == 0 && memcmp(sha, s->manifest_sha256, 32))
		r = stella_fail(e, -EBADMSG, "%s: the manifest of the kit this mount serves changed under it", sf->opt.source);
	if (r == 0)
		r = sig_check(t, sf->opt.threshold, (const uint8_t *)mjson, mlen, sig, slen, signers, e);
	free(mjson);
	free(sig);
	source_close(src);
	snapshot_unref(s);
	return r;
}

/* Re-read the trust store.  Direct mode also asks it again whether it
 * vouches for the mounted kit; store mode asks it about every snapshot
 * (reload_store). */
static int cmd_reload(struct stellafs *sf, char *res, size_t rl)
{
	struct stella_err e = { 0 };
	struct trust *t = NULL;
	unsigned signers = 0;
	int r = trust_load(sf->opt.trust_path, &t, &e);
	if (r == 0 && !sf->store)
		r = served_signers(sf, t, &signers, &e);
	pthread_rwlock_wrlock(&sf->trust_lock);
	pthread_mutex_lock(&sf->lock);
	if (t) {
		/* imports and the mounted kit's signers judged by the new keys;
		 * the old trust is freed once nobody can be using it: commands
		 * hold cmd_lock, as we do, and a refresh the read lock */
		trust_free(sf->trust.keys);
		sf->trust.keys = t;
		t = NULL;
	}
	sf->trust.ok = r == 0;
	if (!sf->store)
		sf->trust.signers = signers;
	snprintf(sf->trust.detail, sizeof(sf->trust.detail), "%s", r == 0 ? "" : stella_err_text(&e, r));
	pthread_mutex_unlock(&sf->lock);
	pthread_rwlock_unlock(&sf->trust_lock);
	trust_free(t);
	if (r < 0) {
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r == -EINVAL ? -EKEYREJECTED : r;
	}
	if (sf->store)
		return reload_store(sf, res, rl);
	else
		snprintf(res, rl, "trust store %s reloaded: %u trusted signature(s), threshold %u", sf->opt.trust_path,
			 signers, sf->opt.threshold);
	return 0;
}

static int verify_one(struct stellafs *sf, uint64_t id, char *res, size_t rl, size_t *used)
{
	struct snapshot *s = sf_snapshot(sf, id);
	if (!s)
		return 0; /* removed meanwhile */
	struct stella_err e = { 0 };
	uint64_t files = 0, bytes = 0;
	int r = snapshot_verify_all(s, &files, &bytes, &e);
	/* the remedy with the failure: nothing mends a damaged blob but an
	 * import of a good kit that carries the file (docs/runbook.md) */
	if (r < 0)
		*used += (size_t)snprintf(res + *used, rl - MIN(*used, rl), "%s: %s%s; ", s->version, stella_err_text(&e, r),
					  sf->store && r == -EIO ? " (repair: import a known-good kit that carries this file)" : "");
	else
		*used += (size_t)snprintf(res + *used, rl - MIN(*used, rl), "%s: %llu files, %llu bytes ok; ", s->version,
					  (unsigned long long)files, (unsigned long long)bytes);
	snapshot_unref(s);
	return r;
}

/* all: every snapshot; else ARG, or current without one ("verify -- all"
 * reaches a snapshot whose version is "all"). */
static int cmd_verify(struct stellafs *sf, bool all, const char *arg, char *res, size_t rl)
{
	struct slot *slots = NULL;
	size_t n = sf_list(sf, &slots), used = 0;
	int r = 0, first = 0;
	bool any = false;
	char cur[129];
	pthread_mutex_lock(&sf->lock);
	snprintf(cur, sizeof(cur), "%s", sf->tab.current);
	pthread_mutex_unlock(&sf->lock);
	const char *want = !arg ? cur : arg;
	for (size_t i = 0; i < n; i++) {
		if (!all && strcmp(want, slots[i].version))
			continue;
		any = true;
		r = verify_one(sf, slots[i].id, res, rl, &used);
		if (r < 0 && !first)
			first = r;
	}
	free(slots);
	if (!any) {
		snprintf(res, rl, "no snapshot \"%s\"", want);
		return -ENOENT;
	}
	if (used >= 2 && used < rl)
		res[used - 2] = 0; /* the last "; " */
	return first;
}

static bool in_use(struct snapshot *s)
{
	/* Files open through the mount, not references: those are also taken
	 * for a moment by lookups, listings and every read of the status
	 * files, and a remove must not fail because a monitor read status. */
	return atomic_load(&s->open_files) > 0;
}

/* Unreferenced blobs and indexes go only under the writer lock: an import
 * in another process has blobs and an index in place before its row. */
static uint64_t locked_sweep(struct stellafs *sf)
{
	struct stella_err e = { 0 };
	uint64_t swept = 0;
	if (store_lock(sf->store, &e) == 0) {
		store_sweep(sf->store, &swept, &e);
		store_unlock(sf->store);
	}
	/* cached descriptors of deleted blobs would keep their space */
	if (swept)
		fdcache_flush();
	return swept;
}

/* *open (when given) tells an EBUSY for open files from one for a store
 * that stayed locked. */
static int remove_one(struct stellafs *sf, const char *version, char *res, size_t rl, bool *open)
{
	uint64_t id;
	struct refusal ref;
	struct snapshot *s = sf_by_version(sf, version, &id);
	/* one the mount refuses to serve has no open files: it may go */
	if (!s && !sf_refused(sf, version, &ref)) {
		snprintf(res, rl, "no snapshot \"%s\"", version);
		return -ENOENT;
	}
	bool busy = s && in_use(s);
	snapshot_unref(s);
	if (open)
		*open = busy;
	if (busy) {
		snprintf(res, rl, "%s has open files", version);
		return -EBUSY;
	}
	struct stella_err e = { 0 };
	int r = store_lock(sf->store, &e);
	if (r == 0) {
		r = store_remove(sf->store, version, &e);
		store_unlock(sf->store);
	}
	if (r < 0) {
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r;
	}
	sf_changed(sf, &e);
	uint64_t swept = locked_sweep(sf);
	snprintf(res, rl, "%s removed, %llu unreferenced file(s) deleted", version, (unsigned long long)swept);
	return 0;
}

static int cmd_remove(struct stellafs *sf, const char *version, char *res, size_t rl)
{
	return remove_one(sf, version, res, rl, NULL);
}

static int cmd_gc(struct stellafs *sf, uint64_t keep, char *res, size_t rl)
{
	/* current as the store has it now, not as of the last tick: another
	 * process may just have made an old snapshot current */
	struct stella_err re = { 0 };
	sf_refresh(sf, &re);
	struct slot *slots = NULL;
	size_t n = sf_list(sf, &slots), removed = 0, skipped = 0, failed = 0;
	int first_err = 0;
	char first_msg[256] = "";
	char cur[129];
	pthread_mutex_lock(&sf->lock);
	snprintf(cur, sizeof(cur), "%s", sf->tab.current);
	pthread_mutex_unlock(&sf->lock);
	/* slots are in sequence order: the oldest n - keep go, never current */
	for (size_t i = 0; i + keep < n; i++) {
		if (!strcmp(slots[i].version, cur))
			continue;
		char r1[256];
		bool open = false;
		int r = remove_one(sf, slots[i].version, r1, sizeof(r1), &open);
		if (r == 0) {
			removed++;
		} else if (open) {
			skipped++;
		} else if (r != -ENOENT) { /* ENOENT: gone meanwhile, as asked */
			if (!failed++) {
				first_err = r;
				snprintf(first_msg, sizeof(first_msg), "%s", r1);
			}
		}
	}
	free(slots);
	uint64_t swept = locked_sweep(sf);
	int n1 = snprintf(res, rl, "%zu snapshot(s) removed, %zu kept because they are open, %llu unreferenced file(s) deleted",
			  removed, skipped, (unsigned long long)swept);
	/* a gc that could not do what it was asked says so with the errno */
	if (failed && n1 >= 0 && (size_t)n1 < rl)
		snprintf(res + n1, rl - (size_t)n1, "; %zu could not be removed: %s", failed, first_msg);
	return failed ? first_err : 0;
}

/* A switch to a snapshot the mount refuses to serve is refused with its
 * reason (EKEYREJECTED: too few trusted signatures; EBADMSG: its index
 * does not match its signed manifest). */
static int switch_target_refused(struct stellafs *sf, const char *cmd, const char *arg, char *res, size_t rl)
{
	struct stella_err e = { 0 };
	char cur[129], prev[129];
	sf_refresh(sf, &e);
	const char *target = arg;
	if (!target && strcmp(cmd, "activate") && store_pointers(sf->store, cur, prev, NULL) == 0)
		target = prev;
	struct refusal ref;
	if (!target || !*target || !sf_refused(sf, target, &ref))
		return 0;
	snprintf(res, rl, "%.128s is not served: %.300s", target, ref.why);
	return ref.err;
}

static int store_switch(struct stellafs *sf, const char *cmd, const char *arg, char *res, size_t rl)
{
	struct stella_err e = { 0 };
	char now[129] = "";
	int r = switch_target_refused(sf, cmd, arg, res, rl);
	if (r < 0)
		return r;
	r = store_lock(sf->store, &e);
	if (r == 0) {
		/* The switch commits only to a snapshot this mount can serve:
		 * else the store would name a current the mount cannot show,
		 * and the command would say ok while current vanished. */
		char cur[129], prev[129];
		const char *target = arg;
		if (!target && (r = store_pointers(sf->store, cur, prev, &e)) == 0)
			target = prev;
		if (r == 0 && *target)
			r = sf_check_servable(sf, target, &e);
		if (r < 0) {
			/* nothing switched */
		} else if (!strcmp(cmd, "activate")) {
			r = store_activate(sf->store, arg, &e);
			snprintf(now, sizeof(now), "%s", arg);
		} else {
			r = store_rollback(sf->store, arg, now, &e);
		}
		store_unlock(sf->store);
	}
	if (r < 0) {
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r;
	}
	sf_changed(sf, &e);
	snprintf(res, rl, "current is %s", now);
	return 0;
}

static const char *direct_only(struct stellafs *sf)
{
	return sf->store ? NULL : sf->tab.current;
}

static int run_command(struct stellafs *sf, const struct writer *w, char *line, char *res, size_t rl)
{
	const char *single = direct_only(sf); /* the one version of direct mode */
	struct command c;
	int r = command_parse(line, &c, res, rl);

	if (r < 0) {
		/* malformed: nothing to run */
	} else if (c.kind == CMD_VERIFY) {
		r = cmd_verify(sf, c.all, c.arg, res, rl);
	} else if (c.kind == CMD_ACTIVATE || c.kind == CMD_ROLLBACK) {
		if (sf->store)
			r = store_switch(sf, c.name, c.arg, res, rl);
		else if (c.arg && !strcmp(c.arg, single))
			snprintf(res, rl, "%s is already current", single), r = 0;
		else
			snprintf(res, rl, "no %s snapshot: a kit file mounted directly holds one (%s)",
				 c.arg ? "such" : "previous", single), r = -ENOENT;
	} else if (c.kind == CMD_REMOVE) {
		if (sf->store)
			r = cmd_remove(sf, c.arg, res, rl);
		else if (!strcmp(c.arg, single))
			snprintf(res, rl, "%s is current and in use", single), r = -EBUSY;
		else
			snprintf(res, rl, "no snapshot \"%s\"", c.arg), r = -ENOENT;
	} else if (c.kind == CMD_GC) {
		if (sf->store)
			r = cmd_gc(sf, c.keep, res, rl);
		else
			snprintf(res, rl, "nothing to collect: one snapshot (%s)", single), r = 0;
	} else if (c.kind == CMD_IMPORT) {
		if (sf->store)
			r = control_import(sf, c.arg, w, sf->opt.auto_activate, res, rl);
		else
			snprintf(res, rl, "import needs a store: this mount serves one kit file (%s)", sf->opt.source),
				r = -EOPNOTSUPP;
	} else {
		r = cmd_reload(sf, res, rl);
	}
	if (r == -EINVAL && !res[0])
		snprintf(res, rl, "%s", command_usage);
	/* The errno stellafs(8) gives each class: an expired kit is stale (ESTALE);
	 * a kit whose content contradicts its manifest is as bad a message as
	 * a malformed one (EBADMSG). */
	if (r == -EKEYEXPIRED)
		r = -ESTALE;
	if (r == -EUCLEAN)
		r = -EBADMSG;
	return r;
}

struct control_run {
	struct stellafs *sf;
	const struct writer *w;
	uid_t uid;
};

static int control_line(void *ctx, char *line)
{
	struct control_run *run = ctx;
	char shown[256], res[512] = "";
	command_shown(line, SIZE_MAX, shown, sizeof(shown));
	int r = run_command(run->sf, run->w, line, res, sizeof(res));
	/* the kernel has forgotten the old current before echo returns */
	inval_wait(run->sf);
	journal_add(run->sf, run->uid, shown, -r, res);
	stella_log(r ? LOG_WARNING : LOG_INFO, "control: uid %u: %s: %s%s%s", (unsigned)run->uid, shown,
		   r ? strerror(-r) : "ok", res[0] ? ": " : "", res);
	return r;
}

int control_write(struct stellafs *sf, const struct writer *w, const char *buf, size_t len)
{
	uid_t uid = w->uid;
	if (command_check_text(buf, len) < 0)
		return -EINVAL;
	char text[COMMAND_TEXT_MAX + 1];
	memcpy(text, buf, len);
	text[len] = 0;
	if (pthread_mutex_trylock(&sf->cmd_lock) != 0) {
		/* refused, and said so in the journal an operator reads */
		char shown[256];
		command_shown(text, strcspn(text, "\n"), shown, sizeof(shown));
		journal_add(sf, uid, shown, EBUSY, "another command is running");
		return -EBUSY;
	}
	struct control_run run = { .sf = sf, .w = w, .uid = uid };
	int r = command_each_line(text, control_line, &run);
	pthread_mutex_unlock(&sf->cmd_lock);
	return r;
}
