/* Store mode's follow=URL (docs/mirrors.md, "Following a published kit"):
 * a thread of its own polls the kit at URL every interval= seconds with a
 * conditional request (core/location.h: ETag / Last-Modified, or an OCI
 * tag's digest) and, when it changed, imports it and makes it current, as
 * `import` with auto_activate does.  The store's sequence ratchet decides:
 * an older or equal kit is refused (ESTALE in the journal) and current
 * stays.  Each poll and each fetch is bounded by timeout=; the import runs
 * under cmd_lock like any command (others get EBUSY meanwhile), and status
 * and health never wait for it (they take follow.lock only, briefly). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "escape.h"
#include "location.h"
#include "stellafs.h"
#include "util.h"

/* A refused kit (not newer, bad signature, malformed) is not fetched again
 * until the URL changes; a failure of the moment (no mirror answers) is
 * retried at the next poll. */
static bool kit_verdict(int r)
{
	switch (-r) {
	case STELLA_EMALFORMED:
	case STELLA_EMISMATCH:
	case STELLA_ESIGNATURE:
	case STELLA_EEXPIRED:
	case STELLA_ESTALE:
	case EEXIST:
		return true;
	default:
		return false;
	}
}

static void set_state(struct stellafs *sf, int err, const char *result, const char *validator, bool imported)
{
	pthread_mutex_lock(&sf->follow.lock);
	sf->follow.last_poll = (int64_t)time(NULL);
	sf->follow.polls++;
	sf->follow.last_err = err;
	if (result)
		snprintf(sf->follow.last_result, sizeof(sf->follow.last_result), "%s", result);
	if (validator)
		snprintf(sf->follow.validator, sizeof(sf->follow.validator), "%s", validator);
	if (imported)
		sf->follow.imports++;
	pthread_mutex_unlock(&sf->follow.lock);
}

/* The kit changed at the URL: import it and make it current. */
static void follow_import(struct stellafs *sf, const char *validator)
{
	char res[512] = "", cmd[256];
	snprintf(cmd, sizeof(cmd), "follow %s", sf->opt.follow);
	pthread_mutex_lock(&sf->cmd_lock);
	int r = control_import_location(sf, sf->opt.follow, true, res, sizeof(res));
	inval_wait(sf);
	pthread_mutex_unlock(&sf->cmd_lock);
	/* the errno stellafs(8) gives each class, as for `import` */
	if (r == -EKEYEXPIRED)
		r = -ESTALE;
	if (r == -EUCLEAN)
		r = -EBADMSG;
	journal_add(sf, 0, cmd, -r, res);
	stella_log(r ? LOG_WARNING : LOG_INFO, "%s: %s%s%s", cmd, r ? strerror(-r) : "ok", res[0] ? ": " : "", res);
	set_state(sf, -r, res, r == 0 || kit_verdict(r) ? validator : NULL, r == 0);
}

static void poll_once(struct stellafs *sf)
{
	struct stella_err e = { 0 };
	char was[256], now[256] = "";
	pthread_mutex_lock(&sf->follow.lock);
	snprintf(was, sizeof(was), "%s", sf->follow.validator);
	pthread_mutex_unlock(&sf->follow.lock);
	struct remote_opts ro = sf->opt.remote;
	ro.cache_dir = NULL;
	ro.cancel = &sf->follow.cancel;
	int r = location_probe(sf->opt.follow, &ro, was, now, &e);
	if (r == 1) {
		follow_import(sf, now);
	} else if (r == 0) {
		set_state(sf, 0, NULL, NULL, false);
	} else {
		char line[512];
		snprintf(line, sizeof(line), "poll failed: %s", stella_err_text(&e, r));
		stella_log(LOG_WARNING, "follow %s: %s", sf->opt.follow, line);
		set_state(sf, -r, line, NULL, false);
	}
}

static void *follow_main(void *arg)
{
	struct stellafs *sf = arg;
	pthread_mutex_lock(&sf->follow.lock);
	while (!sf->follow.quit) {
		pthread_mutex_unlock(&sf->follow.lock);
		poll_once(sf);
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		t.tv_sec += sf->opt.interval;
		pthread_mutex_lock(&sf->follow.lock);
		while (!sf->follow.quit && pthread_cond_timedwait(&sf->follow.cond, &sf->follow.lock, &t) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&sf->follow.lock);
	return NULL;
}

int follow_start(struct stellafs *sf)
{
	if (!sf->opt.follow || !sf->store)
		return 0;
	int r = pthread_create(&sf->follow.thread, NULL, follow_main, sf);
	if (r)
		return -r;
	sf->follow.running = true;
	stella_log(LOG_INFO, "following %s every %u s", sf->opt.follow, sf->opt.interval);
	return 0;
}

/* Waits for a poll or an import in progress: their transfers are
 * cancelled (within about a second), and each is bounded by timeout=
 * anyway. */
void follow_stop(struct stellafs *sf)
{
	atomic_store(&sf->follow.cancel, true);
	if (!sf->follow.running)
		return;
	pthread_mutex_lock(&sf->follow.lock);
	sf->follow.quit = true;
	pthread_cond_signal(&sf->follow.cond);
	pthread_mutex_unlock(&sf->follow.lock);
	pthread_join(sf->follow.thread, NULL);
	sf->follow.running = false;
}

void follow_state(struct stellafs *sf, struct sf_follow *out)
{
	memset(out, 0, sizeof(*out));
	if (!sf->opt.follow)
		return;
	pthread_mutex_lock(&sf->follow.lock);
	snprintf(out->validator, sizeof(out->validator), "%s", sf->follow.validator);
	snprintf(out->last_result, sizeof(out->last_result), "%s", sf->follow.last_result);
	out->last_poll = sf->follow.last_poll;
	out->last_err = sf->follow.last_err;
	out->polls = sf->follow.polls;
	out->imports = sf->follow.imports;
	pthread_mutex_unlock(&sf->follow.lock);
}
