/* Telling the kernel: the notification queue and its thread.
 *
 * The kernel caches current's target, the snapshot entries and everything
 * below them for a long time (SNAP_TIMEOUT in ops.c); when current moves or
 * a snapshot goes, it must forget.  A notification must never be sent from
 * a request handler: the kernel holds the directory's lock for the lookup
 * being served and the notification waits for that same lock (a deadlock
 * the switch storm test found).  So handlers queue, and one thread of our
 * own sends.  A command waits for its notifications to be delivered before
 * it returns: when `echo activate` returns, the next lookup sees the switch. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stellafs.h"

void inval_push(struct stellafs *sf, fuse_ino_t parent, const char *name, fuse_ino_t ino)
{
	pthread_mutex_lock(&sf->inval_lock);
	/* Grown, not bounded: each removed version needs its own entry
	 * notification (forgetting snapshots/'s pages does not drop its
	 * children's dentries, cached for a day). */
	if (sf->ninval == sf->inval_cap) {
		size_t cap = sf->inval_cap ? 2 * sf->inval_cap : 16;
		struct inval *p = realloc(sf->inval, cap * sizeof(*p));
		if (p) {
			sf->inval = p;
			sf->inval_cap = cap;
		}
	}
	if (sf->ninval < sf->inval_cap) {
		struct inval *q = &sf->inval[sf->ninval++];
		q->parent = parent;
		q->ino = ino;
		snprintf(q->name, sizeof(q->name), "%s", name ? name : "");
	} else {
		/* out of memory: forget what is left to forget without a name,
		 * current's target and snapshots/ (not its children's entries) */
		sf->inval_overflow = true;
	}
	sf->inval_queued++;
	pthread_cond_broadcast(&sf->inval_cond);
	pthread_mutex_unlock(&sf->inval_lock);
}

static void *inval_main(void *arg)
{
	struct stellafs *sf = arg;
	/* A switch returns once this thread told the kernel: it must not wait
	 * behind the readers' threads for a CPU. */
	sf_boost(sf->base_nice + SF_BOOST_NICE);
	pthread_mutex_lock(&sf->inval_lock);
	while (!sf->inval_stop) {
		if (sf->ninval == 0 && !sf->inval_overflow) {
			pthread_cond_wait(&sf->inval_cond, &sf->inval_lock);
			continue;
		}
		struct inval *q = sf->inval; /* ours now; the next push starts a new one */
		size_t n = sf->ninval;
		bool all = sf->inval_overflow;
		uint64_t upto = sf->inval_queued;
		sf->inval = NULL;
		sf->ninval = sf->inval_cap = 0;
		sf->inval_overflow = false;
		pthread_mutex_unlock(&sf->inval_lock);
		for (size_t i = 0; sf->se && i < n; i++) {
			if (q[i].ino)
				fuse_lowlevel_notify_inval_inode(sf->se, q[i].ino, 0, 0);
			else
				fuse_lowlevel_notify_inval_entry(sf->se, q[i].parent, q[i].name, strlen(q[i].name));
		}
		if (all && sf->se) {
			fuse_lowlevel_notify_inval_inode(sf->se, INO_CURRENT, 0, 0);
			fuse_lowlevel_notify_inval_inode(sf->se, INO_SNAPSHOTS, 0, 0);
		}
		free(q);
		pthread_mutex_lock(&sf->inval_lock);
		sf->inval_done = upto;
		pthread_cond_broadcast(&sf->inval_cond);
	}
	pthread_mutex_unlock(&sf->inval_lock);
	return NULL;
}

int sf_start_inval(struct stellafs *sf)
{
	if (pthread_create(&sf->inval_thread, NULL, inval_main, sf) != 0)
		return -EAGAIN;
	sf->inval_running = true;
	return 0;
}

void sf_stop_inval(struct stellafs *sf)
{
	if (!sf->inval_running)
		goto out;
	pthread_mutex_lock(&sf->inval_lock);
	sf->inval_stop = true;
	pthread_cond_broadcast(&sf->inval_cond);
	pthread_mutex_unlock(&sf->inval_lock);
	pthread_join(sf->inval_thread, NULL);
	sf->inval_running = false;
out:
	free(sf->inval); /* what nobody was left to send */
	sf->inval = NULL;
	sf->ninval = sf->inval_cap = 0;
}

void sf_inval_wait(struct stellafs *sf)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2; /* never hang a command on the kernel */
	pthread_mutex_lock(&sf->inval_lock);
	uint64_t want = sf->inval_queued;
	while (sf->inval_running && sf->inval_done < want &&
	       pthread_cond_timedwait(&sf->inval_cond, &sf->inval_lock, &until) == 0)
		;
	pthread_mutex_unlock(&sf->inval_lock);
}

void sf_switched(struct stellafs *sf)
{
	atomic_fetch_add(&sf->switches, 1);
	inval_push(sf, 0, NULL, INO_CURRENT); /* its cached target */
}
