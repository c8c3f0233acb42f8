/* Shared by stellakit's subcommands: the one-line error at the edge, usage
 * errors, argument parsing helpers and the TTY progress line. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

#define PROG "stellakit"

/* Print "stellakit: <msg>" and return the exit code for rc. */
int report(const struct stella_err *e, int rc);
/* Print "stellakit: CMD: <msg> (try 'stellakit CMD --help')", return 2. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --now TIME, or the clock. */
int parse_now(const char *cmd, const char *arg, int64_t *now);

/* A name from a kit (any bytes but NUL), escaped for one line of text output
 * (core/escape.h): a newline in it would forge lines.  The result lives in
 * one of four static buffers, valid until the fourth next call. */
const char *text_name(const char *s);

/* Progress on stderr, only when it is a terminal. */
void progress_cb(void *ctx, const char *name, uint64_t done, uint64_t total);
void progress_done(void);

struct source;
/* --cacert, --timeout and --mirror, shared by verify and import. */
struct location_args {
	const char *cacert;
	unsigned timeout_ms;          /* 0: the default */
	const char *mirrors[15];
	size_t nmirrors;
};
/* One of those options (OPT: 'c' cacert, 'T' timeout, 'm' mirror): 0, or
 * the usage error's exit code. */
int location_arg(const char *cmd, struct location_args *la, int opt, const char *arg);
/* KIT as an operator typed it: a local path (*out NULL: the callee opens
 * it, as ever) or an http(s):// / oci:// location (docs/mirrors.md),
 * opened here.  0 or a negative errno with e filled. */
int open_location(const char *kit, const struct location_args *la, struct source **out,
		  struct stella_err *e);

/* After a failure R of a run on SRC (open_location's, or NULL): a read no
 * mirror could serve is said as such, with the mirrors' latest failure,
 * instead of the errno's text.  Returns R. */
int location_failure(struct source *src, int r, struct stella_err *e);

int cmd_keygen(int argc, char **argv);
int cmd_pack(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_push(int argc, char **argv);
