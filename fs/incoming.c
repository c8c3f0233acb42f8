/* The watcher thread: what others change.  The store's own changes by
 * other processes (stellakit import or activate: the table follows), and
 * incoming=DIR: kits written or moved there are imported, refused ones
 * quarantined with their reason, and those that failed for a reason of the
 * moment tried again later, each alone (docs/mount.md, section 9). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "escape.h"
#include "stellafs.h"
#include "util.h"

static bool kit_name(const char *n)
{
	size_t l = strlen(n);
	if (n[0] == '.')
		return false; /* editors' and copiers' temporaries */
	const char *ext[] = { ".tar", ".tar.gz", ".tgz", ".tar.zst" };
	for (size_t i = 0; i < ARRAY_SIZE(ext); i++) {
		size_t el = strlen(ext[i]);
		if (l > el && !strcmp(n + l - el, ext[i]))
			return true;
	}
	return false;
}

static void quarantine(struct stellafs *sf, const char *name, const char *reason)
{
	char src[4200], dst[4200];
	snprintf(src, sizeof(src), "%s/%s", sf->opt.incoming, name);
	snprintf(dst, sizeof(dst), "%s/quarantine/%s", store_dir(sf->store), name);
	if (rename(src, dst) < 0) {
		/* another filesystem: copy is not worth the risk; leave it, and
		 * say why beside it */
		snprintf(dst, sizeof(dst), "%s/%s", sf->opt.incoming, name);
	}
	char rpath[4300];
	snprintf(rpath, sizeof(rpath), "%s.reason", dst);
	char line[700];
	escape(reason, ESCAPE_TEXT, line, sizeof(line) - 1); /* one line, whatever the name holds */
	strcat(line, "\n");
	write_file_atomic(rpath, line, strlen(line), 0644);
}

/* Failures that say something about the kit, as opposed to about this
 * moment (the store locked by another import, memory, the disk). */
static bool kit_verdict(int r)
{
	switch (-r) {
	case STELLA_EMALFORMED:
	case STELLA_EMISMATCH:
	case STELLA_ESIGNATURE:
	case STELLA_EEXPIRED:
	case STELLA_ESTALE:
	case EEXIST:
	case EINVAL:
	case ENOENT: /* a delta kit's base is not in the store */
	case EFBIG:
	case E2BIG:
		return true;
	default:
		return false;
	}
}

static struct incoming_retry *retry_find(struct stellafs *sf, const char *name)
{
	for (size_t i = 0; i < sf->watch.nretry; i++)
		if (!strcmp(sf->watch.retry[i].name, name))
			return &sf->watch.retry[i];
	return NULL;
}

static void retry_drop(struct stellafs *sf, const char *name)
{
	struct incoming_retry *x = retry_find(sf, name);
	if (x)
		*x = sf->watch.retry[--sf->watch.nretry];
}

/* The kit NAME failed for a reason of the moment: try it, and only it,
 * again later (a rescan of the whole directory would also pick up kits
 * still being written). Returns the wait in seconds, 0 if not remembered. */
static int retry_later(struct stellafs *sf, const char *name)
{
	struct incoming_retry *x = retry_find(sf, name);
	if (!x && sf->watch.nretry < INCOMING_RETRY_KITS && strlen(name) < sizeof(x->name)) {
		struct incoming_retry *p = realloc(sf->watch.retry, (sf->watch.nretry + 1) * sizeof(*p));
		if (p) {
			sf->watch.retry = p;
			x = &p[sf->watch.nretry++];
			snprintf(x->name, sizeof(x->name), "%s", name);
			x->backoff = INCOMING_RETRY_FIRST;
		}
	}
	if (!x)
		return 0;
	int wait = x->backoff;
	x->at = mono_now() + wait;
	x->backoff = MIN(x->backoff * 2, INCOMING_RETRY_MAX);
	return wait;
}

static void handle_incoming(struct stellafs *sf, const char *name)
{
	if (!kit_name(name))
		return;
	char path[4200], res[640], reason[4300];
	snprintf(path, sizeof(path), "%s/%s", sf->opt.incoming, name);
	snprintf(reason, sizeof(reason), "%s.reason", path);
	struct stat st;
	/* gone, not a file, or refused already (left here with its reason
	 * when quarantine/ is on another file system): nothing to do */
	if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || access(reason, F_OK) == 0) {
		retry_drop(sf, name);
		return;
	}
	pthread_mutex_lock(&sf->cmd_lock); /* wait our turn: this one cannot say EBUSY */
	int r = control_import(sf, path, NULL, sf->opt.auto_activate, res, sizeof(res));
	pthread_mutex_unlock(&sf->cmd_lock);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "import %.270s (incoming)", path);
	journal_add(sf, 0, cmd, -r, res);
	if (r < 0 && kit_verdict(r)) {
		quarantine(sf, name, res);
		stella_log(LOG_WARNING, "incoming %s refused: %s", path, res);
	} else if (r < 0) {
		/* Not the kit's fault: it stays where it is and is tried again
		 * later, less often each time (a full disk must not mean
		 * re-verifying a 1 GiB kit every second). */
		int wait = retry_later(sf, name);
		if (wait)
			stella_log(LOG_WARNING, "incoming %s not imported now (%s): tried again in %d s", path, res, wait);
		else
			stella_log(LOG_WARNING, "incoming %s not imported now (%s): left for the next mount", path, res);
		return;
	} else {
		unlink(path); /* its content is in the store now */
		stella_log(LOG_INFO, "%s", res);
	}
	retry_drop(sf, name);
}

/* Kits whose time to try again has come, one at a time: each try may drop
 * its entry or re-queue it, so the walk starts over after each (entries
 * tried in this walk are marked not due). */
static void retry_due(struct stellafs *sf)
{
	int64_t now = mono_now();
	for (size_t i = 0; i < sf->watch.nretry;) {
		if (sf->watch.retry[i].at > now) {
			i++;
			continue;
		}
		char name[256];
		snprintf(name, sizeof(name), "%s", sf->watch.retry[i].name);
		sf->watch.retry[i].at = INT64_MAX; /* not again in this walk */
		handle_incoming(sf, name);
		i = 0;
		now = mono_now();
	}
}

static void scan_incoming(struct stellafs *sf)
{
	DIR *d = opendir(sf->opt.incoming);
	struct dirent *de;
	while (d && (de = readdir(d)))
		handle_incoming(sf, de->d_name);
	if (d)
		closedir(d);
}

/* One thread watches what others change: store.db (stellakit import or
 * activate from another process commits there: the table follows, and the
 * kernel is told) and the incoming directory.  A one-second tick re-checks
 * the store in case an event was missed (inotify queues can overflow). */
static void *watch_main(void *arg)
{
	struct stellafs *sf = arg;
	int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	int in_wd = -1, st_wd = -1;
	if (fd >= 0) {
		st_wd = inotify_add_watch(fd, store_dir(sf->store), IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO);
		if (sf->opt.incoming && (in_wd = inotify_add_watch(fd, sf->opt.incoming, IN_CLOSE_WRITE | IN_MOVED_TO)) < 0)
			stella_log(LOG_ERR, "incoming %s: inotify: %s", sf->opt.incoming, strerror(errno));
	}
	if (sf->opt.incoming)
		scan_incoming(sf); /* kits already waiting: complete, their writer is gone */
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = sf->watch.stop[0], .events = POLLIN } };
		int n = poll(p, 2, 1000);
		if (n < 0 && errno != EINTR)
			break;
		if (p[1].revents || atomic_load(&sf->watch.quit))
			break;
		bool store_changed = n == 0; /* the tick */
		if (sf->watch.nretry)
			retry_due(sf);
		if (fd >= 0 && (p[0].revents & POLLIN)) {
			ssize_t len = read(fd, buf, sizeof(buf));
			for (char *q = buf; len > 0 && q < buf + len;) {
				struct inotify_event *ev = (struct inotify_event *)q;
				if (ev->wd == st_wd)
					store_changed = true;
				/* a kit counts once its writer closed it or it was moved
				 * in whole; never while it is still being written */
				else if (ev->wd == in_wd && ev->len && !(ev->mask & IN_ISDIR))
					handle_incoming(sf, ev->name);
				if (ev->mask & IN_Q_OVERFLOW)
					store_changed = true;
				q += sizeof(*ev) + ev->len;
			}
		}
		if (store_changed) {
			struct stella_err e = { 0 };
			sf_refresh(sf, &e);
		}
	}
	if (fd >= 0)
		close(fd);
	return NULL;
}

int incoming_start(struct stellafs *sf, struct stella_err *e)
{
	if (!sf->store)
		return 0;
	if (pipe2(sf->watch.stop, O_CLOEXEC) < 0)
		return stella_fail_errno(e, -errno, "watcher");
	if (pthread_create(&sf->watch.thread, NULL, watch_main, sf) != 0)
		return stella_fail(e, -EAGAIN, "watcher: cannot start its thread");
	sf->watch.running = true;
	return 0;
}

void incoming_stop(struct stellafs *sf)
{
	if (!sf->watch.running)
		return;
	/* the flag, in case the wake-up cannot be written: the thread's
	 * one-second tick sees it */
	atomic_store(&sf->watch.quit, true);
	if (write(sf->watch.stop[1], "x", 1) < 0) {
		/* the tick will do */
	}
	pthread_join(sf->watch.thread, NULL);
	close(sf->watch.stop[0]);
	close(sf->watch.stop[1]);
	sf->watch.running = false;
	free(sf->watch.retry);
	sf->watch.retry = NULL;
	sf->watch.nretry = 0;
}
