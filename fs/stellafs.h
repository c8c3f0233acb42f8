/* The daemon's shared state and the pieces of fs/: main.c (options, mount,
 * daemon), ops.c (FUSE requests mapped onto core/snapshot), state.c (the
 * snapshots being served and the current one, in both modes; the store's
 * incoming directory), control.c (the virtual files: status, health,
 * metrics, control and its commands). */
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
	/* options */
	char *source;
	const char *mountpoint;
	atomic_bool readahead_done;
	char *trust_path;
	char *cache_dir;
	char *incoming;
	struct incoming_retry *retry; /* kits to try again (watcher thread only) */
	size_t nretry;
	bool auto_activate;
	unsigned threshold;
	int64_t fixed_now;         /* now= for tests and replays; 0: the clock */
	bool allow_expired;
	bool has_admin_gid;
	gid_t admin_gid;
	int64_t mounted_at;
	int base_nice;            /* the daemon's nice at start: boosts are relative to it */
	struct fuse_session *se;

	struct store *store;       /* store mode; NULL in direct mode */
	int64_t store_version;     /* store.db's data_version last seen */
	bool store_dirty;          /* we changed it ourselves: re-read */
	pthread_mutex_t refresh_lock;

	/* lock guards the slot table, the pointers, trust and the journal */
	pthread_mutex_t lock;
	struct vbuf *vbufs;       /* open virtual files' contents (ops.c), under lock */
	struct slot *slots;
	size_t nslots;
	uint64_t next_slot;
	char current[129];         /* version, "" when none */
	struct trust *trust;
	/* sf->trust is read outside commands (the refresh's checks) under
	 * its read lock; reload swaps it under the write lock */
	pthread_rwlock_t trust_lock;
	struct refusal *refused;   /* store mode, under lock: rebuilt by each refresh */
	size_t nrefused;
	bool trust_ok;
	char trust_detail[256];
	unsigned signers;
	atomic_uint_fast64_t switches;
	pthread_mutex_t cmd_lock;  /* one control command at a time */
	struct journal_entry journal[JOURNAL_LEN];
	unsigned journal_next, journal_n;
	pthread_t watch_thread;
	bool watch_running;
	atomic_bool watch_quit;
	bool store_incomplete;      /* a listed snapshot failed to open ... */
	int64_t store_retry_at;     /* ... and is retried from then (CLOCK_MONOTONIC s) */     /* sf_stop_watch asked it to end */
	int watch_stop[2];         /* a pipe: written to stop the watcher */

	/* kernel notifications, sent by their own thread (state.c) */
	pthread_mutex_t inval_lock;
	pthread_cond_t inval_cond;
	struct inval *inval;      /* queued notifications, grown as needed */
	size_t ninval, inval_cap;
	bool inval_overflow, inval_stop, inval_running;
	uint64_t inval_queued, inval_done;
	pthread_t inval_thread;
	atomic_uint_fast64_t control_lookups;  /* see ops.c: one inode per open of control */
};

extern const struct fuse_lowlevel_ops stellafs_ops;

/* The time expiry and freshness are judged at: now=, else the clock. */
static inline int64_t sf_now(const struct stellafs *sf)
{
	return sf->fixed_now ? sf->fixed_now : (int64_t)time(NULL);
}

/* CLOCK_MONOTONIC seconds, for retries and backoffs. */
static inline int64_t mono_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec;
}
/* state.c */
/* Take a reference to the snapshot in slot (NULL if none). */
struct snapshot *sf_snapshot(struct stellafs *sf, uint64_t slot);
/* The current snapshot and its slot (NULL if none). */
struct snapshot *sf_current(struct stellafs *sf, uint64_t *slot);
/* The snapshot named version, and its slot. */
struct snapshot *sf_by_version(struct stellafs *sf, const char *version, uint64_t *slot);
/* Every served version with its slot, in sequence order (malloc'ed). */
size_t sf_list(struct stellafs *sf, struct slot **out);
/* At exit: the contents of virtual files whose RELEASE never came. */
void sf_free_vbufs(struct stellafs *sf);
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
/* inval.c */
/* Queue a notification: inval_entry(parent, name), or with ino set
 * inval_inode(ino).  Safe under sf->lock (inval_lock is taken last). */
void inval_push(struct stellafs *sf, fuse_ino_t parent, const char *name, fuse_ino_t ino);
/* After the current snapshot changed: tell the kernel (queued). */
void sf_switched(struct stellafs *sf);
int sf_start_inval(struct stellafs *sf);
void sf_stop_inval(struct stellafs *sf);
/* Wait (at most 2 s) until every queued notification was delivered. */
void sf_inval_wait(struct stellafs *sf);
/* Set the calling thread's nice value; returns the one it had.  Control
 * commands and the invalidator run boosted: under readers that keep every
 * CPU busy, a switch should wait for the disk, not for a time slice. */
#define SF_BOOST_NICE (-10)
int sf_boost(int nice);
int sf_nice(void); /* the calling thread's nice value */
/* Widen the kernel's readahead on our mount, once, at the first open of a
 * file (after the kernel applied our INIT reply, which would undo it): the
 * mount's bdi starts at 128 KiB, so a sequential reader's requests were
 * 128 KiB each and one or two in flight.  With 4 MiB, requests are as
 * large as FUSE allows and several are hashed at once while the medium
 * reads ahead (cold sequential read: about 1.4x on the test machine).
 * Not for gzip kits (their cursors prefer fewer requests in flight).
 * Best effort: root only, silent otherwise. */
#define SF_READAHEAD_KIB 4096

/* A kit in incoming=DIR whose import failed for a reason not its own (the
 * store locked by another import, ENOSPC, EIO, ENOMEM) stays there and is
 * tried again, that kit alone, after this many seconds, doubled at each
 * such failure of it up to the maximum; at most INCOMING_RETRY_KITS are
 * remembered (the rest wait for the next mount's scan). */
#define INCOMING_RETRY_FIRST 5
#define INCOMING_RETRY_MAX 300
#define INCOMING_RETRY_KITS 256
void sf_readahead(struct stellafs *sf);
void sf_free_slots(struct stellafs *sf);
/* The watcher thread: the store's own changes by other processes, and the
 * incoming directory when there is one. */
int sf_start_watch(struct stellafs *sf, struct stella_err *e);
void sf_stop_watch(struct stellafs *sf);
/* Import a kit into the store, as the control file and the incoming
 * watcher do (cmd_lock held by the caller).  The kit is opened with W's
 * credentials (NULL: the daemon's own, for incoming=DIR). */
int sf_import(struct stellafs *sf, const char *path, const struct writer *w, bool activate, char *res, size_t rl);

/* Virtual files: their current content (malloc'ed) by inode. */
char *vfile_content(struct stellafs *sf, fuse_ino_t ino, size_t *len);
/* Run the command lines in buf; returns 0 or a negative errno. */
int control_write(struct stellafs *sf, const struct writer *w, const char *buf, size_t len);
bool control_allowed(struct stellafs *sf, fuse_req_t req);
/* journal.c */
/* One line into the journal (escaped here: cmd and result hold untrusted
 * text); err is 0 or a positive errno. */
void journal_add(struct stellafs *sf, uid_t uid, const char *cmd, int err, const char *result);
/* The control file's content: the journal's text (malloc'ed). */
char *journal_text(struct stellafs *sf, size_t *len);
