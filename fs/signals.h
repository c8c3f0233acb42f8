/* The stop signals (SIGTERM, SIGINT, SIGHUP), taken by one thread of their
 * own rather than by handlers (docs/mount.md, section 1).
 *
 * libfuse's handlers only set the session's exit flag, which its loops
 * test before they block: a signal that lands between that test and the
 * block (sem_wait in the multi-threaded loop, read in the single one), or
 * on one of our own threads, leaves the loop asleep for good.  Here every
 * thread blocks the three signals; one thread waits for them, sets the
 * flag, and wakes the loop's thread until the loop has returned.  A stop
 * signal ignored when the daemon started (nohup's SIGHUP) stays ignored. */
#ifndef STELLAFS_SIGNALS_H
#define STELLAFS_SIGNALS_H

struct fuse_session;

/* In main(), before any thread exists: every thread made after blocks the
 * stop signals (those that come before the waiting thread runs stay
 * pending for it), and the waiting thread starts.  Until
 * stop_signals_session, a stop signal ends the process as it would without
 * us (nothing is mounted yet).  Again in the child after fork(): the
 * waiting thread did not survive it.  0 or a negative errno. */
int stop_signals_start(void);

/* The session exists and is about to be mounted: a stop signal now sets
 * its exit flag (fuse_session_exit) and the process lives on, to unmount
 * once the loop has returned (at once, if the signal came first). */
void stop_signals_session(struct fuse_session *se);

/* The calling thread is about to run the session's loop: a stop signal
 * also wakes it until stop_signals_left. */
void stop_signals_serve(void);

/* The loop has returned (its thread needs no more waking). */
void stop_signals_left(void);

/* Unmounted: a stop signal ends the process at once again (a second
 * Ctrl-C while the teardown waits for an import). */
void stop_signals_done(void);

/* After fork(), in the parent that only waits for the child's verdict:
 * the stop signals act as they would without us (their dispositions were
 * never changed: only blocked). */
void stop_signals_default(void);

#endif
