/* stellafs-fault only: marks where the FUSE loop starts and ends (the report's
 * loop= and end=), so that a test can tell start-up, serving and shutdown calls
 * apart, and STELLA_FAULT_SHUTDOWN=K re-arms the fault for the Kth call after
 * the loop returned.  These calls are not counted. */
#include <stdlib.h>

extern unsigned long stella_fault_calls, stella_fault_loop_at, stella_fault_loop_end, stella_fault_n;

static void loop_started(void)
{
	stella_fault_loop_at = __atomic_load_n(&stella_fault_calls, __ATOMIC_RELAXED);
}

static void loop_ended(void)
{
	unsigned long end = __atomic_load_n(&stella_fault_calls, __ATOMIC_RELAXED);
	stella_fault_loop_end = end;
	const char *k = getenv("STELLA_FAULT_SHUTDOWN");
	if (k && *k)
		__atomic_store_n(&stella_fault_n, end + strtoul(k, NULL, 10), __ATOMIC_RELAXED);
}

struct fuse_session;
struct fuse_loop_config;
int __real_fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *c);
int __wrap_fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *c);
int __wrap_fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *c)
{
	loop_started();
	int r = __real_fuse_session_loop_mt(se, c);
	loop_ended();
	return r;
}

int __real_fuse_session_loop(struct fuse_session *se);
int __wrap_fuse_session_loop(struct fuse_session *se);
int __wrap_fuse_session_loop(struct fuse_session *se)
{
	loop_started();
	int r = __real_fuse_session_loop(se);
	loop_ended();
	return r;
}
