/* Health: the checks behind /stella/health, and the four views of them
 * (status for people, status.json for programs, health for scripts,
 * metrics for Prometheus).  Pure functions of their input: the daemon
 * gathers the facts, this file judges and renders them. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "manifest.h"

enum health_level { HEALTH_OK = 0, HEALTH_WARNING = 1, HEALTH_CRITICAL = 2 };
const char *health_level_name(enum health_level l);   /* HEALTHY, WARNING, CRITICAL */

#define HEALTH_EXPIRY_WARN_DAYS 7
#define HEALTH_STORE_WARN_PCT 80
#define HEALTH_STORE_CRIT_PCT 95

/* A kit on site mirrors: one mirror as remote_stats (core/remote.h) tells it. */
#define HEALTH_REMOTE_RESULTS 6    /* ok, http_error, timeout, short, bad_bytes, refused */
struct health_mirror {
	const char *url;               /* as the operator wrote it */
	const char *origin;            /* scheme://host:port, the metrics label */
	const char *state;             /* "ok", "failing", "untried" */
	uint64_t failures;
	const char *last_error;        /* "" when none */
	uint64_t bytes;
	uint64_t requests[HEALTH_REMOTE_RESULTS];
};

struct health_input {
	const char *mode;              /* "direct" or "store" */
	const char *source;            /* the kit file or store directory */
	const struct manifest *kit;    /* the current snapshot's identity; NULL: none */
	const char *const *snapshots;  /* every available version */
	size_t nsnapshots;
	int64_t now;
	bool trust_ok;                 /* the trust store loads and still vouches for the kit */
	const char *trust_detail;
	unsigned signers, threshold;
	uint64_t verified_bytes, failures;
	const char *last_failure;      /* "path: block N", or NULL */
	int store_usage_pct;           /* -1: not applicable */
	uint64_t switches;
	/* store mode: snapshots the mount refuses to serve, one line each
	 * ("V refused, not served: why"), each a check "snapshot" of its
	 * level (CRITICAL for a forged or damaged one, WARNING for one too few
	 * trusted keys sign; the current one also fails "signature") */
	const char *const *problems;
	const enum health_level *problem_levels;
	size_t nproblems;
	/* a kit on mirrors (remote true): its mirrors, in the order tried,
	 * each failing one a WARNING; reads that no mirror could serve with
	 * bytes that verify (unserved) are CRITICAL */
	bool remote;
	const struct health_mirror *mirrors;
	size_t nmirrors;
	uint64_t cache_bytes, cache_hits, unserved, read_timeouts;
	/* store mode's follow=URL: NULL when not following */
	const char *follow;
	int64_t follow_last_poll;      /* 0: not polled yet */
	int follow_err;                /* 0 or a positive errno of the last poll or import */
	const char *follow_result;
};

/* Render; each returns a malloc'ed NUL-terminated text. */
char *health_render_status(const struct health_input *in);
char *health_render_json(const struct health_input *in);
char *health_render_health(const struct health_input *in);
char *health_render_metrics(const struct health_input *in);
enum health_level health_overall(const struct health_input *in);
