/* Reads of kits on mirrors: the fetch threads, their queue and the
 * deadline of every read (docs/mirrors.md, "Time bounds").
 *
 * A read of a snapshot whose bytes come over the network may wait for a
 * mirror; a FUSE worker that waited with it could not answer lookup,
 * getattr, readdir, status, health or control, and with every worker so
 * held the mount would hang.  So ops.c hands such a read here and returns:
 * one of FETCH_THREADS threads of our own performs the verified read
 * (snapshot_read, as any read) and replies; libfuse lets a request be
 * answered from any thread.
 *
 * Every read has a deadline, timeout= after it arrived.  The watchdog
 * thread answers EIO to a read that is not answered by then, whether it
 * still waits in the queue or a fetch thread is stuck with it; the core
 * ends every network wait of that read by the same deadline
 * (snapshot_read_by: its data, tree blocks and retries on other mirrors
 * share it), so the thread comes back then and its late result is
 * dropped.  A read the kernel interrupts (the reader got a
 * signal) is answered EINTR at once and, if not started, never fetched.
 * Exactly one of the three (fetch thread, watchdog, interrupt) answers:
 * the first to set job->replied.
 *
 * Bounds: FETCH_THREADS threads, each with one reply buffer (at most the
 * kernel's max_read); at most FETCH_QUEUE_MAX reads queued or in flight,
 * about 100 bytes each.  The kernel itself keeps few reads outstanding per
 * reader (one per reading thread, plus max_background readahead), so the
 * bound is a guard; past it a read fails at once with EIO (logged).
 *
 * Once per caller: when a read fails, the kernel asks again at once for
 * the one page its reader wanted (the first request was its readahead),
 * and the reader would wait twice timeout=.  So a read that failed is
 * remembered for FETCH_FAILED_NS: the same process asking again for bytes
 * of it, on the same open file, gets EIO at once.
 *
 * Lock: sf->fetch.lock guards the job list and the counters; it is a leaf,
 * and no fuse_reply_* or fuse_req_* call is made under it (libfuse calls
 * the interrupt callback with the request's own lock held). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "stellafs.h"
#include "util.h"

/* An open file of a remote snapshot: shared by the reads in flight on it,
 * so that a RELEASE that comes while a stuck fetch still reads it (its
 * read was answered EIO at the deadline) frees it only when that ends. */
struct fetch_file {
	struct snap_file *f;
	atomic_uint refs;
	uint64_t id;         /* never reused (an address is, once freed) */
	struct sf_fetch *q;
	struct fetch_file *prev, *next;  /* q->files, under q->lock */
};

static atomic_uint_fast64_t next_file_id = 1;

/* A read handed to the fetch threads.  Its lifetime is reference-counted:
 * the interrupt callback (on_interrupt) may run on it until the request is
 * answered or the callback is cleared, and only the one that claimed the
 * request (set replied first) does either.  So:
 *   - the list holds one reference, put by whoever unlinks the job;
 *   - a claimer that answers after dropping q->lock (the watchdog,
 *     fetch_stop) takes one under the lock when it claims and puts it only
 *     after reply_claimed_err (callback cleared, request answered);
 *   - run_job claims and answers while it still holds the list's one;
 *   - on_interrupt, the claimer in the callback, answers there and touches
 *     nothing of the job after its claim; called back while fetch_read
 *     registers it, it only notes interrupted_early for fetch_read.
 * The job is freed by the last job_put. */
struct fetch_job {
	struct fetch_job *prev, *next;  /* sf->fetch: arrival order, which is deadline order */
	fuse_req_t req;
	pid_t pid;                      /* the caller's */
	struct fetch_file *ff;
	size_t size;
	uint64_t off;
	int64_t deadline;               /* CLOCK_MONOTONIC nanoseconds */
	bool running;                   /* under lock: a fetch thread has it */
	atomic_bool replied;            /* set by whoever answers */
	bool interrupted_early;         /* fetch_read's thread only, while registering */
	atomic_uint refs;               /* the rule above the struct */
};

static int64_t mono_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Open files are listed, so that those whose RELEASE never came (a close
 * just before umount: the kernel drops it with the connection) are closed
 * at exit (fetch_close_all), not leaked. */
struct fetch_file *fetch_file_new(struct stellafs *sf, struct snap_file *f)
{
	struct fetch_file *ff = malloc(sizeof(*ff));
	if (!ff)
		return NULL;
	ff->f = f;
	atomic_init(&ff->refs, 1);
	ff->id = atomic_fetch_add(&next_file_id, 1);
	ff->q = &sf->fetch;
	pthread_mutex_lock(&ff->q->lock);
	ff->prev = NULL;
	ff->next = ff->q->files;
	if (ff->next)
		ff->next->prev = ff;
	ff->q->files = ff;
	pthread_mutex_unlock(&ff->q->lock);
	return ff;
}

void fetch_file_put(struct fetch_file *ff)
{
	if (!ff || atomic_fetch_sub(&ff->refs, 1) != 1)
		return;
	pthread_mutex_lock(&ff->q->lock);
	if (ff->prev)
		ff->prev->next = ff->next;
	else
		ff->q->files = ff->next;
	if (ff->next)
		ff->next->prev = ff->prev;
	pthread_mutex_unlock(&ff->q->lock);
	snapshot_file_close(ff->f);
	free(ff);
}

void fetch_close_all(struct stellafs *sf)
{
	/* no request and no fetch is left: each listed file holds the
	 * open's reference only */
	while (sf->fetch.files)
		fetch_file_put(sf->fetch.files);
}

/* ---- the list (fetch.lock held) ---- */

static void job_link(struct sf_fetch *q, struct fetch_job *j)
{
	j->prev = q->tail;
	j->next = NULL;
	if (q->tail)
		q->tail->next = j;
	else
		q->head = j;
	q->tail = j;
	q->n++;
}

static void job_unlink(struct sf_fetch *q, struct fetch_job *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		q->head = j->next;
	if (j->next)
		j->next->prev = j->prev;
	else
		q->tail = j->prev;
	q->n--;
}

static void reply_claimed_err(fuse_req_t req, int err);

static void job_put(struct fetch_job *j)
{
	if (atomic_fetch_sub(&j->refs, 1) != 1)
		return;
	fetch_file_put(j->ff);
	free(j);
}

/* A claimer that answers after dropping q->lock keeps the job alive until
 * it has (q->lock held, so the job is still listed). */
static fuse_req_t job_claimed(struct fetch_job *j)
{
	atomic_fetch_add(&j->refs, 1);
	return j->req;
}

/* Answer the claimed jobs EIO, then drop the claimers' references. */
static void reply_claimed_all(struct fetch_job **claimed, size_t n)
{
	for (size_t i = 0; i < n; i++)
		reply_claimed_err(claimed[i]->req, EIO);
	for (size_t i = 0; i < n; i++)
		job_put(claimed[i]);
}

/* Answer req with err, as the one that claimed it: first take it away
 * from the interrupt callback (which libfuse runs under the request's
 * lock: this waits for one that is running, and none runs after). */
static void reply_claimed_err(fuse_req_t req, int err)
{
	fuse_req_interrupt_func(req, NULL, NULL);
	fuse_reply_err(req, err);
}

/* The job fetch_read is registering on this thread, if any. */
static __thread struct fetch_job *registering;

/* The kernel interrupted the read: answered at once.  Nothing of the job
 * is touched after it is claimed (another thread may free it then).
 * An interrupt that came before the callback was registered is called
 * back from inside fuse_req_interrupt_func, under the request's lock,
 * which libfuse unlocks after: a reply then would free the request (and
 * its lock) under libfuse's feet.  That case is only noted here, and
 * fetch_read answers it once the registration has returned. */
static void on_interrupt(fuse_req_t req, void *data)
{
	struct fetch_job *j = data;
	if (j == registering) {
		j->interrupted_early = true;
		return;
	}
	if (!atomic_exchange(&j->replied, true))
		fuse_reply_err(req, EINTR);
}

static void log_timeout(struct stellafs *sf, const struct fetch_job *j)
{
	/* one line per 10 s at most: a mirror that hangs times out every read */
	int64_t now = mono_now();
	if (now < sf->fetch.logged_at + 10)
		return;
	sf->fetch.logged_at = now;
	stella_log(LOG_WARNING, "%s: a read of %zu bytes at %llu was not served within %u s: EIO (%llu so far)",
		   sf->opt.source, j->size, (unsigned long long)j->off, sf->opt.timeout_ms / 1000,
		   (unsigned long long)sf->fetch.timeouts);
}

/* ---- once per caller (fetch.lock held) ---- */

static void failed_note(struct sf_fetch *q, const struct fetch_job *j, int64_t now)
{
	q->failed[q->failed_next++ % FETCH_FAILED_KEEP] =
		(struct fetch_failed){ .file = j->ff->id, .off = j->off, .end = j->off + j->size, .pid = j->pid, .at = now };
}

static bool failed_just_now(const struct sf_fetch *q, const struct fetch_job *j, int64_t now)
{
	for (unsigned i = 0; i < FETCH_FAILED_KEEP; i++) {
		const struct fetch_failed *f = &q->failed[i];
		if (f->file == j->ff->id && f->pid == j->pid && now - f->at < FETCH_FAILED_NS && j->off < f->end &&
		    f->off < j->off + j->size)
			return true;
	}
	return false;
}

/* ---- the fetch threads ---- */

static struct fetch_job *next_job(struct sf_fetch *q, struct fetch_job **reap)
{
	for (struct fetch_job *j = q->head, *nx; j; j = nx) {
		nx = j->next;
		if (j->running)
			continue;
		if (atomic_load(&j->replied)) {
			/* interrupted while queued: never fetched */
			job_unlink(q, j);
			j->next = *reap;
			*reap = j;
			continue;
		}
		return j;
	}
	return NULL;
}

static void reap_all(struct fetch_job *reap)
{
	while (reap) {
		struct fetch_job *nx = reap->next;
		job_put(reap);
		reap = nx;
	}
}

static void run_job(struct stellafs *sf, struct fetch_job *j)
{
	ssize_t n = -EIO;
	char *buf = NULL;
	if (!atomic_load(&j->replied)) {
		buf = thread_scratch(SCRATCH_REPLY, j->size);
		/* the watchdog answers at j->deadline: the fetch ends then too */
		n = buf ? snapshot_read_by(j->ff->f, buf, j->size, j->off, j->deadline / 1000000) : -ENOMEM;
	}
	pthread_mutex_lock(&sf->fetch.lock);
	bool mine = !atomic_exchange(&j->replied, true);
	fuse_req_t req = j->req;
	job_unlink(&sf->fetch, j);
	if (mine && n >= 0)
		sf->fetch.served++;
	if (mine && n < 0)
		failed_note(&sf->fetch, j, mono_ns());
	pthread_mutex_unlock(&sf->fetch.lock);
	if (mine) {
		fuse_req_interrupt_func(req, NULL, NULL);
		if (n < 0)
			fuse_reply_err(req, (int)-n);
		else
			fuse_reply_buf(req, buf, (size_t)n);
	}
	/* the list's reference: if another claimed the request, its own
	 * reference keeps the job until it has answered */
	job_put(j);
}

static void *fetch_main(void *arg)
{
	struct stellafs *sf = arg;
	struct sf_fetch *q = &sf->fetch;
	pthread_mutex_lock(&q->lock);
	while (!q->stop) {
		struct fetch_job *reap = NULL;
		struct fetch_job *j = next_job(q, &reap);
		if (j)
			j->running = true;
		else if (!reap)
			pthread_cond_wait(&q->work, &q->lock);
		pthread_mutex_unlock(&q->lock);
		reap_all(reap);
		if (j)
			run_job(sf, j);
		pthread_mutex_lock(&q->lock);
	}
	q->alive--;
	pthread_cond_broadcast(&q->gone);
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

/* ---- the watchdog: every read answered by its deadline ---- */

#define EXPIRE_BATCH 64

static void *watch_main(void *arg)
{
	struct stellafs *sf = arg;
	struct sf_fetch *q = &sf->fetch;
	/* answering EIO must not wait behind busy readers for a CPU */
	tune_boost(sf->opt.base_nice + SF_BOOST_NICE);
	pthread_mutex_lock(&q->lock);
	while (!q->stop) {
		struct fetch_job *late[EXPIRE_BATCH];
		size_t nlate = 0;
		struct fetch_job *reap = NULL;
		int64_t now = mono_ns(), next = 0;
		for (struct fetch_job *j = q->head, *nx; j && nlate < EXPIRE_BATCH; j = nx) {
			nx = j->next;
			if (atomic_load(&j->replied))
				continue;  /* a stuck fetch's, answered already */
			if (j->deadline > now) {
				next = j->deadline;
				break;     /* the rest came later: later deadlines */
			}
			atomic_store(&j->replied, true);
			job_claimed(j);
			late[nlate++] = j;
			failed_note(q, j, now);
			q->timeouts++;
			log_timeout(sf, j);
			if (!j->running) {
				job_unlink(q, j);
				j->next = reap;
				reap = j;
			}
		}
		if (nlate || reap) {
			pthread_mutex_unlock(&q->lock);
			reply_claimed_all(late, nlate);
			reap_all(reap);
			pthread_mutex_lock(&q->lock);
			continue;
		}
		if (next) {
			struct timespec t = { .tv_sec = next / 1000000000, .tv_nsec = next % 1000000000 };
			pthread_cond_timedwait(&q->wake, &q->lock, &t);
		} else {
			pthread_cond_wait(&q->wake, &q->lock);
		}
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

/* ---- the API ---- */

void fetch_read(struct stellafs *sf, fuse_req_t req, struct fetch_file *ff, size_t size, uint64_t off)
{
	struct sf_fetch *q = &sf->fetch;
	struct fetch_job *j = calloc(1, sizeof(*j));
	if (!j) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	j->req = req;
	j->ff = ff;
	j->size = size;
	j->off = off;
	j->pid = fuse_req_ctx(req)->pid;
	int64_t now = mono_ns();
	j->deadline = now + (int64_t)sf->opt.timeout_ms * 1000000;
	atomic_init(&j->replied, false);
	atomic_init(&j->refs, 1); /* the list's, or this function's if not listed */
	atomic_fetch_add(&ff->refs, 1);
	/* The file's tree blocks for this read start coming now, beside the
	 * data the fetch thread will ask for, not after it (issue 15: a
	 * first read deep in a file paid two round trips in a row). */
	snapshot_prefetch(ff->f, size, off);
	/* Before the job is visible to a thread that could answer it and
	 * free it: an interrupt already pending calls back right here. */
	registering = j;
	fuse_req_interrupt_func(req, on_interrupt, j);
	registering = NULL;
	if (j->interrupted_early) {
		atomic_store(&j->replied, true); /* nobody else has seen j */
		reply_claimed_err(req, EINTR);
		job_put(j);
		return;
	}
	pthread_mutex_lock(&q->lock);
	bool again = failed_just_now(q, j, now);
	bool full = q->n >= FETCH_QUEUE_MAX || q->stop || again;
	if (!full && !atomic_load(&j->replied)) {
		job_link(q, j);
		if (q->n > q->peak)
			q->peak = q->n;
		pthread_cond_signal(&q->work);
		/* always: the watchdog may sleep without a deadline while the
		 * list holds only reads answered already (stuck fetches') */
		pthread_cond_signal(&q->wake);
		j = NULL;
	} else if (full && !again) {
		q->refused++;
	}
	pthread_mutex_unlock(&q->lock);
	if (!j)
		return;
	/* not queued: refused, or answered EINTR by the callback already
	 * (then req is gone: not touched) */
	if (full && !atomic_exchange(&j->replied, true)) {
		if (!again)
			stella_log(LOG_WARNING, "%s: %d reads already wait for mirrors: EIO", sf->opt.source,
				   FETCH_QUEUE_MAX);
		reply_claimed_err(req, EIO);
	}
	job_put(j);
}

void fetch_counters(struct stellafs *sf, struct fetch_counters *c)
{
	pthread_mutex_lock(&sf->fetch.lock);
	*c = (struct fetch_counters){ .queued = sf->fetch.n, .peak = sf->fetch.peak, .served = sf->fetch.served,
				      .timeouts = sf->fetch.timeouts, .refused = sf->fetch.refused };
	pthread_mutex_unlock(&sf->fetch.lock);
}

int fetch_start(struct stellafs *sf)
{
	struct sf_fetch *q = &sf->fetch;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&q->work, NULL);
	pthread_cond_init(&q->gone, NULL);
	q->started = true;
	int r = pthread_create(&q->watchdog, NULL, watch_main, sf);
	if (r)
		return -r;
	q->watchdog_running = true;
	for (unsigned i = 0; i < FETCH_THREADS; i++) {
		pthread_t t;
		if ((r = pthread_create(&t, NULL, fetch_main, sf)) != 0)
			return q->alive ? 0 : -r; /* fewer threads still serve */
		pthread_detach(t); /* ended by fetch_stop, waited for through alive */
		pthread_mutex_lock(&q->lock);
		q->alive++;
		pthread_mutex_unlock(&q->lock);
	}
	return 0;
}

bool fetch_stop(struct stellafs *sf)
{
	struct sf_fetch *q = &sf->fetch;
	if (!q->started)
		return true;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	pthread_cond_broadcast(&q->work);
	pthread_cond_broadcast(&q->wake);
	/* every read not answered yet: EIO now (the kernel has most likely
	 * dropped them with the connection already), in batches */
	for (;;) {
		struct fetch_job *left[EXPIRE_BATCH];
		size_t nleft = 0;
		struct fetch_job *reap = NULL;
		for (struct fetch_job *j = q->head, *nx; j && nleft < EXPIRE_BATCH; j = nx) {
			nx = j->next;
			if (!atomic_exchange(&j->replied, true)) {
				job_claimed(j);
				left[nleft++] = j;
			}
			if (!j->running) {
				job_unlink(q, j);
				j->next = reap;
				reap = j;
			}
		}
		if (!nleft && !reap)
			break;
		pthread_mutex_unlock(&q->lock);
		reply_claimed_all(left, nleft);
		reap_all(reap);
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	if (q->watchdog_running)
		pthread_join(q->watchdog, NULL);
	q->watchdog_running = false;
	/* The fetch threads end after the read they are in; one stuck on a
	 * mirror comes back within timeout=, but the exit does not wait for
	 * it beyond FETCH_STOP_WAIT_MS. */
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	int64_t ns = t.tv_nsec + (int64_t)FETCH_STOP_WAIT_MS * 1000000;
	t.tv_sec += ns / 1000000000;
	t.tv_nsec = ns % 1000000000;
	pthread_mutex_lock(&q->lock);
	while (q->alive && pthread_cond_timedwait(&q->gone, &q->lock, &t) != ETIMEDOUT)
		;
	bool done = q->alive == 0;
	pthread_mutex_unlock(&q->lock);
	if (!done)
		stella_log(LOG_WARNING, "%s: %u fetch(es) still wait for a mirror at exit: not waited for",
			   sf->opt.source, q->alive);
	return done;
}

struct snap_file *fetch_file_snap(struct fetch_file *ff)
{
	return ff->f;
}
