/* The daemon's place on the machine: thread priorities (a switch must not
 * wait for a time slice behind busy readers) and the mount's readahead. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "kitpath.h"
#include "stellafs.h"

int sf_nice(void)
{
	errno = 0;
	int n = getpriority(PRIO_PROCESS, (id_t)gettid());
	return errno == 0 ? n : 0;
}

int sf_boost(int nice)
{
	/* Linux: a thread's nice value is its own (setpriority on its tid) */
	id_t tid = (id_t)gettid();
	errno = 0;
	int old = getpriority(PRIO_PROCESS, tid);
	if (errno == 0)
		setpriority(PRIO_PROCESS, tid, nice);
	return errno == 0 ? old : 0;
}

void sf_readahead(struct stellafs *sf)
{
	if (!sf->mountpoint || atomic_exchange(&sf->readahead_done, true) || geteuid() != 0)
		return;
	/* Not for a gzip kit: its reads decode from seek points through a few
	 * cursors, and more requests in flight at scattered offsets make
	 * them restart or wait (measured: 210 -> 170 MB/s). */
	pthread_mutex_lock(&sf->lock);
	bool gzip = !sf->store && sf->nslots && sf->slots[0].s->compression == KIT_COMPRESS_GZIP;
	pthread_mutex_unlock(&sf->lock);
	if (gzip)
		return;
	/* Our mount's device number, from mountinfo: a stat() of the mount
	 * point would be a request to ourselves. */
	char dev[64];
	if (mount_devname(sf->mountpoint, dev) < 0)
		return;
	char path[128], val[16];
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	int n = snprintf(val, sizeof(val), "%u\n", SF_READAHEAD_KIB);
	if (write(fd, val, (size_t)n) < 0) {
		/* best effort */
	}
	close(fd);
}
