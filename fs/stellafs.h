/* The daemon's shared state and its rooms.  Each fs/ file has one concern
 * and owns one sub-struct of struct stellafs (below, each with the lock
 * that guards it):
 *
 *   main.c      options -> checks -> mount -> daemon; sd_notify
 *   signals.c   the stop signals: their handler ends the loop, a thread wakes it
 *   options.c   the command line and -o options (pure)
 *   ops.c       the FUSE requests (op_*), thin: inode arithmetic, replies
 *   slots.c     the served snapshots and current; refresh from the store,
 *               refusals, retrust (the state API: sf_*)
 *   inval.c     kernel notifications: the queue and its thread
 *   incoming.c  the watcher thread: others' store changes, incoming=DIR,
 *               retries, quarantine
 *   control.c   the control commands (and import), cmd_lock
 *   command.c   the control file's language (pure parsing)
 *   journal.c   the command journal: this mount's ring + the store's
 *   vfiles.c    status, status.json, health, metrics: gathered + rendered
 *   kitpath.c   opening an import's path as its writer, never in the mount
 *   tune.c      thread priorities
 *   fetch.c     reads of kits on mirrors: the fetch threads, their queue,
 *               every read's deadline (its watchdog thread)
 *   follow.c    store mode's follow=URL: the polling thread, imports
 *
 * Calls go one way (an arrow: "calls into"; no cycle):
 *
 *   main ----> ops, incoming, follow, fetch, slots, inval, vfiles, tune, options,
 *              kitpath, signals
 *   ops -----> control, vfiles, slots, tune, kitpath, fetch
 *   fetch ---> tune
 *   incoming > control, journal, slots
 *   follow --> control, journal
 *   control -> command, kitpath, journal, slots, inval
 *   vfiles --> journal, slots
 *   journal -> command (its list of commands)
 *   slots ---> inval
 *   inval ---> tune
 *
 * Lock order (take left before right; never the other way):
 *
 *   cmd_lock -> store writer lock (core/store.c) -> refresh_lock
 *            -> trust_lock -> lock -> inval.lock
 *
 * journal.lock, ops.lock, fetch.lock and follow.lock are leaves: held
 * briefly, nothing taken under them (no fuse_reply_* under fetch.lock).  Every other lock is held briefly and never while taking another
 * (docs/mount.md, section 7, has the table with core/'s locks). */
#pragma once

#include "kitpath.h"

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "health.h"
#include "remote.h"
#include "sig.h"
#include "snapshot.h"
#include "store.h"

/* Inode numbers: the fixed top of the tree, then each snapshot's own inodes
 * shifted into a slot of their own (slot 1: the direct mode's snapshot). */
enum {
	INO_ROOT = FUSE_ROOT_ID,
	INO_CURRENT,
	INO_FEEDS,
	INO_SNAPSHOTS,
	INO_STATUS,
	INO_STATUS_JSON,
	INO_HEALTH,
	INO_METRICS,
	INO_CONTROL,
	INO_FIXED_END,
};
#define SLOT_SHIFT 40
#define SLOT_OF(ino) ((ino) >> SLOT_SHIFT)
#define LOCAL_OF(ino) ((ino) & ((UINT64_C(1) << SLOT_SHIFT) - 1))
#define MAKE_INO(slot, local) (((uint64_t)(slot) << SLOT_SHIFT) | (local))
_Static_assert(INDEX_MAX_INO < (UINT64_C(1) << SLOT_SHIFT), "an index ino must fit below the slot bits");

#define JOURNAL_LEN 32
/* fetch.c: failed reads remembered, and for how long (see there) */
#define FETCH_FAILED_KEEP 16
#define FETCH_FAILED_NS (2 * INT64_C(1000000000))
/* What a refusal of an expired kit tells the operator of the daemon (its
 * option, not stellakit's --allow-expired). */
#define SF_EXPIRED_HINT "mount with -o allow_expired to accept it"

/* A kit in incoming=DIR whose import failed for a reason not its own. */
struct incoming_retry {
	char name[256];
	int64_t at;                /* CLOCK_MONOTONIC seconds of the next try */
	int backoff;               /* seconds to wait after the next failure's half */
};

struct vbuf;

struct journal_entry {
	int64_t when;
	uid_t uid;
	char cmd[256];
	int err;               /* 0 or a positive errno */
	char result[512];
	bool unsaved;          /* store mode: the store's journal did not take it */
};

/* One served snapshot.  The table holds a reference; every open file and
 * every request in flight holds its own, so dropping an entry (remove, gc)
 * never frees what a reader still uses. */
struct slot {
	uint64_t id;               /* inode slot, never reused within a mount */
	char version[129];
	int64_t sequence;
	struct snapshot *s;
};

/* Store mode: a snapshot of the store the mount does not serve (docs/store.md,
 * "Reads"): its index does not match its kept signed manifest, no manifest is
 * kept, or too few trusted keys sign it. */
struct refusal {
	char version[129];
	int err;                   /* -EBADMSG, -EKEYREJECTED */
	char why[400];
};

struct inval {
	fuse_ino_t parent;         /* inval_entry(parent, name) ... */
	char name[130];
	fuse_ino_t ino;            /* ... or, when set, inval_inode(ino) */
};

struct stellafs {
	/* Set by main before any thread starts; read-only after (no lock). */
	struct sf_options {
		char *source;
		const char *mountpoint;
		char *trust_path;
		char *cache_dir;
		char *incoming;
		bool auto_activate;
		unsigned threshold;
		int64_t fixed_now;         /* now= for tests and replays; 0: the clock */
		bool allow_expired;
		bool has_admin_gid;
		gid_t admin_gid;
		int64_t mounted_at;
		int base_nice;             /* the daemon's nice at start: boosts are relative to it */
		dev_t self_dev;            /* our mount's device, read from mountinfo right
					    * after mounting (no request to ourselves); 0:
					    * unknown, and imports are refused (kitpath.c) */
		/* kits on mirrors (docs/mirrors.md) */
		const char *const *mirrors;    /* mirror=, in order */
		size_t nmirrors;
		struct remote_opts remote;     /* cache_size=, timeout=, cacert=, proxy= */
		unsigned timeout_ms;           /* each read's bound (fetch.c) */
		const char *follow;            /* store mode: follow=URL, or NULL */
		unsigned interval;             /* follow=: seconds between polls */
	} opt;
	struct fuse_session *se;   /* set before inval.c's thread starts */
	struct store *store;       /* store mode; NULL in direct mode; set before the threads */

	/* slots.c: the served snapshots and current.  Guarded by lock, except
	 * switches (atomic).  refresh_lock: one refresh from the store at a
	 * time (taken before trust_lock and lock). */
	pthread_mutex_t lock;
	pthread_mutex_t refresh_lock;
	bool pruned;               /* under refresh_lock: the first refresh pruned
				    * cache=DIR's store indexes (storecheck_prune) */
	struct slot_table {
		struct slot *slots;        /* in sequence order */
		size_t nslots;
		uint64_t next_slot;
		char current[129];         /* version, "" when none */
		struct refusal *refused;   /* store mode: rebuilt by each refresh */
		size_t nrefused;
		int64_t store_version;     /* store.db's data_version last seen */
		bool store_dirty;          /* we changed it ourselves: re-read */
		bool store_incomplete;     /* a listed snapshot failed to open ... */
		int64_t store_retry_at;    /* ... and is retried from then (CLOCK_MONOTONIC s) */
		atomic_uint_fast64_t switches;
	} tab;

	/* The trust store.  keys: read by a refresh under trust_lock (read),
	 * by an import under lock; swapped by reload under trust_lock (write)
	 * and lock, with cmd_lock held.  ok, detail, signers: under lock. */
	pthread_rwlock_t trust_lock;
	struct sf_trust {
		struct trust *keys;
		bool ok;
		char detail[256];
		unsigned signers;          /* direct mode: of the served kit */
	} trust;

	/* control.c: one control command at a time (the watcher's imports too) */
	pthread_mutex_t cmd_lock;

	/* journal.c: guarded by journal.lock (independent of lock: no field
	 * of the ring is read with the table's) */
	struct sf_journal {
		pthread_mutex_t lock;
		struct journal_entry ring[JOURNAL_LEN];
		unsigned next, n;
	} journal;

	/* incoming.c: the watcher thread.  retry is the thread's own (no
	 * lock); the rest is set by start/stop on main's thread. */
	struct sf_watch {
		pthread_t thread;
		bool running;
		atomic_bool quit;          /* incoming_stop asked it to end */
		int stop[2];               /* a pipe: written to stop the watcher */
		struct incoming_retry *retry; /* kits to try again */
		size_t nretry;
	} watch;

	/* inval.c: kernel notifications, guarded by inval.lock (taken last:
	 * pushed under lock) */
	struct sf_inval {
		pthread_mutex_t lock;
		pthread_cond_t cond;
		struct inval *q;           /* queued notifications, grown as needed */
		size_t n, cap;
		bool overflow, stop, running;
		uint64_t queued, done;
		pthread_t thread;
	} inval;

	/* fetch.c: reads of a kit on mirrors.  The job list and counters
	 * under fetch.lock (a leaf); the threads' handles set by start/stop
	 * on main's thread. */
	struct sf_fetch {
		pthread_mutex_t lock;
		pthread_cond_t work;       /* a job queued, or stop */
		pthread_cond_t wake;       /* the watchdog: a first job, or stop */
		pthread_cond_t gone;       /* a fetch thread ended */
		struct fetch_job *head, *tail;
		struct fetch_file *files;  /* open files of remote snapshots */
		size_t n, peak;
		unsigned alive;            /* fetch threads running */
		bool stop, started, watchdog_running;
		pthread_t watchdog;
		uint64_t served, timeouts, refused;
		int64_t logged_at;         /* the last timeout line (mono s) */
		/* reads that just failed (fetch.c, "once per caller") */
		struct fetch_failed {
			uint64_t file;     /* the open file's id */
			uint64_t off, end;
			pid_t pid;
			int64_t at;        /* mono ns */
		} failed[FETCH_FAILED_KEEP];
		unsigned failed_next;
	} fetch;

	/* follow.c: the polling thread; state under follow.lock (a leaf) */
	struct sf_follow {
		pthread_mutex_t lock;
		pthread_cond_t cond;
		pthread_t thread;
		bool running, quit;
		/* set by follow_stop: follow='s imports (control.c's
		 * control_import_location) end their transfers
		 * (remote_opts.cancel) */
		atomic_bool cancel;
		char validator[256];       /* the last ETag / Last-Modified seen */
		int64_t last_poll;         /* wall clock of the last poll, 0 none */
		int last_err;              /* 0 or a positive errno of the last poll/import */
		char last_result[512];
		uint64_t polls, imports;
	} follow;

	/* ops.c: vbufs under ops.lock (independent of lock: only ops.c's
	 * open and release touch the list); the rest atomic */
	struct sf_ops {
		pthread_mutex_t lock;
		struct vbuf *vbufs;        /* open virtual files' contents */
		atomic_uint_fast64_t control_lookups; /* one inode per open of control */
		atomic_bool readahead_done;
	} ops;
};

/* The time expiry and freshness are judged at: now=, else the clock. */
static inline int64_t sf_now(const struct stellafs *sf)
{
	return sf->opt.fixed_now ? sf->opt.fixed_now : (int64_t)time(NULL);
}

/* CLOCK_MONOTONIC seconds, for retries and backoffs. */
static inline int64_t mono_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec;
}

/* ---- ops.c: the FUSE requests (op_*) ---- */
extern const struct fuse_lowlevel_ops stellafs_ops;
/* At exit: the contents of virtual files whose RELEASE never came. */
void ops_free_vbufs(struct stellafs *sf);

/* ---- slots.c: the served snapshots and current (the state API, sf_*) ---- */
/* Take a reference to the snapshot in slot (NULL if none). */
struct snapshot *sf_snapshot(struct stellafs *sf, uint64_t slot);
/* The current snapshot and its slot (NULL if none). */
struct snapshot *sf_current(struct stellafs *sf, uint64_t *slot);
/* The snapshot named version, and its slot. */
struct snapshot *sf_by_version(struct stellafs *sf, const char *version, uint64_t *slot);
/* Every served version with its slot, in sequence order (malloc'ed). */
size_t sf_list(struct stellafs *sf, struct slot **out);
/* Direct mode: serve this one snapshot. */
int sf_add_direct(struct stellafs *sf, struct snapshot *s);
/* Store mode: bring the table up to date with the store (another process
 * may have imported or switched).  Cheap when nothing changed. */
int sf_refresh(struct stellafs *sf, struct stella_err *e);
/* After this process changed the store. */
int sf_changed(struct stellafs *sf, struct stella_err *e);
/* Store mode, before a switch to version commits (store lock held): 0 when
 * this mount serves it and its index answers, or when the store has no
 * such version (the switch says so); else why it cannot be made current. */
int sf_check_servable(struct stellafs *sf, const char *version, struct stella_err *e);
/* Reload: drop the snapshots whose kept manifest no longer carries the
 * threshold under the new trust (cmd_lock held, trust already swapped);
 * returns how many. */
size_t sf_retrust(struct stellafs *sf);
/* The refusal of version, copied into *out; false when it is served or unknown. */
bool sf_refused(struct stellafs *sf, const char *version, struct refusal *out);
/* At exit, once no thread is left. */
void sf_free_slots(struct stellafs *sf);

/* ---- inval.c: kernel notifications ---- */
/* Queue a notification: inval_entry(parent, name), or with ino set
 * inval_inode(ino).  Safe under sf->lock (inval.lock is taken last). */
void inval_push(struct stellafs *sf, fuse_ino_t parent, const char *name, fuse_ino_t ino);
int inval_start(struct stellafs *sf);
void inval_stop(struct stellafs *sf);
/* Wait (at most 2 s) until every queued notification was delivered. */
void inval_wait(struct stellafs *sf);

/* ---- incoming.c: the watcher thread ---- */
/* A kit in incoming=DIR whose import failed for a reason not its own (the
 * store locked by another import, ENOSPC, EIO, ENOMEM) stays there and is
 * tried again, that kit alone, after this many seconds, doubled at each
 * such failure of it up to the maximum; at most INCOMING_RETRY_KITS are
 * remembered (the rest wait for the next mount's scan). */
#define INCOMING_RETRY_FIRST 5
#define INCOMING_RETRY_MAX 300
#define INCOMING_RETRY_KITS 256
/* The store's own changes by other processes, and the incoming directory
 * when there is one.  Store mode only; started after the fork. */
int incoming_start(struct stellafs *sf, struct stella_err *e);
void incoming_stop(struct stellafs *sf);

/* ---- fetch.c: reads of kits on mirrors ---- */
/* Fetch threads, and what may wait for them (docs/mirrors.md). */
#define FETCH_THREADS 8
#define FETCH_QUEUE_MAX 1024
/* At exit, fetches still stuck on a mirror are waited for this long. */
#define FETCH_STOP_WAIT_MS 1000
struct fetch_file;
struct fetch_counters { uint64_t queued, peak, served, timeouts, refused; };
/* An open file of a remote snapshot (takes f over), shared with its reads. */
struct fetch_file *fetch_file_new(struct stellafs *sf, struct snap_file *f);
void fetch_file_put(struct fetch_file *ff);
/* At exit, once fetch_stop returned true: the open files whose RELEASE
 * never came. */
void fetch_close_all(struct stellafs *sf);
/* Queue the read; it is answered from a fetch thread, by the deadline
 * (timeout=) at the latest, or EINTR when the kernel interrupts it. */
void fetch_read(struct stellafs *sf, fuse_req_t req, struct fetch_file *ff, size_t size, uint64_t off);
/* Its open file, for a read whose bytes are resident (served inline). */
struct snap_file *fetch_file_snap(struct fetch_file *ff);
void fetch_counters(struct stellafs *sf, struct fetch_counters *c);
int fetch_start(struct stellafs *sf);
/* Answer what waits, end the threads; false when some are still stuck
 * after FETCH_STOP_WAIT_MS (what they hold must then not be freed). */
bool fetch_stop(struct stellafs *sf);

/* ---- follow.c: store mode's follow=URL ---- */
int follow_start(struct stellafs *sf);
void follow_stop(struct stellafs *sf);
/* A copy of its state for status (zeroed when not following). */
void follow_state(struct stellafs *sf, struct sf_follow *out);

/* ---- control.c: the commands ---- */
/* Run the command lines in buf (cmd_lock: EBUSY when another runs);
 * returns 0 or a negative errno. */
int control_write(struct stellafs *sf, const struct writer *w, const char *buf, size_t len);
/* Import a kit into the store, as the control file and the incoming
 * watcher do (cmd_lock held by the caller).  The kit is opened with W's
 * credentials (NULL: the daemon's own, for incoming=DIR). */
int control_import(struct stellafs *sf, const char *path, const struct writer *w, bool activate, char *res, size_t rl);
/* The same for a kit on a mirror (follow=): fetched through
 * core/location.h (cmd_lock held by the caller). */
int control_import_location(struct stellafs *sf, const char *url, bool activate, char *res, size_t rl);

/* ---- journal.c: what the commands did ---- */
/* One line into the journal (escaped here: cmd and result hold untrusted
 * text); err is 0 or a positive errno. */
void journal_add(struct stellafs *sf, uid_t uid, const char *cmd, int err, const char *result);
/* The control file's content: the journal's text (malloc'ed). */
char *journal_text(struct stellafs *sf, size_t *len);

/* ---- vfiles.c: status, status.json, health, metrics, control ---- */
/* Their current content (malloc'ed) by inode. */
char *vfile_content(struct stellafs *sf, fuse_ino_t ino, size_t *len);

/* ---- tune.c: thread priorities ---- */
/* Set the calling thread's nice value; returns the one it had.  Control
 * commands and the invalidator run boosted: under readers that keep every
 * CPU busy, a switch should wait for the disk, not for a time slice. */
#define SF_BOOST_NICE (-10)
int tune_boost(int nice);
int tune_nice(void); /* the calling thread's nice value */
/* tune_boost without asking the old value: one system call, for a caller
 * that keeps track of its thread's nice itself (ops.c, worker_nice_set). */
int tune_set(int nice);
