/* The stop signals (fs/signals.h says why this is not libfuse's handlers).
 *
 * The handler, on whatever thread the signal lands, does what the daemon's
 * phase calls for:
 *   STARTING  nothing mounted: the process ends by the signal, as without us;
 *   MOUNTED   a session (being) mounted, its loop not yet running: the
 *             session's exit flag is set, and the loop returns as soon as
 *             it starts;
 *   SERVING   the loop runs: the flag is set, and the kicker thread is told
 *             (a semaphore) to wake the loop's thread (SIGRTMIN, whose
 *             handler does nothing but interrupt its wait) every KICK_MS
 *             until the loop has returned;
 *   LEFT      the loop returned, the teardown unmounts: the flag again, no
 *             more, so that an unmount is not cut short (a mount point left
 *             to a dead daemon answers "Transport endpoint is not connected");
 *   DONE      unmounted: the process ends by the signal (a second Ctrl-C
 *             while the teardown waits for an import).
 * Setting the exit flag is what libfuse's own handler does; sem_post is
 * async-signal-safe.  No signal mask changes hands: threads made at any
 * time take the signals like any other, and the kicker starts only with
 * the loop, after the fork into the background (no thread may live across
 * that fork: it would not exist in the child, and the sanitizers stop the
 * child that starts one after a fork with threads). */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#include "signals.h"
#include "stellafs.h" /* libfuse, at the API version the daemon uses */

#define KICK_MS 20

enum { STARTING, MOUNTED, SERVING, LEFT, DONE };

static const int stops[] = { SIGTERM, SIGINT, SIGHUP };

static _Atomic int state = STARTING;
static sem_t kick;              /* posted by the handler in SERVING */
/* Written before the state that makes them read (MOUNTED, SERVING) is
 * stored, read after it is loaded: the atomic orders them. */
static struct fuse_session *session;
static pthread_t loop_thread;
static bool kicker_running;

/* The signal's own default action: the process ends as if we had never
 * taken it.  Inside the handler the signal is blocked, so raise() leaves it
 * pending, and it acts as the handler returns.  sigaction, not signal():
 * only the former is async-signal-safe. */
static void die_by(int sig)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	raise(sig);
}

static void on_stop(int sig)
{
	int saved = errno;
	switch (atomic_load(&state)) {
	case STARTING:
	case DONE:
		die_by(sig);
		break;
	case SERVING:
		fuse_session_exit(session);
		sem_post(&kick);
		break;
	default:
		fuse_session_exit(session);
		break;
	}
	errno = saved;
}

static void kicked(int sig)
{
	(void)sig; /* the interrupted wait is the point */
}

static void *kicker_main(void *arg)
{
	(void)arg;
	const struct timespec pause = { 0, KICK_MS * 1000000L };
	/* a stop signal, or the loop's return (then there is nothing to do) */
	while (sem_wait(&kick) < 0 && errno == EINTR)
		;
	while (atomic_load(&state) == SERVING) {
		pthread_kill(loop_thread, SIGRTMIN);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

int stop_signals_start(void)
{
	if (sem_init(&kick, 0, 0) < 0)
		return -errno;
	/* No SA_RESTART: the single-threaded loop's read of /dev/fuse must
	 * return EINTR to look at the exit flag again. */
	struct sigaction sa = { .sa_handler = kicked };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN, &sa, NULL) < 0)
		return -errno;
	/* a reader gone from a pipe or socket is an error to handle, not an
	 * end (libfuse's handlers ignored it too) */
	signal(SIGPIPE, SIG_IGN);
	struct sigaction stop = { .sa_handler = on_stop };
	sigemptyset(&stop.sa_mask);
	for (size_t i = 0; i < sizeof(stops) / sizeof(stops[0]); i++) {
		struct sigaction old;
		/* a stop signal the starter ignored (nohup's SIGHUP, a shell
		 * background job's SIGINT) stays ignored, as libfuse left it */
		if (sigaction(stops[i], NULL, &old) < 0 || old.sa_handler == SIG_IGN)
			continue;
		if (sigaction(stops[i], &stop, NULL) < 0)
			return -errno;
	}
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
	pthread_t t;
	/* without the kicker a stop still ends the loop, but for the window
	 * the kicker exists to close */
	kicker_running = pthread_create(&t, NULL, kicker_main, NULL) == 0;
	if (kicker_running)
		pthread_detach(t);
	atomic_store(&state, SERVING);
}

void stop_signals_left(void)
{
	atomic_store(&state, LEFT);
	if (kicker_running)
		sem_post(&kick); /* it ends */
}

void stop_signals_done(void)
{
	atomic_store(&state, DONE);
}

void stop_signals_default(void)
{
	for (size_t i = 0; i < sizeof(stops) / sizeof(stops[0]); i++) {
		struct sigaction old;
		if (sigaction(stops[i], NULL, &old) == 0 && old.sa_handler == on_stop)
			signal(stops[i], SIG_DFL);
	}
}
