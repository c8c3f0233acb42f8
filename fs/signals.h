/* The stop signals (SIGTERM, SIGINT, SIGHUP): our handler, and a thread
 * that wakes the FUSE loop (docs/mount.md, section 1).
 *
 * libfuse's handlers only set the session's exit flag, which its loops
 * test before they block: a signal that lands between that test and the
 * block (sem_wait in the multi-threaded loop, read in the single one), or
 * on another thread, leaves the loop asleep for good.  Ours set the flag
 * too, and while the loop runs a thread wakes the loop's thread until the
 * loop has returned.  A stop signal ignored when the daemon started
 * (nohup's SIGHUP) stays ignored. */
#ifndef STELLAFS_SIGNALS_H
#define STELLAFS_SIGNALS_H

struct fuse_session;

/* In main(), first: the handlers.  Until stop_signals_session, a stop
 * signal ends the process as it would without us (nothing is mounted
 * yet: a Ctrl-C while a mirror hangs on the kit's head).  0 or a negative
 * errno. */
int stop_signals_start(void);

/* The session exists and is about to be mounted: a stop signal now sets
 * its exit flag (fuse_session_exit) and the process lives on, to unmount
 * once the loop has returned (at once, if the signal came first). */
void stop_signals_session(struct fuse_session *se);

/* The calling thread is about to run the session's loop (after the fork
 * into the background: the waking thread starts here): a stop signal
 * also has it woken until stop_signals_left. */
void stop_signals_serve(void);

/* The loop has returned (its thread needs no more waking). */
void stop_signals_left(void);

/* Unmounted: a stop signal ends the process at once again (a second
 * Ctrl-C while the teardown waits for an import). */
void stop_signals_done(void);

/* After fork(), in the parent that only waits for the child's verdict:
 * the stop signals act as they would without us. */
void stop_signals_default(void);

#endif
