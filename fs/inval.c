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
	pthread_mutex_lock(&sf->inval.lock);
	/* Grown, not bounded: each removed version needs its own entry
	 * notification (forgetting snapshots/'s pages does not drop its
	 * children's dentries, cached for a day). */
	if (sf->inval.n == sf->inval.cap) {
		size_t cap = sf->inval.cap ? 2 * sf->inval.cap : 16;
		struct inval *p = realloc(sf->inval.q, cap * sizeof(*p));
		if (p) {
			sf->inval.q = p;
			sf->inval.cap = cap;
		}
	}
	if (sf->inval.n < sf->inval.cap) {
		struct inval *q = &sf->inval.q[sf->inval.n++];
		q->parent = parent;
		q->ino = ino;
		snprintf(q->name, sizeof(q->name), "%s", name ? name : "");
	} else {
		/* out of memory: forget what is left to forget without a name,
		 * current's target and snapshots/ (not its children's entries) */
		sf->inval.overflow = true;
	}
	sf->inval.queued++;
	pthread_cond_broadcast(&sf->inval.cond);
	pthread_mutex_unlock(&sf->inval.lock);
}

static void *inval_main(void *arg)
{
	struct stellafs *sf = arg;
	/* A switch returns once this thread told the kernel: it must not wait
	 * behind the readers' threads for a CPU. */
	tune_boost(sf->opt.base_nice + SF_BOOST_NICE);
	pthread_mutex_lock(&sf->inval.lock);
	while (!sf->inval.stop) {
		if (sf->inval.n == 0 && !sf->inval.overflow) {
			pthread_cond_wait(&sf->inval.cond, &sf->inval.lock);
			continue;
		}
		struct inval *q = sf->inval.q; /* ours now; the next push starts a new one */
		size_t n = sf->inval.n;
		bool all = sf->inval.overflow;
		uint64_t upto = sf->inval.queued;
		sf->inval.q = NULL;
		sf->inval.n = sf->inval.cap = 0;
		sf->inval.overflow = false;
		pthread_mutex_unlock(&sf->inval.lock);
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
		pthread_mutex_lock(&sf->inval.lock);
		sf->inval.done = upto;
		pthread_cond_broadcast(&sf->inval.cond);
	}
	pthread_mutex_unlock(&sf->inval.lock);
	return NULL;
}

int inval_start(struct stellafs *sf)
{
	if (pthread_create(&sf->inval.thread, NULL, inval_main, sf) != 0)
		return -EAGAIN;
	sf->inval.running = true;
	return 0;
}

void inval_stop(struct stellafs *sf)
{
	if (sf->inval.running) {
		pthread_mutex_lock(&sf->inval.lock);
		sf->inval.stop = true;
		pthread_cond_broadcast(&sf->inval.cond);
		pthread_mutex_unlock(&sf->inval.lock);
		pthread_join(sf->inval.thread, NULL);
		sf->inval.running = false;
	}
	free(sf->inval.q); /* what nobody was left to send */
	sf->inval.q = NULL;
	sf->inval.n = sf->inval.cap = 0;
}

void inval_wait(struct stellafs *sf)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2; /* never hang a command on the kernel */
	pthread_mutex_lock(&sf->inval.lock);
	uint64_t want = sf->inval.queued;
	while (sf->inval.running && sf->inval.done < want &&
	       pthread_cond_timedwait(&sf->inval.cond, &sf->inval.lock, &until) == 0)
		;
	pthread_mutex_unlock(&sf->inval.lock);
}
