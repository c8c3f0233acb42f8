/* The read-only virtual files: status, status.json, health and metrics
 * (docs/mount.md, section 5), and the control file's content, its journal.
 * Each open renders afresh from the slot table (core/health.c renders;
 * here the mount's state is gathered into its struct health_input). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "source.h"
#include "stellafs.h"
#include "util.h"

/* What a health_input points at, owned here: freed by gather_free. */
struct gathered {
	struct snapshot *current;
	struct slot *slots;
	const char **names;
	char last[700];
	/* copied under the lock: a reload rewrites it */
	char trust_detail[sizeof(((struct stellafs *)0)->trust.detail) + sizeof(struct refusal)];
	char (*prob)[600];
	const char **probs;
	enum health_level *plev;
	struct remote_stats *rs;       /* a kit on mirrors */
	struct health_mirror mirrors[REMOTE_MAX_ENDPOINTS];
	struct sf_follow follow;
};

static void gather_free(struct gathered *g)
{
	snapshot_unref(g->current);
	free(g->names);
	free(g->slots);
	free(g->prob);
	free(g->probs);
	free(g->plev);
	free(g->rs);
}

/* Direct mode, a kit on mirrors: each mirror's state and the counters
 * (remote_stats only copies them: no network wait here). */
static void gather_remote(struct stellafs *sf, struct gathered *g, struct health_input *in)
{
	struct snapshot *s = g->current;
	if (sf->store || !s || !s->src || !bytes_is_remote(source_bytes(s->src)))
		return;
	if (!(g->rs = calloc(1, sizeof(*g->rs))) || remote_stats(source_bytes(s->src), g->rs) < 0)
		return;
	const struct remote_stats *st = g->rs;
	size_t n = MIN(st->n, (size_t)REMOTE_MAX_ENDPOINTS);
	for (size_t i = 0; i < n; i++) {
		const struct remote_mirror_stat *m = &st->m[i];
		struct health_mirror *h = &g->mirrors[i];
		*h = (struct health_mirror){ .url = m->url, .origin = m->origin, .state = m->state ? m->state : "untried",
					     .failures = m->failures, .last_error = m->last_error, .bytes = m->bytes };
		for (size_t k = 0; k < HEALTH_REMOTE_RESULTS && k < REMOTE_RESULTS; k++)
			h->requests[k] = m->requests[k];
	}
	struct fetch_counters fc;
	fetch_counters(sf, &fc);
	in->remote = true;
	in->mirrors = g->mirrors;
	in->nmirrors = n;
	in->cache_bytes = st->cache_bytes;
	in->cache_hits = st->cache_hits;
	in->unserved = st->unserved;
	in->read_timeouts = fc.timeouts;
}

/* Counters are per snapshot; the mount's totals are their sum. */
static void gather_counters(struct stellafs *sf, struct gathered *g, size_t n, struct health_input *in)
{
	for (size_t i = 0; i < n; i++) {
		struct snapshot *x = sf_snapshot(sf, g->slots[i].id);
		if (!x)
			continue;
		in->verified_bytes += atomic_load(&x->verified_bytes);
		uint64_t f = atomic_load(&x->failures);
		if (f) {
			in->failures += f;
			char lf[sizeof(x->last_failure)];
			snapshot_last_failure(x, lf, sizeof(lf));
			snprintf(g->last, sizeof(g->last), "%.128s: %.511s", x->version, lf);
		}
		snapshot_unref(x);
	}
	in->last_failure = g->last;
}

/* Store mode: the snapshots not served, each a CRITICAL check; a current
 * one refused for its signatures fails the signature check (sf->lock held).
 * Returns whether current is refused so. */
static bool gather_refusals(struct stellafs *sf, struct gathered *g, struct health_input *in)
{
	size_t nprob = sf->tab.nrefused;
	bool cur_untrusted = false;
	g->prob = nprob ? calloc(nprob, sizeof(*g->prob)) : NULL;
	g->probs = nprob ? calloc(nprob, sizeof(*g->probs)) : NULL;
	g->plev = nprob ? calloc(nprob, sizeof(*g->plev)) : NULL;
	for (size_t i = 0; g->prob && g->probs && g->plev && i < nprob; i++) {
		const struct refusal *x = &sf->tab.refused[i];
		snprintf(g->prob[i], sizeof(g->prob[i]), "%.128s refused, not served: %s", x->version, x->why);
		g->probs[i] = g->prob[i];
		g->plev[i] = x->err == -EKEYREJECTED ? HEALTH_WARNING : HEALTH_CRITICAL;
		if (!strcmp(x->version, sf->tab.current) && x->err == -EKEYREJECTED) {
			cur_untrusted = true;
			snprintf(g->trust_detail, sizeof(g->trust_detail), "current snapshot %.128s: %s", x->version,
				 x->why);
		}
	}
	in->problems = g->probs;
	in->problem_levels = g->plev;
	in->nproblems = g->prob && g->probs && g->plev ? nprob : 0;
	return cur_untrusted;
}

/* The mount's health, as of now (after a refresh from the store). */
static void gather(struct stellafs *sf, struct gathered *g, struct health_input *in)
{
	struct stella_err e = { 0 };
	sf_refresh(sf, &e);
	g->current = sf_current(sf, NULL);
	size_t n = sf_list(sf, &g->slots);
	g->names = calloc(n ? n : 1, sizeof(*g->names));
	for (size_t i = 0; g->names && i < n; i++)
		g->names[i] = g->slots[i].version;
	struct snapshot *s = g->current;
	*in = (struct health_input){
		.mode = sf->store ? "store" : "direct",
		.source = sf->opt.source,
		.kit = s ? s->identity : NULL,
		.snapshots = g->names,
		.nsnapshots = g->names ? n : 0,
		.now = sf_now(sf),
		.threshold = sf->opt.threshold,
		.store_usage_pct = sf->store ? store_usage_pct(sf->store) : -1,
		.switches = atomic_load(&sf->tab.switches),
		.trust_detail = g->trust_detail,
	};
	gather_counters(sf, g, n, in);
	gather_remote(sf, g, in);
	if (sf->opt.follow && sf->store) {
		follow_state(sf, &g->follow);
		in->follow = sf->opt.follow;
		in->follow_last_poll = g->follow.last_poll;
		in->follow_err = g->follow.last_err;
		in->follow_result = g->follow.last_result;
	}
	pthread_mutex_lock(&sf->lock);
	snprintf(g->trust_detail, sizeof(g->trust_detail), "%s", sf->trust.detail);
	bool cur_untrusted = gather_refusals(sf, g, in);
	in->trust_ok = sf->trust.ok && !cur_untrusted;
	in->signers = sf->store ? (s ? s->signers : 0) : sf->trust.signers;
	pthread_mutex_unlock(&sf->lock);
}

char *vfile_content(struct stellafs *sf, fuse_ino_t ino, size_t *len)
{
	if (ino == INO_CONTROL)
		return journal_text(sf, len);
	struct gathered g = { 0 };
	struct health_input in;
	gather(sf, &g, &in);
	char *out = NULL;
	switch (ino) {
	case INO_STATUS: out = health_render_status(&in); break;
	case INO_STATUS_JSON: out = health_render_json(&in); break;
	case INO_HEALTH: out = health_render_health(&in); break;
	case INO_METRICS: out = health_render_metrics(&in); break;
	}
	gather_free(&g);
	if (out)
		*len = strlen(out);
	return out;
}
_Static_assert(HEALTH_REMOTE_RESULTS == REMOTE_RESULTS, "health.h and remote.h count the same results");
