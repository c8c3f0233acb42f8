/* Opening a kit named in a control command or dropped into incoming=DIR,
 * for the daemon: never into its own mount, and as the one who asked.
 * (docs/mount.md, "The control file": import.) */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "err.h"

/* Who wrote a command to the control file: the FUSE request's credentials
 * and supplementary groups (ngroups < 0: unknown; more than the maximum:
 * not all read.  Either way an import as that writer is refused). */
#define WRITER_GROUPS_MAX 256
struct writer {
	uid_t uid;
	gid_t gid;
	int ngroups;
	gid_t groups[WRITER_GROUPS_MAX];
};

/* The device number ("MAJ:MIN") of the FUSE mount at MOUNTPOINT, from
 * /proc/self/mountinfo (a stat of the mount point could be a request to the
 * daemon itself): 0, or -ENOENT when it is not mounted. */
int mount_devname(const char *mountpoint, char dev[64]);

/* Open PATH (absolute) for reading as a kit: a descriptor in blocking mode
 * of a regular file or block device, or a negative errno with the reason
 * in *e.  Resolved component by component, each looked up with O_PATH
 * under the previous one, symbolic links followed by their text (at most
 * 40): a component on device SELF (the daemon's own mount; 0: none known)
 * is refused (-EINVAL) before anything below it is looked up, and so is a
 * FIFO, socket or device node before it is opened.  With W, every lookup
 * and the open are done with W's file-system credentials (this thread
 * only), so that the daemon opens nothing W could not. */
int kitpath_open(const char *path, dev_t self, const struct writer *w, struct stella_err *e);
