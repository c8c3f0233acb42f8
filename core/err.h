/* Errors inside stellafs are negative errno values.  A function that fails
 * also describes the failure, once, in a struct stella_err the caller passed
 * down; the edge (a tool's stderr, the control file, the log) prints it.
 *
 * A few errno values double as the classes of the exit-code table (docs/kit-format.md, section 12), so a
 * tool can map any failure to its exit code with one lookup
 * (stella_exit_code()):
 *
 *   -EINVAL        bad argument from the caller (a key file that is no key) -> 2
 *   -EBADMSG       malformed kit: archive, manifest, names, members         -> 3
 *   -EUCLEAN       content mismatch: a size or digest differs               -> 4
 *   -EKEYREJECTED  signature: not enough distinct trusted keys              -> 5
 *   -EKEYEXPIRED   kit expired                                              -> 6
 *   -ESTALE        sequence not newer than the one already trusted          -> 7
 *   anything else  runtime failure (I/O, memory)                            -> 1
 */
#pragma once

#include <errno.h>
#include <stddef.h>

#define STELLA_EMALFORMED EBADMSG
#define STELLA_EMISMATCH  EUCLEAN
#define STELLA_ESIGNATURE EKEYREJECTED
#define STELLA_EEXPIRED   EKEYEXPIRED
#define STELLA_ESTALE     ESTALE

enum stella_exit {
	STELLA_EXIT_OK = 0,
	STELLA_EXIT_RUNTIME = 1,
	STELLA_EXIT_USAGE = 2,
	STELLA_EXIT_MALFORMED = 3,
	STELLA_EXIT_MISMATCH = 4,
	STELLA_EXIT_SIGNATURE = 5,
	STELLA_EXIT_EXPIRED = 6,
	STELLA_EXIT_STALE = 7,
};

struct stella_err {
	int code;        /* negative errno of the first failure, 0 if none */
	char msg[512];   /* one line, no trailing newline */
};

/* Record a failure (the first one wins: the deepest caller knows the most
 * precise what and where) and return rc, so that callers can write
 * `return stella_fail(e, -EBADMSG, "%s: ...", name);`.  e may be NULL. */
int stella_fail(struct stella_err *e, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Like stella_fail, with strerror(-rc) appended after ": ". */
int stella_fail_errno(struct stella_err *e, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Make s one printable line in place: line breaks and tabs become spaces,
 * other control characters '?'.  stella_fail does it to every message. */
void stella_one_line(char *s);

/* Add " (hint)" to e's message when the failure is `when` (a negative
 * errno): how to get past a refusal is for the edge to say, since stellakit
 * and stellafs name their options differently (an expired kit:
 * --allow-expired, -o allow_expired). */
void stella_err_hint(struct stella_err *e, int rc, int when, const char *hint);

/* Map a negative errno to its exit code (docs/kit-format.md, section 12). */
int stella_exit_code(int rc);

/* The message to show for rc: e->msg if set, else strerror(-rc). */
const char *stella_err_text(const struct stella_err *e, int rc);

/* Log lines from core/ (integrity failures): stderr by default; the daemon
 * points this at syslog.  prio is a syslog priority. */
void stella_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void stella_log_set(void (*fn)(int prio, const char *line));
