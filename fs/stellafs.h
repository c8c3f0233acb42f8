/* The daemon's shared state and the pieces of fs/: main.c (options, mount,
 * daemon), ops.c (FUSE requests mapped onto core/snapshot), control.c (the
 * virtual files: status, health, metrics, control and its commands). */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "health.h"
#include "sig.h"
#include "snapshot.h"

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

#define JOURNAL_LEN 32

struct journal_entry {
	int64_t when;
	uid_t uid;
	char cmd[256];
	int err;               /* 0 or a positive errno */
	char result[512];
};

struct stellafs {
	/* options */
	char *source;
	char *trust_path;
	char *cache_dir;
	unsigned threshold;
	int64_t fixed_now;         /* now= for tests and replays; 0: the clock */
	bool allow_expired;
	bool has_admin_gid;
	gid_t admin_gid;
	int64_t mounted_at;

	/* state: lock guards current, trust and journal */
	pthread_mutex_t lock;
	struct snapshot *current;  /* the one snapshot of direct mode */
	struct trust *trust;
	bool trust_ok;
	char trust_detail[256];
	unsigned signers;
	atomic_uint_fast64_t switches;
	pthread_mutex_t cmd_lock;  /* one control command at a time */
	struct journal_entry journal[JOURNAL_LEN];
	unsigned journal_next, journal_n;
};

extern const struct fuse_lowlevel_ops stellafs_ops;

int64_t sf_now(struct stellafs *sf);
/* Take a reference to the snapshot in slot (NULL if none). */
struct snapshot *sf_snapshot(struct stellafs *sf, uint64_t slot);

/* Virtual files: their current content (malloc'ed) by inode. */
char *vfile_content(struct stellafs *sf, fuse_ino_t ino, size_t *len);
/* Run the command lines in buf; returns 0 or a negative errno. */
int control_write(struct stellafs *sf, uid_t uid, const char *buf, size_t len);
bool control_allowed(struct stellafs *sf, fuse_req_t req);
