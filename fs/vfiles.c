/* The read-only virtual files: status, status.json, health and metrics
 * (docs/mount.md, section 5), and the control file's content, its journal. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stellafs.h"

char *vfile_content(struct stellafs *sf, fuse_ino_t ino, size_t *len)
{
	if (ino == INO_CONTROL)
		return journal_text(sf, len);
	struct stella_err e = { 0 };
	sf_refresh(sf, &e);
	struct snapshot *s = sf_current(sf, NULL);
	struct slot *slots = NULL;
	size_t n = sf_list(sf, &slots);
	const char **names = calloc(n ? n : 1, sizeof(*names));
	for (size_t i = 0; names && i < n; i++)
		names[i] = slots[i].version;
	/* Counters are per snapshot; the mount's totals are their sum. */
	uint64_t verified = 0, failures = 0;
	char last[700] = "";
	for (size_t i = 0; i < n; i++) {
		struct snapshot *x = sf_snapshot(sf, slots[i].id);
		if (!x)
			continue;
		verified += atomic_load(&x->verified_bytes);
		uint64_t f = atomic_load(&x->failures);
		if (f) {
			failures += f;
			char lf[sizeof(x->last_failure)];
			snapshot_last_failure(x, lf, sizeof(lf));
			snprintf(last, sizeof(last), "%.128s: %.511s", x->version, lf);
		}
		snapshot_unref(x);
	}
	/* copied under the lock: a reload rewrites it */
	char trust_detail[sizeof(sf->trust_detail) + sizeof(struct refusal)];
	pthread_mutex_lock(&sf->lock);
	snprintf(trust_detail, sizeof(trust_detail), "%s", sf->trust_detail);
	/* store mode: the snapshots not served, each a CRITICAL check; a
	 * current one refused for its signatures fails the signature check */
	size_t nprob = sf->nrefused;
	char (*prob)[600] = nprob ? calloc(nprob, sizeof(*prob)) : NULL;
	const char **probs = nprob ? calloc(nprob, sizeof(*probs)) : NULL;
	enum health_level *plev = nprob ? calloc(nprob, sizeof(*plev)) : NULL;
	bool cur_untrusted = false;
	for (size_t i = 0; prob && probs && plev && i < nprob; i++) {
		const struct refusal *x = &sf->refused[i];
		snprintf(prob[i], sizeof(prob[i]), "%.128s refused, not served: %s", x->version, x->why);
		probs[i] = prob[i];
		plev[i] = x->err == -EKEYREJECTED ? HEALTH_WARNING : HEALTH_CRITICAL;
		if (!strcmp(x->version, sf->current) && x->err == -EKEYREJECTED) {
			cur_untrusted = true;
			snprintf(trust_detail, sizeof(trust_detail), "current snapshot %.128s: %s", x->version, x->why);
		}
	}
	struct health_input in = {
		.mode = sf->store ? "store" : "direct",
		.source = sf->source,
		.kit = s ? s->identity : NULL,
		.snapshots = names,
		.nsnapshots = names ? n : 0,
		.now = sf_now(sf),
		.trust_ok = sf->trust_ok && !cur_untrusted,
		.trust_detail = trust_detail,
		.signers = sf->store ? (s ? s->signers : 0) : sf->signers,
		.threshold = sf->threshold,
		.verified_bytes = verified,
		.failures = failures,
		.last_failure = last,
		.store_usage_pct = sf->store ? store_usage_pct(sf->store) : -1,
		.switches = atomic_load(&sf->switches),
		.problems = probs,
		.problem_levels = plev,
		.nproblems = prob && probs && plev ? nprob : 0,
	};
	pthread_mutex_unlock(&sf->lock);
	char *out = NULL;
	switch (ino) {
	case INO_STATUS: out = health_render_status(&in); break;
	case INO_STATUS_JSON: out = health_render_json(&in); break;
	case INO_HEALTH: out = health_render_health(&in); break;
	case INO_METRICS: out = health_render_metrics(&in); break;
	}
	snapshot_unref(s);
	free(names);
	free(slots);
	free(prob);
	free(probs);
	free(plev);
	if (out)
		*len = strlen(out);
	return out;
}
