/* Which snapshots the mount serves and which one is current.
 *
 * Direct mode serves one snapshot for the mount's life.  Store mode mirrors
 * the store: store.db is the truth (stellakit import may change it while
 * mounted), and the table here follows it whenever its data_version moves.
 * Switching current is one pointer change under the lock; readers that have
 * a file open keep the snapshot they opened through their own reference. */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "stellafs.h"
#include "util.h"

static struct slot *find_version(struct stellafs *sf, const char *version)
{
	for (size_t i = 0; i < sf->nslots; i++)
		if (!strcmp(sf->slots[i].version, version))
			return &sf->slots[i];
	return NULL;
}

struct snapshot *sf_snapshot(struct stellafs *sf, uint64_t id)
{
	struct snapshot *s = NULL;
	pthread_mutex_lock(&sf->lock);
	for (size_t i = 0; i < sf->nslots; i++)
		if (sf->slots[i].id == id) {
			s = snapshot_ref(sf->slots[i].s);
			break;
		}
	pthread_mutex_unlock(&sf->lock);
	return s;
}

struct snapshot *sf_by_version(struct stellafs *sf, const char *version, uint64_t *id)
{
	struct snapshot *s = NULL;
	pthread_mutex_lock(&sf->lock);
	struct slot *sl = find_version(sf, version);
	if (sl) {
		s = snapshot_ref(sl->s);
		*id = sl->id;
	}
	pthread_mutex_unlock(&sf->lock);
	return s;
}

struct snapshot *sf_current(struct stellafs *sf, uint64_t *id)
{
	struct snapshot *s = NULL;
	pthread_mutex_lock(&sf->lock);
	struct slot *sl = *sf->current ? find_version(sf, sf->current) : NULL;
	if (sl) {
		s = snapshot_ref(sl->s);
		if (id)
			*id = sl->id;
	}
	pthread_mutex_unlock(&sf->lock);
	return s;
}

size_t sf_list(struct stellafs *sf, struct slot **out)
{
	pthread_mutex_lock(&sf->lock);
	size_t n = sf->nslots;
	*out = n ? malloc(n * sizeof(**out)) : NULL;
	if (*out)
		memcpy(*out, sf->slots, n * sizeof(**out));
	else
		n = 0;
	pthread_mutex_unlock(&sf->lock);
	return n; /* the copies' snapshot pointers are for reading names only */
}

static int add_slot(struct stellafs *sf, const char *version, int64_t sequence, struct snapshot *s)
{
	struct slot *p = realloc(sf->slots, (sf->nslots + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	sf->slots = p;
	struct slot *sl = &p[sf->nslots++];
	memset(sl, 0, sizeof(*sl));
	sl->id = ++sf->next_slot;
	snprintf(sl->version, sizeof(sl->version), "%s", version);
	sl->sequence = sequence;
	sl->s = s;
	return 0;
}

int sf_add_direct(struct stellafs *sf, struct snapshot *s)
{
	pthread_mutex_lock(&sf->lock);
	int r = add_slot(sf, s->version, s->identity->sequence, s);
	if (r == 0)
		snprintf(sf->current, sizeof(sf->current), "%s", s->version);
	pthread_mutex_unlock(&sf->lock);
	return r;
}

void sf_free_slots(struct stellafs *sf)
{
	for (size_t i = 0; i < sf->nslots; i++)
		snapshot_unref(sf->slots[i].s);
	free(sf->slots);
	sf->slots = NULL;
	sf->nslots = 0;
}

void sf_switched(struct stellafs *sf)
{
	atomic_fetch_add(&sf->switches, 1);
	if (!sf->se)
		return;
	/* current and feeds are never cached (timeout 0); say so anyway, for
	 * kernels that kept a dentry through an open directory handle. */
	fuse_lowlevel_notify_inval_entry(sf->se, INO_ROOT, "current", 7);
	fuse_lowlevel_notify_inval_entry(sf->se, INO_ROOT, "feeds", 5);
	fuse_lowlevel_notify_inval_inode(sf->se, INO_CURRENT, 0, 0);
}

int sf_refresh(struct stellafs *sf, struct stella_err *e)
{
	if (!sf->store)
		return 0;
	int64_t v = store_data_version(sf->store);
	pthread_mutex_lock(&sf->lock);
	bool same = v == sf->store_version && v >= 0 && !sf->store_dirty;
	sf->store_dirty = false;
	pthread_mutex_unlock(&sf->lock);
	if (same)
		return 0;

	struct store_snapshot *list = NULL;
	size_t n = 0;
	char cur[129], prev[129];
	int r = store_list(sf->store, &list, &n);
	if (r < 0)
		return stella_fail(e, r, "store %s: cannot list snapshots", sf->source);
	store_pointers(sf->store, cur, prev);

	/* Open what is new outside the lock (an index open reads files). */
	struct snapshot **opened = n ? calloc(n, sizeof(*opened)) : NULL;
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_lock(&sf->lock);
		bool known = find_version(sf, list[i].version) != NULL;
		pthread_mutex_unlock(&sf->lock);
		if (known || !opened)
			continue;
		char *path = store_index_path(sf->store, list[i].version);
		struct stella_err oe = { 0 };
		if (!path || snapshot_open_store(path, store_blob_dirfd(sf->store), list[i].version, &opened[i], &oe) < 0)
			stella_log(LOG_ERR, "store %s: snapshot %s: %s", sf->source, list[i].version,
				   stella_err_text(&oe, -EIO));
		free(path);
	}

	pthread_mutex_lock(&sf->lock);
	/* drop what the store no longer has */
	size_t k = 0;
	for (size_t i = 0; i < sf->nslots; i++) {
		bool listed = false;
		for (size_t j = 0; j < n && !listed; j++)
			listed = !strcmp(list[j].version, sf->slots[i].version);
		if (listed)
			sf->slots[k++] = sf->slots[i];
		else
			snapshot_unref(sf->slots[i].s);
	}
	sf->nslots = k;
	for (size_t i = 0; i < n; i++)
		if (opened && opened[i]) {
			if (add_slot(sf, list[i].version, list[i].sequence, opened[i]) < 0)
				snapshot_unref(opened[i]);
			opened[i] = NULL;
		}
	bool switched = strcmp(sf->current, cur) != 0;
	snprintf(sf->current, sizeof(sf->current), "%s", cur);
	sf->store_version = v;
	pthread_mutex_unlock(&sf->lock);
	if (switched)
		sf_switched(sf);
	free(opened);
	free(list);
	return 0;
}

/* data_version moves only for other connections' commits: after our own,
 * say so explicitly. */
void sf_changed(struct stellafs *sf, struct stella_err *e)
{
	pthread_mutex_lock(&sf->lock);
	sf->store_dirty = true;
	pthread_mutex_unlock(&sf->lock);
	sf_refresh(sf, e);
}

/* ---- import, shared by the control file and the incoming watcher ---- */

int sf_import(struct stellafs *sf, const char *path, bool activate, char *res, size_t rl)
{
	struct stella_err e = { 0 };
	char version[129];
	pthread_mutex_lock(&sf->lock);
	struct trust *t = sf->trust;
	pthread_mutex_unlock(&sf->lock);
	struct store_import_opts o = { .trust = t, .threshold = sf->threshold, .now = sf_now(sf),
				       .allow_expired = sf->allow_expired, .activate = activate };
	int r = store_lock(sf->store, &e);
	if (r == 0) {
		r = store_import(sf->store, path, &o, version, &e);
		store_unlock(sf->store);
	}
	if (r < 0) {
		snprintf(res, rl, "%s", stella_err_text(&e, r));
		return r;
	}
	sf_changed(sf, &e);
	snprintf(res, rl, "%s: imported as %s%s", path, version, activate ? ", now current" : "");
	return 0;
}

/* ---- the incoming directory ---- */

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
	snprintf(src, sizeof(src), "%s/%s", sf->incoming, name);
	snprintf(dst, sizeof(dst), "%s/quarantine/%s", store_dir(sf->store), name);
	if (rename(src, dst) < 0) {
		/* another filesystem: copy is not worth the risk; leave it, and
		 * say why beside it */
		snprintf(dst, sizeof(dst), "%s/%s", sf->incoming, name);
	}
	char rpath[4300];
	snprintf(rpath, sizeof(rpath), "%s.reason", dst);
	char line[700];
	snprintf(line, sizeof(line), "%s\n", reason);
	write_file_atomic(rpath, line, strlen(line), 0644);
}

static void handle_incoming(struct stellafs *sf, const char *name)
{
	if (!kit_name(name))
		return;
	char path[4200], res[640];
	snprintf(path, sizeof(path), "%s/%s", sf->incoming, name);
	struct stat st;
	if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
		return;
	pthread_mutex_lock(&sf->cmd_lock); /* wait our turn: this one cannot say EBUSY */
	int r = sf_import(sf, path, sf->auto_activate, res, sizeof(res));
	pthread_mutex_unlock(&sf->cmd_lock);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "import %.270s (incoming)", path);
	control_journal(sf, 0, cmd, -r, res);
	if (r < 0) {
		quarantine(sf, name, res);
		stella_log(LOG_WARNING, "incoming %s refused: %s", path, res);
	} else {
		unlink(path); /* its content is in the store now */
		stella_log(LOG_INFO, "%s", res);
	}
}

static void *incoming_main(void *arg)
{
	struct stellafs *sf = arg;
	int fd = inotify_init1(IN_CLOEXEC);
	if (fd < 0 || inotify_add_watch(fd, sf->incoming, IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
		stella_log(LOG_ERR, "incoming %s: inotify: %s", sf->incoming, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	/* Kits already waiting, complete since their writer is gone. */
	DIR *d = opendir(sf->incoming);
	struct dirent *de;
	while (d && (de = readdir(d)))
		handle_incoming(sf, de->d_name);
	if (d)
		closedir(d);
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = sf->incoming_stop[0], .events = POLLIN } };
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		ssize_t n = read(fd, buf, sizeof(buf));
		for (char *q = buf; n > 0 && q < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)q;
			/* a kit counts once its writer closed it or it was moved in
			 * whole; never while it is still being written */
			if (ev->len && !(ev->mask & IN_ISDIR))
				handle_incoming(sf, ev->name);
			q += sizeof(*ev) + ev->len;
		}
	}
	close(fd);
	return NULL;
}

int sf_start_incoming(struct stellafs *sf, struct stella_err *e)
{
	if (!sf->incoming)
		return 0;
	if (pipe2(sf->incoming_stop, O_CLOEXEC) < 0)
		return stella_fail_errno(e, -errno, "incoming");
	if (pthread_create(&sf->incoming_thread, NULL, incoming_main, sf) != 0)
		return stella_fail(e, -EAGAIN, "incoming: cannot start the watcher");
	sf->incoming_running = true;
	return 0;
}

void sf_stop_incoming(struct stellafs *sf)
{
	if (!sf->incoming_running)
		return;
	if (write(sf->incoming_stop[1], "x", 1) < 0) {
		/* the watcher blocks in poll: a failed wake-up leaves it for
		 * process exit to end */
	}
	pthread_join(sf->incoming_thread, NULL);
	close(sf->incoming_stop[0]);
	close(sf->incoming_stop[1]);
	sf->incoming_running = false;
}
