/* FUSE low-level requests, mapped onto core/snapshot.  Thin on purpose: no
 * format logic here, only inode arithmetic, attributes and replies.
 *
 * Caching: a snapshot never changes, so its entries, attributes and pages
 * may be cached by the kernel for as long as it likes (long timeouts,
 * keep_cache); every page it caches was verified when it was read.  The top
 * of the tree is cached too, entries and current's target alike, because
 * every path a scanner opens goes through it; slots.c has inval.c tell the
 * kernel to forget when current moves or a snapshot goes.  Only the attributes of
 * the status files and of current (their sizes change) are never cached. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "bytes.h"
#include "kitpath.h"
#include "source.h"
#include "stellafs.h"
#include "util.h"

#define SNAP_TIMEOUT 86400.0

static struct stellafs *SF(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* The content of an open virtual file, made at open.  Each is also on
 * sf->ops.vbufs, so that those whose RELEASE never came (a close just before
 * umount: the kernel drops the queued request with the connection) are
 * freed at exit, not leaked. */
struct vbuf {
	char *data;
	size_t len;
	struct vbuf *prev, *next;
};

static struct vbuf *vbuf_new(struct stellafs *sf)
{
	struct vbuf *v = calloc(1, sizeof(*v));
	if (!v)
		return NULL;
	pthread_mutex_lock(&sf->ops.lock);
	v->next = sf->ops.vbufs;
	if (v->next)
		v->next->prev = v;
	sf->ops.vbufs = v;
	pthread_mutex_unlock(&sf->ops.lock);
	return v;
}

static void vbuf_free(struct stellafs *sf, struct vbuf *v)
{
	if (!v)
		return;
	pthread_mutex_lock(&sf->ops.lock);
	if (v->prev)
		v->prev->next = v->next;
	else
		sf->ops.vbufs = v->next;
	if (v->next)
		v->next->prev = v->prev;
	pthread_mutex_unlock(&sf->ops.lock);
	free(v->data);
	free(v);
}

void ops_free_vbufs(struct stellafs *sf)
{
	while (sf->ops.vbufs)
		vbuf_free(sf, sf->ops.vbufs);
}

/* Each lookup of "control" gets an inode of its own.  The kernel serializes
 * writes to one inode, so with a single inode a second `echo` would wait
 * for the first instead of reaching us, and could never be told EBUSY as
 * stellafs(8), THE CONTROL FILE, promises. */
#define CONTROL_BASE (UINT64_C(1) << 39)

static bool is_control(fuse_ino_t ino)
{
	return ino == INO_CONTROL || (ino >= CONTROL_BASE && ino < (UINT64_C(1) << SLOT_SHIFT));
}

static bool is_fixed(fuse_ino_t ino)
{
	return ino < INO_FIXED_END || is_control(ino);
}

/* Who may write the control file: root, and members of admin_gid=. */
static bool control_allowed(struct stellafs *sf, fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	if (ctx->uid == 0)
		return true;
	if (!sf->opt.has_admin_gid)
		return false;
	if (ctx->gid == sf->opt.admin_gid)
		return true;
	gid_t groups[256];
	int n = fuse_req_getgroups(req, 256, groups);
	for (int i = 0; i < n && i < 256; i++)
		if (groups[i] == sf->opt.admin_gid)
			return true;
	return false;
}

static void fixed_attr(struct stellafs *sf, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = 0;
	st->st_gid = 0;
	st->st_nlink = 1;
	st->st_mtim.tv_sec = st->st_ctim.tv_sec = st->st_atim.tv_sec = sf->opt.mounted_at;
	struct snapshot *s = ino == INO_CURRENT ? sf_current(sf, NULL) : NULL;
	switch (ino) {
	case INO_ROOT:
	case INO_SNAPSHOTS:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		break;
	case INO_CURRENT:
		st->st_mode = S_IFLNK | 0777;
		st->st_size = s ? (off_t)(strlen("snapshots/") + strlen(s->version)) : 0;
		break;
	case INO_FEEDS:
		st->st_mode = S_IFLNK | 0777;
		st->st_size = (off_t)strlen("current/feeds");
		break;
	default:
		if (is_control(ino)) {
			st->st_mode = S_IFREG | (sf->opt.has_admin_gid ? 0664 : 0644);
			st->st_gid = sf->opt.has_admin_gid ? sf->opt.admin_gid : 0;
		} else {
			st->st_mode = S_IFREG | 0444;
			size_t len = 0;
			char *c = vfile_content(sf, ino, &len);
			free(c);
			st->st_size = (off_t)len;
			st->st_mtim.tv_sec = st->st_ctim.tv_sec = sf_now(sf);
		}
	}
	snapshot_unref(s);
}

/* An index node's file type, as S_IF* bits. */
static mode_t node_type(const struct index_node *n)
{
	return n->type == ARTIFACT_DIR ? S_IFDIR : n->type == ARTIFACT_SYMLINK ? S_IFLNK : S_IFREG;
}

static void node_attr(const struct snapshot *s, uint64_t slot, const struct index_node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = MAKE_INO(slot, n->ino);
	st->st_mode = n->mode | node_type(n);
	st->st_nlink = n->type == ARTIFACT_DIR ? 2 : 1;
	st->st_size = (off_t)(n->type == ARTIFACT_SYMLINK ? strlen(n->target) : n->size);
	st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
	st->st_blksize = 4096;
	st->st_mtim.tv_sec = st->st_ctim.tv_sec = st->st_atim.tv_sec = s->identity->created_at;
}

/* The top of the tree, in listing order, with each entry's file type. */
static const struct { const char *name; fuse_ino_t ino; mode_t type; } top[] = {
	{ "current", INO_CURRENT, S_IFLNK }, { "feeds", INO_FEEDS, S_IFLNK },
	{ "snapshots", INO_SNAPSHOTS, S_IFDIR }, { "status", INO_STATUS, S_IFREG },
	{ "status.json", INO_STATUS_JSON, S_IFREG }, { "health", INO_HEALTH, S_IFREG },
	{ "metrics", INO_METRICS, S_IFREG }, { "control", INO_CONTROL, S_IFREG },
};

/* current and feeds point at nothing while no snapshot is current (an empty
 * store): they are absent then, from listings and lookups alike, rather than
 * links that cannot be read (docs/mount.md, section 5).  A store's current
 * only ever goes from none to a version, and absent names are not cached,
 * so they appear with the first activation. */
static bool top_present(struct stellafs *sf, fuse_ino_t ino)
{
	if (ino != INO_CURRENT && ino != INO_FEEDS)
		return true;
	struct snapshot *s = sf_current(sf, NULL);
	if (!s) {
		/* activated by stellakit a moment ago: say so at once */
		struct stella_err e = { 0 };
		sf_refresh(sf, &e);
		s = sf_current(sf, NULL);
	}
	snapshot_unref(s);
	return s != NULL;
}

/* The sizes of the virtual files and of current's target change; the rest
 * of the top never does.  control's attributes are fixed for the mount, and
 * caching them spares every `echo` a GETATTR round trip (the permission
 * check wants fresh attributes), which under busy readers was one more
 * wait for a CPU on the way to the switch. */
static double fixed_attr_timeout(fuse_ino_t ino)
{
	bool stable = ino == INO_ROOT || ino == INO_FEEDS || ino == INO_SNAPSHOTS || is_control(ino);
	return stable ? SNAP_TIMEOUT : 0;
}

static void reply_fixed_entry(fuse_req_t req, fuse_ino_t ino)
{
	struct stellafs *sf = SF(req);
	struct fuse_entry_param e = { .ino = ino, .entry_timeout = SNAP_TIMEOUT };
	if (ino == INO_CONTROL) {
		e.ino = CONTROL_BASE + (atomic_fetch_add(&sf->ops.control_lookups, 1) % (CONTROL_BASE - 1));
		e.entry_timeout = 0;
	}
	e.attr_timeout = fixed_attr_timeout(e.ino);
	fixed_attr(sf, e.ino, &e.attr);
	fuse_reply_entry(req, &e);
}

/* Worker threads wait for requests at a raised priority (nice -10), so
 * that under readers keeping every CPU busy a request is picked up at
 * once: an `echo activate` is six requests (lookup, open, write, ...), and
 * each waited for a time slice.  The costly work, hashing the blocks a
 * read returns, runs at the normal priority: a reader gains no CPU over
 * other processes through us.  Per thread, set when it changes, with one
 * system call (tune_set). */
static __thread bool worker_known;
static __thread int worker_nice; /* the thread's nice now */

/* Relative to the daemon's nice at start (sf->opt.base_nice): one started with
 * Nice=10 hashes at 10 and waits at 0.  Not to the thread's own starting
 * value: libfuse starts a new worker from a busy one, a thread inherits
 * its creator's nice, and each generation went 10 lower (seen: hashing
 * at -20). */
static void worker_nice_set(struct stellafs *sf, bool raised)
{
	if (!worker_known) {
		worker_nice = tune_nice();
		worker_known = true;
	}
	int want = raised ? sf->opt.base_nice + SF_BOOST_NICE : sf->opt.base_nice;
	if (worker_nice != want && tune_set(want) == 0)
		worker_nice = want;
}

static void worker_boost(fuse_req_t req) { worker_nice_set(SF(req), true); }

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	worker_boost(req);
	struct stellafs *sf = SF(req);
	if (parent == INO_SNAPSHOTS) {
		/* a version just imported by stellakit: visible at once */
		struct stella_err e = { 0 };
		sf_refresh(sf, &e);
	}
	if (parent == INO_ROOT) {
		for (size_t i = 0; i < ARRAY_SIZE(top); i++)
			if (!strcmp(name, top[i].name) && top_present(sf, top[i].ino)) {
				reply_fixed_entry(req, top[i].ino);
				return;
			}
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct index_node *n = malloc(sizeof(*n));
	struct snapshot *s = NULL;
	uint64_t slot = 0;
	int r = -ENOENT;
	if (!n) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (parent == INO_SNAPSHOTS) {
		if ((s = sf_by_version(sf, name, &slot)))
			r = snapshot_getattr(s, INDEX_ROOT_INO, n);
	} else if (!is_fixed(parent) && (s = sf_snapshot(sf, SLOT_OF(parent)))) {
		slot = SLOT_OF(parent);
		r = strlen(name) > 255 ? -ENAMETOOLONG : snapshot_lookup(s, LOCAL_OF(parent), name, n);
	}
	if (r < 0) {
		/* Absent names in an immutable snapshot stay absent: a negative
		 * entry may be cached as long as a positive one. */
		bool immutable = s && parent != INO_SNAPSHOTS;
		struct fuse_entry_param e = { .ino = 0, .entry_timeout = immutable && r == -ENOENT ? SNAP_TIMEOUT : 0 };
		if (r == -ENOENT && immutable)
			fuse_reply_entry(req, &e);
		else
			fuse_reply_err(req, -r);
	} else {
		struct fuse_entry_param e = { .ino = MAKE_INO(slot, n->ino), .attr_timeout = SNAP_TIMEOUT,
					      .entry_timeout = SNAP_TIMEOUT };
		node_attr(s, slot, n, &e.attr);
		fuse_reply_entry(req, &e);
	}
	snapshot_unref(s);
	free(n);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	worker_boost(req);
	(void)fi;
	struct stellafs *sf = SF(req);
	struct stat st;
	if (is_fixed(ino)) {
		fixed_attr(sf, ino, &st);
		fuse_reply_attr(req, &st, fixed_attr_timeout(ino));
		return;
	}
	struct snapshot *s = sf_snapshot(sf, SLOT_OF(ino));
	struct index_node *n = malloc(sizeof(*n));
	int r = !s ? -ESTALE : !n ? -ENOMEM : snapshot_getattr(s, LOCAL_OF(ino), n);
	if (r < 0) {
		fuse_reply_err(req, -r);
	} else {
		node_attr(s, SLOT_OF(ino), n, &st);
		fuse_reply_attr(req, &st, SNAP_TIMEOUT);
	}
	free(n);
	snapshot_unref(s);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	worker_boost(req);
	struct stellafs *sf = SF(req);
	struct snapshot *s = NULL;
	if (ino == INO_FEEDS) {
		fuse_reply_readlink(req, "current/feeds");
		return;
	}
	if (ino == INO_CURRENT) {
		s = sf_current(sf, NULL);
		if (!s) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		char link[300];
		snprintf(link, sizeof(link), "snapshots/%s", s->version);
		fuse_reply_readlink(req, link);
		snapshot_unref(s);
		return;
	}
	struct index_node *n = malloc(sizeof(*n));
	s = is_fixed(ino) ? NULL : sf_snapshot(sf, SLOT_OF(ino));
	int r = !s || !n ? -EINVAL : snapshot_getattr(s, LOCAL_OF(ino), n);
	if (r == 0 && n->type != ARTIFACT_SYMLINK)
		r = -EINVAL;
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_readlink(req, n->target);
	free(n);
	snapshot_unref(s);
}

/* ---- directories ---- */

struct dirbuf {
	fuse_req_t req;
	char *buf;
	size_t size, len;
	uint64_t slot;
	struct snapshot *s;        /* the listed directory's snapshot */
	bool plus;                 /* READDIRPLUS: entries and attributes too */
	bool full;
};

/* One entry; with plus, e may carry the entry itself (e->ino != 0), which
 * spares the kernel a LOOKUP per name when a scanner walks the tree. */
static bool dir_add_entry(struct dirbuf *d, const char *name, const struct fuse_entry_param *e, off_t next)
{
	size_t need = d->plus ? fuse_add_direntry_plus(d->req, NULL, 0, name, NULL, 0) :
				fuse_add_direntry(d->req, NULL, 0, name, NULL, 0);
	if (d->len + need > d->size) {
		d->full = true;
		return false;
	}
	if (d->plus)
		fuse_add_direntry_plus(d->req, d->buf + d->len, d->size - d->len, name, e, next);
	else
		fuse_add_direntry(d->req, d->buf + d->len, d->size - d->len, name, &e->attr, next);
	d->len += need;
	return true;
}

/* An entry by its inode and type only: with plus, ino 0 tells the kernel
 * we give no entry for it (".", "..", the top of the tree, whose entries
 * and attributes have timeouts of their own). */
static bool dir_add(struct dirbuf *d, const char *name, fuse_ino_t ino, mode_t type, off_t next)
{
	struct fuse_entry_param e = { .attr = { .st_ino = ino, .st_mode = type } };
	return dir_add_entry(d, name, &e, next);
}

static int dir_child(void *ctx, const struct index_node *n)
{
	struct dirbuf *d = ctx;
	struct fuse_entry_param e = { .attr = { .st_ino = MAKE_INO(d->slot, n->ino), .st_mode = node_type(n) } };
	if (d->plus) {
		/* what op_lookup would answer: a snapshot never changes */
		e.ino = MAKE_INO(d->slot, n->ino);
		e.attr_timeout = e.entry_timeout = SNAP_TIMEOUT;
		node_attr(d->s, d->slot, n, &e.attr);
	}
	/* offset = child's local ino + 2: "." and ".." take 1 and 2 */
	return !dir_add_entry(d, n->name, &e, (off_t)(n->ino + 2));
}

/* A snapshot's directories never change: the kernel may keep their
 * listings (FOPEN_CACHE_DIR) across opens, so a second walk of a 100 000
 * file tree asks the daemon nothing.  The root and snapshots/ change with
 * the store: listed afresh every time. */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	worker_boost(req);
	if (!is_fixed(ino)) {
		fi->cache_readdir = 1;
		fi->keep_cache = 1;
	}
	fuse_reply_open(req, fi);
}

static int slot_id_cmp(const void *a, const void *b)
{
	uint64_t x = ((const struct slot *)a)->id, y = ((const struct slot *)b)->id;
	return x < y ? -1 : x > y;
}

/* The root and snapshots/: small fixed lists, then the versions. */
static void readdir_top(struct stellafs *sf, struct dirbuf *d, fuse_ino_t ino, off_t off)
{
	/* small fixed lists: offset i+1 for entry i */
	const char *names[16] = { 0 };
	fuse_ino_t inos[16] = { 0 };
	mode_t types[16];
	size_t n = 0;
	names[n] = ".", inos[n] = ino, types[n++] = S_IFDIR;
	names[n] = "..", inos[n] = INO_ROOT, types[n++] = S_IFDIR;
	struct slot *slots = NULL;
	size_t ns = 0;
	if (ino == INO_SNAPSHOTS) {
		struct stella_err e = { 0 };
		sf_refresh(sf, &e);
		ns = sf_list(sf, &slots);
	}
	if (ino == INO_ROOT) {
		bool links = top_present(sf, INO_CURRENT);
		for (size_t i = 0; i < ARRAY_SIZE(top); i++) {
			if (!links && (top[i].ino == INO_CURRENT || top[i].ino == INO_FEEDS))
				continue;
			names[n] = top[i].name;
			inos[n] = top[i].ino;
			types[n++] = top[i].type;
		}
	}
	/* The fixed entries have offsets 1..n; a version has n + its slot
	 * id.  Ids are never reused and grow with each snapshot added, so
	 * a listing taken in several calls while snapshots come and go
	 * resumes after the last entry it returned: a position in the
	 * list would shift under a removal and skip a version. */
	if (ns)
		qsort(slots, ns, sizeof(*slots), slot_id_cmp);
	bool full = false;
	for (size_t i = (size_t)off; i < n && !full; i++)
		full = !dir_add(d, names[i], inos[i], types[i], (off_t)(i + 1));
	for (size_t i = 0; i < ns && !full; i++) {
		uint64_t cookie = n + slots[i].id;
		if (cookie <= (uint64_t)off)
			continue;
		full = !dir_add(d, slots[i].version, MAKE_INO(slots[i].id, INDEX_ROOT_INO), S_IFDIR, (off_t)cookie);
	}
	free(slots);
}

/* A directory inside snapshot s: ".", "..", then its children. */
static int readdir_snapshot(struct snapshot *s, struct dirbuf *d, fuse_ino_t ino, off_t off)
{
	d->slot = SLOT_OF(ino);
	d->s = s;
	uint64_t local = LOCAL_OF(ino);
	struct index_node parent;
	if (off < 1 && !dir_add(d, ".", ino, S_IFDIR, 1))
		return 0;
	if (off < 2) {
		fuse_ino_t up = INO_SNAPSHOTS;
		if (local != INDEX_ROOT_INO && snapshot_getattr(s, local, &parent) == 0)
			up = MAKE_INO(d->slot, parent.parent);
		if (!dir_add(d, "..", up, S_IFDIR, 2))
			return 0;
	}
	return snapshot_readdir(s, local, off > 2 ? (uint64_t)off - 2 : 0, dir_child, d);
}

static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct stellafs *sf = SF(req);
	struct dirbuf d = { .req = req, .size = MIN(size, (size_t)1 << 20), .plus = plus };
	if (!(d.buf = malloc(d.size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int r = 0;
	struct snapshot *s = NULL;
	if (ino == INO_ROOT || ino == INO_SNAPSHOTS)
		readdir_top(sf, &d, ino, off);
	else if (is_fixed(ino))
		r = -ENOTDIR;
	else if (!(s = sf_snapshot(sf, SLOT_OF(ino))))
		r = -ESTALE;
	else
		r = readdir_snapshot(s, &d, ino, off);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, d.buf, d.len);
	free(d.buf);
	snapshot_unref(s);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, false);
}

/* The first walk of a tree after a mount (find, a scanner's recursion)
 * would otherwise be a READDIR and then a LOOKUP for every name. */
static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, true);
}

/* ---- files ---- */

/* fi->fh of a file whose reads go to fetch.c (a struct fetch_file, tagged
 * in its lowest bit: malloc's pointers are aligned) rather than being a
 * struct snap_file read here. */
#define FH_FETCH ((uintptr_t)1)

static struct fetch_file *fh_fetch(const struct fuse_file_info *fi)
{
	return fi->fh & FH_FETCH ? (struct fetch_file *)(uintptr_t)(fi->fh & ~FH_FETCH) : NULL;
}

/* Widen the kernel's readahead on our mount, once, at the first open of a
 * file (after the kernel applied our INIT reply, which would undo it): the
 * mount's bdi starts at 128 KiB, so a sequential reader's requests were
 * 128 KiB each and one or two in flight.  With 4 MiB, requests are as
 * large as FUSE allows and several are hashed at once while the medium
 * reads ahead (cold sequential read: about 1.4x on the test machine).
 * Not for gzip kits (their cursors prefer fewer requests in flight).
 * Best effort: root only, silent otherwise. */
#define READAHEAD_KIB 4096

static void readahead_widen(struct stellafs *sf)
{
	if (!sf->opt.mountpoint || atomic_exchange(&sf->ops.readahead_done, true) || geteuid() != 0)
		return;
	/* Not for a gzip kit: its reads decode from seek points through a few
	 * cursors, and more requests in flight at scattered offsets make
	 * them restart or wait (measured: 210 -> 170 MB/s). */
	struct snapshot *s = sf->store ? NULL : sf_current(sf, NULL); /* direct mode: the one kit */
	bool gzip = s && s->compression == KIT_COMPRESS_GZIP;
	snapshot_unref(s);
	if (gzip)
		return;
	/* Our mount's device number, from mountinfo: a stat() of the mount
	 * point would be a request to ourselves. */
	char dev[64];
	if (mount_devname(sf->opt.mountpoint, dev) < 0)
		return;
	char path[128], val[16];
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	int n = snprintf(val, sizeof(val), "%u\n", READAHEAD_KIB);
	if (write(fd, val, (size_t)n) < 0) {
		/* best effort */
	}
	close(fd);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	worker_boost(req);
	struct stellafs *sf = SF(req);
	int acc = fi->flags & O_ACCMODE;
	if (is_control(ino)) {
		if (acc != O_RDONLY && !control_allowed(sf, req)) {
			fuse_reply_err(req, EACCES);
			return;
		}
		fi->direct_io = 1;
		fi->nonseekable = 0;
		struct vbuf *v = vbuf_new(sf);
		if (!v) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		if (acc != O_WRONLY && !(v->data = vfile_content(sf, INO_CONTROL, &v->len))) {
			vbuf_free(sf, v);
			fuse_reply_err(req, ENOMEM);
			return;
		}
		fi->fh = (uintptr_t)v;
		fuse_reply_open(req, fi);
		return;
	}
	if (acc != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (is_fixed(ino)) {
		/* The content is fixed at open: one read(2) sees one state. */
		struct vbuf *v = vbuf_new(sf);
		if (!v || !(v->data = vfile_content(sf, ino, &v->len))) {
			vbuf_free(sf, v);
			fuse_reply_err(req, ino >= INO_STATUS ? ENOMEM : EISDIR);
			return;
		}
		fi->direct_io = 1;
		fi->fh = (uintptr_t)v;
		fuse_reply_open(req, fi);
		return;
	}
	struct snapshot *s = sf_snapshot(sf, SLOT_OF(ino));
	struct snap_file *f = NULL;
	struct stella_err e = { 0 };
	int r = s ? snapshot_file_open(s, LOCAL_OF(ino), &f, &e) : -ESTALE;
	bool remote = r == 0 && s->src && bytes_is_remote(source_bytes(s->src));
	snapshot_unref(s); /* the open file holds its own reference */
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fi->fh = (uintptr_t)f;
	if (remote) {
		/* its reads may wait for a mirror: they go to fetch.c */
		struct fetch_file *ff = fetch_file_new(sf, f);
		if (!ff) {
			snapshot_file_close(f);
			fuse_reply_err(req, ENOMEM);
			return;
		}
		fi->fh = (uintptr_t)ff | FH_FETCH;
	}
	fi->keep_cache = 1;
	fi->noflush = 1;
	/* before the reply: the kernel sizes the open file's readahead from
	 * the mount's right after it (a first file opened, the bench's
	 * cold read, had 128 KiB requests, one or two in flight) */
	readahead_widen(sf);
	fuse_reply_open(req, fi);
}

static char *reply_buf(size_t size)
{
	return thread_scratch(SCRATCH_REPLY, size);
}

/* A read of a local zstd kit whose bytes lie in one decoded span: checked
 * there and sent from there (snapshot_read_pinned), not copied into a
 * reply buffer first (about 5 % of the daemon's CPU on a sequential read).
 * 0: replied; 1: not served this way. */
static int read_pinned(fuse_req_t req, struct snap_file *f, size_t size, off_t off)
{
	const void *p = NULL;
	size_t n = 0;
	struct snap_pin pin;
	int r = snapshot_read_pinned(f, size, (uint64_t)off, &p, &n, &pin);
	if (r < 0) {
		fuse_reply_err(req, -r);
	} else if (r == 0) {
		fuse_reply_buf(req, p, n);
		snapshot_unpin(&pin); /* the reply is written: the kernel has the bytes */
	}
	return r == 1;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	if (is_fixed(ino)) {
		/* Copied out before the reply: the reader may close the file (and
		 * another worker free v in release) the moment the kernel has the
		 * reply, while this thread is still returning from writev. */
		struct vbuf *v = (struct vbuf *)(uintptr_t)fi->fh;
		size_t n = !v->data || (size_t)off >= v->len ? 0 : MIN(size, v->len - (size_t)off);
		char *buf = n ? reply_buf(n) : NULL;
		if (n && !buf) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		if (n)
			memcpy(buf, v->data + off, n);
		fuse_reply_buf(req, buf, n);
		return;
	}
	struct fetch_file *ff = fh_fetch(fi);
	struct snap_file *f;
	if (ff) {
		/* Bytes already in memory or in the disk cache are read right
		 * here: they must not queue behind reads that wait for a mirror
		 * that hangs (docs/mirrors.md, "Time bounds").  The rest goes to
		 * the fetch threads: a worker never waits for a mirror. */
		f = fetch_file_snap(ff);
		if (!snapshot_read_resident(f, size, (uint64_t)off)) {
			fetch_read(SF(req), req, ff, size, (uint64_t)off);
			return;
		}
	} else {
		f = (struct snap_file *)(uintptr_t)fi->fh;
	}
	struct stellafs *sf = SF(req); /* req is gone once replied to */
	/* Hashing: at the readers' priority, and waiting for the next request
	 * raised again.  Not for a read that will hash nothing itself: a
	 * sequential reader of a zstd kit gets every block's digest with the
	 * bytes from the workers that decoded them ahead (core/frames.h, at
	 * the readers' priority), and its reads only compare and copy.  The
	 * two switches per read were 3-5 % of the daemon's CPU there (each
	 * lowering lets the scheduler preempt the thread).  Judged by the
	 * thread's previous read (source_hashed_ahead): a stream's next read
	 * is like its last, and a misjudged one hashes at most one request
	 * raised before the next read lowers again. */
	bool light = source_hashed_ahead();
	if (!light)
		worker_nice_set(sf, false);
	if (ff || read_pinned(req, f, size, off) != 0) {
		char *buf = reply_buf(size);
		ssize_t n = !buf ? -ENOMEM : ff ? snapshot_read_local(f, buf, size, (uint64_t)off) :
						   snapshot_read(f, buf, size, (uint64_t)off);
		if (n == -EWOULDBLOCK)
			fetch_read(sf, req, ff, size, (uint64_t)off); /* no longer resident after all */
		else if (n < 0)
			fuse_reply_err(req, (int)-n);
		else
			fuse_reply_buf(req, buf, (size_t)n);
	}
	if (!light)
		worker_nice_set(sf, true);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)off;
	(void)fi;
	if (!is_control(ino)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	worker_boost(req);
	/* the writer's credentials: an import opens its path as the writer */
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct writer w = { .uid = ctx->uid, .gid = ctx->gid };
	w.ngroups = fuse_req_getgroups(req, WRITER_GROUPS_MAX, w.groups);
	int r = control_write(SF(req), &w, buf, size);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_write(req, size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	worker_boost(req);
	if (is_fixed(ino)) {
		vbuf_free(SF(req), (struct vbuf *)(uintptr_t)fi->fh);
	} else if (fh_fetch(fi)) {
		fetch_file_put(fh_fetch(fi)); /* closed once no fetch reads it */
	} else {
		snapshot_file_close((struct snap_file *)(uintptr_t)fi->fh);
	}
	fuse_reply_err(req, 0);
}

/* ---- extended attributes ---- */

static int xattr_value(struct stellafs *sf, fuse_ino_t ino, const char *name, char *out, size_t cap)
{
	if (is_fixed(ino))
		return -ENODATA;
	struct snapshot *s = sf_snapshot(sf, SLOT_OF(ino));
	struct index_node *n = malloc(sizeof(*n));
	int r = !s ? -ESTALE : !n ? -ENOMEM : snapshot_getattr(s, LOCAL_OF(ino), n);
	if (r == 0) {
		char hex[65];
		if (!strcmp(name, "user.stella.snapshot")) {
			snprintf(out, cap, "%s", s->version);
		} else if (n->type == ARTIFACT_FILE && !strcmp(name, "user.stella.sha256")) {
			hex_encode(n->sha256, 32, out);
		} else if (n->type == ARTIFACT_FILE && !strcmp(name, "user.stella.fsverity")) {
			hex_encode(n->fsverity, 32, hex);
			snprintf(out, cap, "sha256:%s", hex);
		} else {
			r = -ENODATA;
		}
	}
	free(n);
	snapshot_unref(s);
	return r;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char val[300];
	int r = xattr_value(SF(req), ino, name, val, sizeof(val));
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	size_t len = strlen(val);
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, val, len);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	static const char files[] = "user.stella.sha256\0user.stella.fsverity\0user.stella.snapshot";
	static const char others[] = "user.stella.snapshot";
	struct stellafs *sf = SF(req);
	const char *list = "";
	size_t len = 0;
	if (!is_fixed(ino)) {
		struct snapshot *s = sf_snapshot(sf, SLOT_OF(ino));
		struct index_node *n = malloc(sizeof(*n));
		if (s && n && snapshot_getattr(s, LOCAL_OF(ino), n) == 0) {
			bool file = n->type == ARTIFACT_FILE;
			/* the kernel refuses user.* attributes on symlinks */
			if (n->type != ARTIFACT_SYMLINK) {
				list = file ? files : others;
				len = file ? sizeof(files) : sizeof(others);
			}
		}
		free(n);
		snapshot_unref(s);
	}
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, list, len);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs st = { .f_bsize = 4096, .f_frsize = 4096, .f_namemax = 255, .f_flag = ST_RDONLY | ST_NOSUID };
	struct snapshot *s = sf_current(SF(req), NULL);
	if (s) {
		st.f_blocks = (s->bytes + 4095) / 4096;
		st.f_files = s->files;
	}
	snapshot_unref(s);
	fuse_reply_statfs(req, &st);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Reads as large as the kernel will send: more blocks hashed per
	 * request, fewer round trips. */
	conn->max_readahead = conn->max_readahead ? conn->max_readahead : (1u << 20);
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	/* current's target may be cached: slots.c has it invalidated on a switch */
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
	/* READDIRPLUS for every batch of a listing, not only the first: in
	 * its "auto" mode the kernel asks for entries with attributes at
	 * offset 0 only, and falls back to plain READDIR for the rest of the
	 * directory unless lookups came first, so a walker of a directory of
	 * 1000 files paid a LOOKUP for each of the 976 past the first batch
	 * (measured: 40 359 LOOKUPs for a 50 000-file walk). */
	if (conn->capable & FUSE_CAP_READDIRPLUS) {
		conn->want |= FUSE_CAP_READDIRPLUS;
		conn->want &= ~(unsigned)FUSE_CAP_READDIRPLUS_AUTO;
	}
}

/* Everything that would change the tree: read-only. */
static void erofs(fuse_req_t req) { fuse_reply_err(req, EROFS); }
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *a, int to_set, struct fuse_file_info *fi)
{
	worker_boost(req);
	(void)a;
	(void)fi;
	/* `echo cmd > control` truncates first: allow exactly that. */
	if (is_control(ino) && (to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW |
					      FUSE_SET_ATTR_CTIME)) == 0) {
		if (!control_allowed(SF(req), req)) {
			fuse_reply_err(req, EACCES);
			return;
		}
		struct stat st;
		fixed_attr(SF(req), ino, &st);
		fuse_reply_attr(req, &st, fixed_attr_timeout(ino));
		return;
	}
	erofs(req);
}
static void op_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t r) { (void)p; (void)n; (void)m; (void)r; erofs(req); }
static void op_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m) { (void)p; (void)n; (void)m; erofs(req); }
static void op_unlink(fuse_req_t req, fuse_ino_t p, const char *n) { (void)p; (void)n; erofs(req); }
static void op_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n) { (void)l; (void)p; (void)n; erofs(req); }
static void op_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn, unsigned f)
{
	(void)p; (void)n; (void)np; (void)nn; (void)f;
	erofs(req);
}
static void op_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t p, const char *n) { (void)i; (void)p; (void)n; erofs(req); }
static void op_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *fi)
{
	(void)p; (void)n; (void)m; (void)fi;
	erofs(req);
}
static void op_setxattr(fuse_req_t req, fuse_ino_t i, const char *n, const char *v, size_t s, int f)
{
	(void)i; (void)n; (void)v; (void)s; (void)f;
	erofs(req);
}
static void op_removexattr(fuse_req_t req, fuse_ino_t i, const char *n) { (void)i; (void)n; erofs(req); }

const struct fuse_lowlevel_ops stellafs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.release = op_release,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.statfs = op_statfs,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_unlink,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
};
