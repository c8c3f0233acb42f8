/* Opening a kit for an import (kitpath.h).
 *
 * Two hazards, both from the path being someone else's text:
 *
 * - The daemon's own mount.  A kit read through it makes the command's
 *   thread send requests to its own daemon; with -s (one thread) that
 *   thread is the only one that could answer, and the whole mount hangs.
 *   The open itself would already hang (the lookups are requests), so the
 *   check must come before any lookup below our mount point: the path is
 *   walked one component at a time with O_PATH|O_NOFOLLOW, and each
 *   component's device is read with statx(AT_STATX_DONT_SYNC) (attributes
 *   the kernel has, never a GETATTR request).  Reaching our mount's root
 *   from outside is a lookup in the directory above it, not a request to
 *   us; the walk stops there.  Symbolic links are read (readlinkat on the
 *   O_PATH descriptor, no request either) and their text spliced into the
 *   rest of the path, so a link into the mount is caught the same way, and
 *   /proc/self/root/... too ("self" and "root" are links whose text is a
 *   pid and "/").  A timeout on a helper thread would not do: the request
 *   to ourselves would still be pending, and a kernel lookup cannot be
 *   cancelled.
 *
 * - A confused deputy.  The daemon runs as root; a member of admin_gid
 *   must not use it to open, or learn of, files it could not.  The walk
 *   and the open are done with the writer's file-system uid, gid and
 *   supplementary groups, set on this thread alone (raw syscalls: glibc's
 *   setgroups would change every thread of the daemon), and put back
 *   before returning.  Once open, the kit is read with the daemon's own
 *   rights, as any file the writer handed over would be. */
#include "kitpath.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <syslog.h>
#include <unistd.h>

#include "source.h"
#include "util.h"

#define LINKS_MAX 40

int mount_devname(const char *mountpoint, char dev[64])
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	char *line = NULL;
	size_t cap = 0;
	dev[0] = 0;
	/* the last matching line is the mount on top */
	while (getline(&line, &cap, f) > 0) {
		char mm[64];
		int at = 0;
		if (sscanf(line, "%*u %*u %63s %*s %n", mm, &at) != 1 || !at || !strstr(line, " - fuse"))
			continue;
		/* the mount point, \ooo escapes decoded, compared as we go */
		const char *p = line + at, *want = mountpoint;
		for (; *p && *p != ' ' && *want; want++) {
			char c = *p++;
			if (c == '\\' && p[0] >= '0' && p[0] <= '7' && p[1] >= '0' && p[1] <= '7' && p[2] >= '0' && p[2] <= '7') {
				c = (char)((p[0] - '0') << 6 | (p[1] - '0') << 3 | (p[2] - '0'));
				p += 3;
			}
			if (c != *want)
				break;
		}
		if (!*want && (*p == ' ' || !*p))
			snprintf(dev, 64, "%s", mm);
	}
	free(line);
	fclose(f);
	return dev[0] ? 0 : -ENOENT;
}

/* ---- the writer's credentials, on this thread ---- */

struct saved_cred {
	bool switched;
	uid_t fsuid;
	gid_t fsgid;
	int ngroups;
	gid_t groups[WRITER_GROUPS_MAX];
};

/* A worker thread left with a writer's credentials would serve every
 * later request, and open every later import, as that writer: when they
 * cannot be put back (the kernel could not allocate new credentials), the
 * daemon stops rather than go on as someone else. */
static void cred_restore(struct saved_cred *c)
{
	if (!c->switched)
		return;
	setfsuid(c->fsuid);
	setfsgid(c->fsgid);
	long g = syscall(SYS_setgroups, (size_t)c->ngroups, c->groups);
	if (g < 0 || (uid_t)setfsuid((uid_t)-1) != c->fsuid || (gid_t)setfsgid((gid_t)-1) != c->fsgid) {
		stella_log(LOG_CRIT, "cannot take back the daemon's credentials after an import: stopping");
		abort();
	}
	c->switched = false;
}

static int cred_switch(const struct writer *w, struct saved_cred *c, const char *path, struct stella_err *e)
{
	c->switched = false;
	/* root asked, or the daemon's own user (a daemon not run as root
	 * cannot take another's credentials, nor has it more than its own) */
	if (!w || w->uid == 0 || w->uid == geteuid())
		return 0;
	/* Groups can deny as well as grant (a file 0604 of a group the writer
	 * is in): without all of them, the open would not be the writer's. */
	if (w->ngroups < 0 || w->ngroups > WRITER_GROUPS_MAX)
		return stella_fail(e, -EACCES, "%s: the writer's groups cannot be read (none, or more than %d)", path,
				   WRITER_GROUPS_MAX);
	c->fsuid = (uid_t)setfsuid((uid_t)-1);
	c->fsgid = (gid_t)setfsgid((gid_t)-1);
	c->ngroups = getgroups(WRITER_GROUPS_MAX, c->groups);
	if (c->ngroups < 0)
		return stella_fail_errno(e, -errno, "%s: cannot take the writer's credentials", path);
	c->switched = true;
	size_t ng = (size_t)w->ngroups;
	if (syscall(SYS_setgroups, ng, w->groups) < 0) {
		int err = errno;
		cred_restore(c);
		return stella_fail_errno(e, -err, "%s: cannot take the writer's groups", path);
	}
	/* setfsuid/setfsgid say nothing of failure: ask again */
	setfsgid(w->gid);
	setfsuid(w->uid);
	if ((uid_t)setfsuid((uid_t)-1) != w->uid || (gid_t)setfsgid((gid_t)-1) != w->gid) {
		cred_restore(c);
		return stella_fail(e, -EPERM, "%s: cannot take the writer's credentials", path);
	}
	return 0;
}

/* ---- the walk ---- */

/* What fd (O_PATH) is, from the kernel's cached attributes only. */
static int path_stat(int fd, struct statx *sx)
{
	if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT,
		  STATX_TYPE | STATX_INO, sx) < 0)
		return -errno;
	return 0;
}

/* The walk's state: the directory reached, and the path still to walk. */
struct walk {
	int dir;
	char rest[2 * PATH_MAX];
	unsigned links;
};

/* Replace the walk's remaining text by link target T followed by what was
 * left after the link; an absolute target starts again from /. */
static int splice_link(struct walk *k, const char *t, const char *after, const char *path, struct stella_err *e)
{
	if (++k->links > LINKS_MAX)
		return stella_fail(e, -ELOOP, "%s: too many levels of symbolic links", path);
	char next[sizeof(k->rest)];
	int n = snprintf(next, sizeof(next), "%s%s%s", t, *after ? "/" : "", after);
	if (n < 0 || (size_t)n >= sizeof(next))
		return stella_fail(e, -ENAMETOOLONG, "%s: path too long", path);
	if (t[0] == '/') {
		int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (root < 0)
			return stella_fail_errno(e, -errno, "%s", path);
		close(k->dir);
		k->dir = root;
	}
	memcpy(k->rest, next, (size_t)n + 1);
	return 0;
}

/* The final component NAME, looked up as SX, opened for reading. */
static int open_last(struct walk *k, const char *name, const struct statx *sx, const char *path,
		     struct stella_err *e)
{
	struct stat st = { .st_mode = sx->stx_mode };
	int r = source_check_type(path, &st, e); /* before open(2): a FIFO's would wait */
	if (r < 0)
		return r;
	int fd = openat(k->dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return stella_fail_errno(e, -errno, "%s", path);
	/* the same file the walk looked at, not one renamed into its place */
	if (fstat(fd, &st) < 0 || st.st_ino != sx->stx_ino ||
	    st.st_dev != makedev(sx->stx_dev_major, sx->stx_dev_minor))
		r = stella_fail(e, -EAGAIN, "%s: replaced while being opened", path);
	else if ((r = source_check_type(path, &st, e)) == 0 &&
		 fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		r = stella_fail_errno(e, -errno, "%s", path);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* One step: the next component of k->rest.  Returns 0 to go on, 1 when
 * the kit is open (*out), or a negative errno. */
static int walk_step(struct walk *k, dev_t self, const char *path, int *out, struct stella_err *e)
{
	char *p = k->rest;
	while (*p == '/')
		p++;
	size_t c = strcspn(p, "/");
	if (c == 0) /* the path ends on a directory ("/", "dir/") */
		return stella_fail(e, -EINVAL, "%s: a directory, not a kit file", path);
	char name[NAME_MAX + 1];
	if (c > NAME_MAX)
		return stella_fail(e, -ENAMETOOLONG, "%s: a name too long", path);
	memcpy(name, p, c);
	name[c] = 0;
	const char *after = p + c;
	while (*after == '/')
		after++;
	bool last = !*after && !p[c];
	if (!strcmp(name, ".") && !last) {
		memmove(k->rest, after, strlen(after) + 1);
		return 0;
	}
	int fd = openat(k->dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return stella_fail_errno(e, -errno, "%s", path);
	struct statx sx;
	int r = path_stat(fd, &sx);
	if (r < 0) {
		close(fd);
		return stella_fail_errno(e, r, "%s", path);
	}
	if (self && makedev(sx.stx_dev_major, sx.stx_dev_minor) == self) {
		close(fd);
		return stella_fail(e, -EINVAL, "%s: inside this mount: copy the kit out of it first", path);
	}
	if (S_ISLNK(sx.stx_mode)) {
		char t[PATH_MAX];
		ssize_t n = readlinkat(fd, "", t, sizeof(t) - 1);
		close(fd);
		if (n < 0)
			return stella_fail_errno(e, -errno, "%s", path);
		t[n] = 0;
		char tail[sizeof(k->rest)];
		snprintf(tail, sizeof(tail), "%s", after);
		return splice_link(k, t, tail, path, e);
	}
	if (last) {
		close(fd);
		if ((*out = open_last(k, name, &sx, path, e)) < 0)
			return *out;
		return 1;
	}
	if (!S_ISDIR(sx.stx_mode)) {
		close(fd);
		return stella_fail(e, -ENOTDIR, "%s: not a directory on the way", path);
	}
	close(k->dir);
	k->dir = fd;
	memmove(k->rest, after, strlen(after) + 1);
	return 0;
}

int kitpath_open(const char *path, dev_t self, const struct writer *w, struct stella_err *e)
{
	if (path[0] != '/' || strlen(path) >= PATH_MAX)
		return stella_fail(e, -EINVAL, "%s: not an absolute path", path);
	struct saved_cred saved;
	int r = cred_switch(w, &saved, path, e);
	if (r < 0)
		return r;
	struct walk k = { .dir = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC) };
	if (k.dir < 0)
		r = stella_fail_errno(e, -errno, "/");
	snprintf(k.rest, sizeof(k.rest), "%s", path);
	int fd = -1;
	while (r == 0)
		r = walk_step(&k, self, path, &fd, e);
	if (k.dir >= 0)
		close(k.dir);
	cred_restore(&saved);
	return r < 0 ? r : fd;
}
