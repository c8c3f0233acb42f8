/* The control file's language (stellafs(8), THE CONTROL FILE): the text written
 * to /stella/control checked, cut into command lines, and each line parsed
 * into a command with every argument validated.  Pure functions, no FUSE
 * and no daemon state: control.c runs what they return, and the fuzz target
 * tests/fuzz/fuzz_control.c drives them directly. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define COMMAND_TEXT_MAX 4096   /* bytes of one write to control */

enum command_kind {
	CMD_VERIFY,     /* verify [all|VERSION|-- VERSION] */
	CMD_ACTIVATE,   /* activate VERSION */
	CMD_ROLLBACK,   /* rollback [VERSION] */
	CMD_REMOVE,     /* remove VERSION */
	CMD_GC,         /* gc [keep=N] */
	CMD_IMPORT,     /* import /ABSOLUTE/PATH (the rest of the line) */
	CMD_RELOAD,     /* reload */
};

struct command {
	enum command_kind kind;
	const char *name;   /* the command word as written ("activate") */
	const char *arg;    /* the argument, NULL when none (points into the line) */
	uint64_t keep;      /* gc: snapshots kept (default 2, never 0) */
	bool all;           /* verify all: every snapshot ("verify -- all" is the
			     * one snapshot named "all") */
};

/* The commands, written once: the usage line and the control file's
 * journal header both say them. */
#define COMMAND_SYNOPSIS_1 "activate VERSION | rollback [VERSION] | import PATH | verify [all|VERSION|-- VERSION]"
#define COMMAND_SYNOPSIS_2 "remove VERSION | gc [keep=N] | reload"

/* The one-line usage that a refused command answers with. */
extern const char command_usage[];

/* A write to control as a whole: -EINVAL when longer than
 * COMMAND_TEXT_MAX or holding a NUL (it would cut a command short:
 * "verify\0all" must not run "verify"). */
int command_check_text(const char *buf, size_t len);

/* Call cb on each command line of text (NUL-terminated, modified in
 * place): lines end at '\n', lose their leading blanks and trailing blanks
 * and '\r'; empty lines and '#' comments are skipped.  Stops at the first
 * non-zero cb result and returns it; 0 when every line was taken. */
int command_each_line(char *text, int (*cb)(void *ctx, char *line), void *ctx);

/* Parse one line (modified in place; c's strings point into it).  Returns
 * 0, or -EINVAL for a malformed command: no command, one argument too many,
 * an unknown command, a missing or extra argument, a bad gc keep=N, an
 * import path that is not absolute.  import takes the rest of the line as
 * its path, blanks included (only trailing blanks are lost).  res (rl bytes, may be 0) gets the
 * reason when there is one worth more than command_usage; else it is left
 * untouched. */
int command_parse(char *line, struct command *c, char *res, size_t rl);

/* A line (its first len bytes, or up to a NUL) as the journal shows it: at
 * most n - 1 bytes, control characters made '?'. */
void command_shown(const char *line, size_t len, char *shown, size_t n);
