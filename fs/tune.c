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
