/* The stop signals, taken by a thread of their own (fs/signals.h says why).
 *
 * Where the daemon is decides what a stop signal does:
 *   STARTING  nothing mounted: the process ends by the signal, as without us;
 *   MOUNTED   a session (being) mounted, its loop not yet running: the
 *             session's exit flag is set, and the loop returns as soon as
 *             it starts;
 *   SERVING   the loop runs: the flag is set, and the loop's thread is
 *             woken (a signal of its own, with a handler that does nothing
 *             but interrupt its wait) every KICK_MS until the loop returns;
 *   LEFT      the loop returned, the teardown unmounts: taken and dropped,
 *             so that an unmount is not cut short (a mount point left to a
 *             dead daemon answers "Transport endpoint is not connected");
 *   DONE      unmounted: the process ends by the signal (a second Ctrl-C
 *             while the teardown waits for an import). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "signals.h"
#include "stellafs.h" /* libfuse, at the API version the daemon uses */

#define KICK_MS 20

enum { STARTING, MOUNTED, SERVING, LEFT, DONE };

static _Atomic int state = STARTING;
/* The stop signals we take: those not ignored when we started.  A stop
 * signal the starter ignored (nohup ignores SIGHUP; a shell's background
 * job, SIGINT) stays ignored, as libfuse's handlers left it.  Set before
 * the waiting thread starts, read-only after. */
static sigset_t waited;
/* Written before the state that makes them read (MOUNTED, SERVING) is
 * stored, read after it is loaded: the atomic orders them. */
static struct fuse_session *session;
static pthread_t loop_thread;

static const int stops[] = { SIGTERM, SIGINT, SIGHUP };

static void waited_set(void)
{
	sigemptyset(&waited);
	for (size_t i = 0; i < sizeof(stops) / sizeof(stops[0]); i++) {
		struct sigaction old;
		if (sigaction(stops[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
			sigaddset(&waited, stops[i]);
	}
}

static void kicked(int sig)
{
	(void)sig; /* the interrupted wait is the point */
}

/* The signal's own default action, on this thread: the process ends as
 * if we had never taken the signal. */
static _Noreturn void die_by(int sig)
{
	signal(sig, SIG_DFL);
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, sig);
	pthread_sigmask(SIG_UNBLOCK, &s, NULL);
	raise(sig);
	_exit(128 + sig);
}

static void kick_until_left(void)
{
	const struct timespec pause = { 0, KICK_MS * 1000000L };
	while (atomic_load(&state) == SERVING) {
		pthread_kill(loop_thread, SIGRTMIN);
		nanosleep(&pause, NULL);
	}
}

static void *waiter_main(void *arg)
{
	(void)arg;
	for (;;) {
		int sig;
		if (sigwait(&waited, &sig) != 0)
			continue;
		switch (atomic_load(&state)) {
		case STARTING:
		case DONE:
			die_by(sig);
		case MOUNTED:
		case LEFT:
			fuse_session_exit(session);
			break;
		case SERVING:
			fuse_session_exit(session);
			kick_until_left();
			break;
		}
	}
	return NULL;
}

int stop_signals_start(void)
{
	/* No SA_RESTART: the single-threaded loop's read of /dev/fuse must
	 * return EINTR to look at the exit flag again. */
	struct sigaction sa = { .sa_handler = kicked };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN, &sa, NULL) < 0)
		return -errno;
	/* a reader gone from a pipe or socket is an error to handle, not an
	 * end (libfuse's handlers ignored it too) */
	signal(SIGPIPE, SIG_IGN);
	waited_set();
	int r = pthread_sigmask(SIG_BLOCK, &waited, NULL);
	if (r)
		return -r;
	pthread_t t;
	if ((r = pthread_create(&t, NULL, waiter_main, NULL))) {
		pthread_sigmask(SIG_UNBLOCK, &waited, NULL);
		return -r;
	}
	pthread_detach(t);
	return 0;
}

void stop_signals_session(struct fuse_session *se)
{
	session = se;
	atomic_store(&state, MOUNTED);
}

void stop_signals_serve(void)
{
	loop_thread = pthread_self();
	atomic_store(&state, SERVING);
}

void stop_signals_left(void)
{
	atomic_store(&state, LEFT);
}

void stop_signals_done(void)
{
	atomic_store(&state, DONE);
}

void stop_signals_default(void)
{
	pthread_sigmask(SIG_UNBLOCK, &waited, NULL);
}
