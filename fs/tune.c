/* Thread priorities: a switch must not wait for a time slice behind busy
 * readers (docs/mount.md, section 7).  No daemon state here. */
#include <errno.h>
#include <sys/resource.h>
#include <unistd.h>

#include "stellafs.h"

int tune_nice(void)
{
	errno = 0;
	int n = getpriority(PRIO_PROCESS, (id_t)gettid());
	return errno == 0 ? n : 0;
}

int tune_boost(int nice)
{
	/* Linux: a thread's nice value is its own (setpriority on its tid) */
	id_t tid = (id_t)gettid();
	errno = 0;
	int old = getpriority(PRIO_PROCESS, tid);
	if (errno == 0)
		setpriority(PRIO_PROCESS, tid, nice);
	return errno == 0 ? old : 0;
}

/* The calling thread's id, asked of the kernel once per thread. */
static __thread pid_t self_tid;

int tune_set(int nice)
{
	if (!self_tid)
		self_tid = gettid();
	return setpriority(PRIO_PROCESS, (id_t)self_tid, nice) < 0 ? -errno : 0;
}
