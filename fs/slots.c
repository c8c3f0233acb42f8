/* Which snapshots the mount serves and which one is current.
 *
 * Direct mode serves one snapshot for the mount's life.  Store mode mirrors
 * the store: store.db is the truth (stellakit import may change it while
 * mounted), and the table here follows it whenever its data_version moves.
 * Switching current is one pointer change under the lock; readers that have
 * a file open keep the snapshot they opened through their own reference. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "fdcache.h"
#include "stellafs.h"
#include "storecheck.h"
#include "util.h"

static struct slot *find_version(struct stellafs *sf, const char *version)
{
	for (size_t i = 0; i < sf->tab.nslots; i++)
		if (!strcmp(sf->tab.slots[i].version, version))
			return &sf->tab.slots[i];
	return NULL;
}

/* The slot serving the store's row for a version: the same name is not
 * enough, a version removed and imported again between two refreshes is
 * another kit (its old blobs may be gone). */
static bool slot_is_row(const struct slot *sl, const struct store_snapshot *row)
{
	char hex[65];
	hex_encode(sl->s->manifest_sha256, 32, hex);
	return !strcmp(sl->version, row->version) && !strcmp(hex, row->manifest_sha256);
}

static struct slot *find_row(struct stellafs *sf, const struct store_snapshot *row)
{
	for (size_t i = 0; i < sf->tab.nslots; i++)
		if (slot_is_row(&sf->tab.slots[i], row))
			return &sf->tab.slots[i];
	return NULL;
}

/* sf_list's promise, which gc relies on: oldest (lowest sequence) first. */
static int slot_seq_cmp(const void *a, const void *b)
{
	const struct slot *x = a, *y = b;
	if (x->sequence != y->sequence)
		return x->sequence < y->sequence ? -1 : 1;
	return strcmp(x->version, y->version);
}

struct snapshot *sf_snapshot(struct stellafs *sf, uint64_t id)
{
	struct snapshot *s = NULL;
	pthread_mutex_lock(&sf->lock);
	for (size_t i = 0; i < sf->tab.nslots; i++)
		if (sf->tab.slots[i].id == id) {
			s = snapshot_ref(sf->tab.slots[i].s);
			break;
		}
	pthread_mutex_unlock(&sf->lock);
	return s;
}

struct snapshot *sf_by_version(struct stellafs *sf, const char *version, uint64_t *id)
{
	struct snapshot *s = NULL;
	pthread_mutex_lock(&sf->lock);
	struct slot *sl = find_version(sf, version);
	if (sl) {
		s = snapshot_ref(sl->s);
		*id = sl->id;
	}
	pthread_mutex_unlock(&sf->lock);
	return s;
}

struct snapshot *sf_current(struct stellafs *sf, uint64_t *id)
{
	struct snapshot *s = NULL;
	pthread_mutex_lock(&sf->lock);
	struct slot *sl = *sf->tab.current ? find_version(sf, sf->tab.current) : NULL;
	if (sl) {
		s = snapshot_ref(sl->s);
		if (id)
			*id = sl->id;
	}
	pthread_mutex_unlock(&sf->lock);
	return s;
}

size_t sf_list(struct stellafs *sf, struct slot **out)
{
	pthread_mutex_lock(&sf->lock);
	size_t n = sf->tab.nslots;
	*out = n ? malloc(n * sizeof(**out)) : NULL;
	if (*out)
		memcpy(*out, sf->tab.slots, n * sizeof(**out));
	else
		n = 0;
	pthread_mutex_unlock(&sf->lock);
	return n; /* the copies' snapshot pointers are for reading names only */
}

static int add_slot(struct stellafs *sf, const char *version, int64_t sequence, struct snapshot *s)
{
	struct slot *p = realloc(sf->tab.slots, (sf->tab.nslots + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	sf->tab.slots = p;
	struct slot *sl = &p[sf->tab.nslots++];
	memset(sl, 0, sizeof(*sl));
	sl->id = ++sf->tab.next_slot;
	snprintf(sl->version, sizeof(sl->version), "%s", version);
	sl->sequence = sequence;
	sl->s = s;
	return 0;
}

int sf_add_direct(struct stellafs *sf, struct snapshot *s)
{
	pthread_mutex_lock(&sf->lock);
	int r = add_slot(sf, s->version, s->identity->sequence, s);
	if (r == 0)
		snprintf(sf->tab.current, sizeof(sf->tab.current), "%s", s->version);
	pthread_mutex_unlock(&sf->lock);
	return r;
}

void sf_free_slots(struct stellafs *sf)
{
	for (size_t i = 0; i < sf->tab.nslots; i++)
		snapshot_unref(sf->tab.slots[i].s);
	free(sf->tab.slots);
	sf->tab.slots = NULL;
	sf->tab.nslots = 0;
	free(sf->tab.refused);
	sf->tab.refused = NULL;
	sf->tab.nrefused = 0;
}

bool sf_refused(struct stellafs *sf, const char *version, struct refusal *out)
{
	bool found = false;
	pthread_mutex_lock(&sf->lock);
	for (size_t i = 0; i < sf->tab.nrefused && !found; i++)
		if (!strcmp(sf->tab.refused[i].version, version)) {
			*out = sf->tab.refused[i];
			found = true;
		}
	pthread_mutex_unlock(&sf->lock);
	return found;
}

/* After the current snapshot changed: tell the kernel (queued). */
static void tell_switched(struct stellafs *sf)
{
	atomic_fetch_add(&sf->tab.switches, 1);
	inval_push(sf, 0, NULL, INO_CURRENT); /* its cached target */
}

/* Open a row's snapshot for serving, checked against its kept signed
 * manifest under the mount's trust (trust_lock held).  Returns true when
 * it is refused (*ref filled, logged); false with *out open, or NULL
 * after a failure of the moment (retried). */
static bool open_checked(struct stellafs *sf, const struct store_snapshot *row, struct snapshot **out,
			 struct refusal *ref)
{
	struct stella_err oe = { 0 };
	struct storecheck c;
	*out = NULL;
	int r = storecheck_open(sf->store, row->version, sf->trust.keys, sf->opt.threshold, sf->opt.cache_dir, out, &c, &oe);
	if (r == 0 && !c.trusted) {
		snapshot_unref(*out);
		*out = NULL;
		r = -EKEYREJECTED;
		snprintf(ref->why, sizeof(ref->why), "not enough trusted signatures under %s: %s", sf->opt.trust_path, c.why);
	} else if (r < 0 && c.forged) {
		snprintf(ref->why, sizeof(ref->why), "%s", stella_err_text(&oe, r));
	} else if (r < 0) {
		stella_log(LOG_ERR, "store %s: snapshot %s: %s", sf->opt.source, row->version, stella_err_text(&oe, r));
		return false;
	}
	if (r == 0)
		return false;
	snprintf(ref->version, sizeof(ref->version), "%s", row->version);
	ref->err = r;
	/* never served: a forged or damaged index, no kept manifest, or a
	 * manifest no (or too few) trusted keys sign */
	stella_log(LOG_ERR, "store %s: snapshot %s refused, not served: %s%s", sf->opt.source, row->version, ref->why,
		   r == -EBADMSG ? " (stellakit import --repair with its kit rebuilds it: docs/runbook.md)" : "");
	return true;
}

size_t sf_retrust(struct stellafs *sf)
{
	struct slot *slots = NULL;
	size_t n = sf_list(sf, &slots), dropped = 0;
	for (size_t i = 0; i < n; i++) {
		struct snapshot *s = sf_snapshot(sf, slots[i].id);
		if (!s)
			continue;
		struct storecheck c;
		struct stella_err e = { 0 };
		int r = storecheck_signatures(sf->store, s, sf->trust.keys, sf->opt.threshold, &c, &e);
		if (r < 0 && !c.forged) {
			/* no verdict (memory): it stays as it was judged */
			stella_log(LOG_ERR, "store %s: snapshot %s: %s", sf->opt.source, s->version, stella_err_text(&e, r));
			snapshot_unref(s);
			continue;
		}
		pthread_mutex_lock(&sf->lock);
		for (size_t j = 0; j < sf->tab.nslots; j++) {
			if (sf->tab.slots[j].id != slots[i].id)
				continue;
			if (r == 0 && c.trusted) {
				s->signers = c.signers; /* read under the lock too */
				break;
			}
			/* the next refresh finds its row unserved, and refuses it
			 * again with the reason */
			inval_push(sf, INO_SNAPSHOTS, sf->tab.slots[j].version, 0);
			snapshot_unref(sf->tab.slots[j].s);
			sf->tab.slots[j] = sf->tab.slots[--sf->tab.nslots];
			dropped++;
			break;
		}
		if (sf->tab.nslots > 1)
			qsort(sf->tab.slots, sf->tab.nslots, sizeof(*sf->tab.slots), slot_seq_cmp);
		pthread_mutex_unlock(&sf->lock);
		snapshot_unref(s);
	}
	free(slots);
	return dropped;
}

/* One refresh's reading of the store, owned by sf_refresh. */
struct refresh {
	int64_t version;            /* store.db's data_version when read */
	int64_t now;
	struct store_snapshot *list;
	size_t n;
	char cur[129];
	struct snapshot **opened;   /* [n]: the rows newly opened */
	struct refusal *refused;    /* the rows refused, nrefused of them */
	size_t nrefused;
	bool complete;              /* every listed snapshot is open */
};

/* Whether the store moved since the last refresh (sf->lock). */
static bool refresh_needed(struct stellafs *sf, struct refresh *rf)
{
	rf->version = store_data_version(sf->store);
	pthread_mutex_lock(&sf->lock);
	rf->now = mono_now();
	/* a snapshot that did not open is retried after 10 s (store_retry_at),
	 * not at every tick and lookup */
	bool retry = sf->tab.store_incomplete && rf->now >= sf->tab.store_retry_at;
	bool same = rf->version == sf->tab.store_version && rf->version >= 0 && !sf->tab.store_dirty && !retry;
	sf->tab.store_dirty = false;
	pthread_mutex_unlock(&sf->lock);
	return !same;
}

/* Open the rows the table does not serve yet, outside the lock (an index
 * open reads files), each checked under the trust read lock. */
static void refresh_open_new(struct stellafs *sf, struct refresh *rf)
{
	size_t n = rf->n;
	rf->complete = true;
	rf->opened = n ? calloc(n, sizeof(*rf->opened)) : NULL;
	rf->refused = n ? calloc(n, sizeof(*rf->refused)) : NULL;
	if (n && (!rf->opened || !rf->refused))
		rf->complete = false;
	pthread_rwlock_rdlock(&sf->trust_lock);
	for (size_t i = 0; i < n && rf->opened && rf->refused; i++) {
		pthread_mutex_lock(&sf->lock);
		bool known = find_row(sf, &rf->list[i]) != NULL;
		pthread_mutex_unlock(&sf->lock);
		if (!known && open_checked(sf, &rf->list[i], &rf->opened[i], &rf->refused[rf->nrefused]))
			rf->nrefused++;
		else if (!known && !rf->opened[i])
			rf->complete = false;
	}
	pthread_rwlock_unlock(&sf->trust_lock);
}

/* Make the table what the store listed (sf->lock held); returns whether
 * current moved. */
static bool refresh_publish(struct stellafs *sf, struct refresh *rf)
{
	struct slot_table *tab = &sf->tab;
	/* drop what the store no longer has */
	size_t k = 0;
	for (size_t i = 0; i < tab->nslots; i++) {
		bool listed = false;
		for (size_t j = 0; j < rf->n && !listed; j++)
			listed = slot_is_row(&tab->slots[i], &rf->list[j]);
		if (listed) {
			tab->slots[k++] = tab->slots[i];
		} else {
			inval_push(sf, INO_SNAPSHOTS, tab->slots[i].version, 0);
			snapshot_unref(tab->slots[i].s);
		}
	}
	tab->nslots = k;
	for (size_t i = 0; i < rf->n; i++)
		if (rf->opened && rf->opened[i]) {
			if (add_slot(sf, rf->list[i].version, rf->list[i].sequence, rf->opened[i]) < 0) {
				snapshot_unref(rf->opened[i]);
				rf->complete = false;
			}
			rf->opened[i] = NULL;
		}
	if (tab->nslots > 1)
		qsort(tab->slots, tab->nslots, sizeof(*tab->slots), slot_seq_cmp);
	if (rf->refused || !rf->n) {
		free(tab->refused);
		tab->refused = rf->refused;
		tab->nrefused = rf->nrefused;
		rf->refused = NULL;
	}
	bool switched = strcmp(tab->current, rf->cur) != 0 && tab->store_version != -2;
	snprintf(tab->current, sizeof(tab->current), "%s", rf->cur);
	tab->store_version = rf->version;
	tab->store_incomplete = !rf->complete;
	tab->store_retry_at = rf->now + 10;
	return switched;
}

int sf_refresh(struct stellafs *sf, struct stella_err *e)
{
	if (!sf->store)
		return 0;
	/* One refresh at a time, and the check inside it: a caller that just
	 * changed the store must not return while another refresh that read
	 * the store before that change is still to publish what it read. */
	pthread_mutex_lock(&sf->refresh_lock);
	struct refresh rf = { 0 };
	if (!refresh_needed(sf, &rf)) {
		pthread_mutex_unlock(&sf->refresh_lock);
		return 0;
	}
	char prev[129];
	int r = store_list(sf->store, &rf.list, &rf.n, e);
	if (r == 0 && (r = store_pointers(sf->store, rf.cur, prev, e)) < 0)
		free(rf.list);
	if (r < 0) {
		/* nothing published: the next lookup or tick tries again */
		pthread_mutex_lock(&sf->lock);
		sf->tab.store_dirty = true;
		pthread_mutex_unlock(&sf->lock);
		pthread_mutex_unlock(&sf->refresh_lock);
		return r;
	}
	refresh_open_new(sf, &rf);
	/* Only at the first refresh: later, a snapshot removed from the store
	 * may still be read through files open on it, and its index is opened
	 * by name as reads need connections. */
	if (!sf->pruned) {
		storecheck_prune(sf->store, sf->opt.cache_dir, rf.list, rf.n);
		sf->pruned = true;
	}
	pthread_mutex_lock(&sf->lock);
	bool switched = refresh_publish(sf, &rf);
	pthread_mutex_unlock(&sf->lock);
	/* queued before the refresh lock goes: a command whose own refresh
	 * found nothing left to do must still find this notification queued
	 * when it waits for delivery */
	if (switched)
		tell_switched(sf);
	pthread_mutex_unlock(&sf->refresh_lock);
	/* The store changed.  Another mount may have removed snapshots and
	 * deleted their blobs (cached descriptors would keep the space), or
	 * an import may have mended a damaged blob by renaming a good copy
	 * over it (cached descriptors would keep serving the damaged inode:
	 * EIO where the store now holds good bytes). */
	fdcache_flush();
	free(rf.opened);
	free(rf.refused);
	free(rf.list);
	return 0;
}

/* data_version moves only for other connections' commits: after our own,
 * say so explicitly. */
int sf_changed(struct stellafs *sf, struct stella_err *e)
{
	/* The mount's first fill, and a command that changed the store,
	 * return once the mount shows the store: a refresh that failed, or
	 * left a snapshot unopened (a transient read error), is tried again
	 * before giving up to the watcher's backoff. */
	int r = 0;
	for (int i = 0; i < 3; i++) {
		pthread_mutex_lock(&sf->lock);
		sf->tab.store_dirty = true;
		pthread_mutex_unlock(&sf->lock);
		struct stella_err te = { 0 };
		r = sf_refresh(sf, &te);
		pthread_mutex_lock(&sf->lock);
		bool incomplete = sf->tab.store_incomplete;
		pthread_mutex_unlock(&sf->lock);
		if (r == 0 && !incomplete)
			break;
		if (r < 0 && i == 2)
			stella_fail(e, r, "%s", stella_err_text(&te, r));
	}
	return r;
}

/* Whether the store has a row for version (-errno: it cannot say). */
static int store_has(struct stellafs *sf, const char *version, struct stella_err *e)
{
	struct store_snapshot *list = NULL;
	size_t n = 0;
	int r = store_list(sf->store, &list, &n, e);
	for (size_t i = 0; r == 0 && i < n; i++)
		if (!strcmp(list[i].version, version))
			r = 1;
	free(list);
	return r;
}

/* The snapshot of version answers (its index reads: its connections may
 * have been closed for others' and must open again). */
static int slot_answers(struct stellafs *sf, const char *version, struct stella_err *e)
{
	uint64_t id;
	struct snapshot *s = sf_by_version(sf, version, &id);
	if (!s)
		return -ENOENT;
	struct index_node *n = malloc(sizeof(*n));
	int r = n ? snapshot_getattr(s, INDEX_ROOT_INO, n) : -ENOMEM;
	free(n);
	snapshot_unref(s);
	return r < 0 ? stella_fail(e, r == -ENOENT ? -EIO : r, "snapshot %s: its index cannot be read", version) : 0;
}

int sf_check_servable(struct stellafs *sf, const char *version, struct stella_err *e)
{
	int r = store_has(sf, version, e);
	if (r <= 0)
		return r; /* not in the store: the switch itself says so */
	if ((r = slot_answers(sf, version, e)) != -ENOENT)
		return r;
	/* not served yet (imported meanwhile), or it did not open */
	sf_changed(sf, e);
	if ((r = slot_answers(sf, version, e)) != -ENOENT)
		return r;
	/* Open it here to say why the table could not. */
	struct snapshot *x = NULL;
	r = store_open_snapshot(sf->store, version, &x, e);
	snapshot_unref(x);
	if (r < 0)
		return r;
	return stella_fail(e, -EIO, "snapshot %s is not served by this mount (see the system log)", version);
}
