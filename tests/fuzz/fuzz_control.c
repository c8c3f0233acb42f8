/* libFuzzer target: what a write(2) to /stella/control goes through before
 * any command runs (fs/command.c, the same calls fs/control.c makes): the
 * text check, the cut into command lines, the parse of each line, and the
 * line as the journal shows it.  Checked on every input:
 *
 *   - a text is refused exactly when it is too long or holds a NUL;
 *   - lines are trimmed, never empty or comments, and the walk stops at the
 *     first refused one, as control_write does;
 *   - a parsed command satisfies its own rules (an argument where one is
 *     required and none where none is allowed, import paths absolute, gc
 *     keep >= 1, no blanks inside an argument but import's path, which is
 *     the rest of the line), and printing it back and parsing that gives
 *     the same command ("verify -- V" printed back with its "--");
 *   - a refusal is -EINVAL, with a NUL-terminated reason that fits;
 *   - a journal line has no control characters. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
	unsigned lines;
	int first_err;
};

static void fail(const char *why, const char *line)
{
	fprintf(stderr, "fuzz_control: %s: \"%s\"\n", why, line);
	abort();
}

static void check_shown(const char *line)
{
	char shown[256];
	command_shown(line, strlen(line), shown, sizeof shown);
	size_t l = strlen(shown);
	if (l > 255 || (strlen(line) < 256 && l != strlen(line)))
		fail("journal line of the wrong length", line);
	for (size_t i = 0; i < l; i++)
		if ((unsigned char)shown[i] < 0x20)
			fail("control character in a journal line", line);
	char tiny[4];
	command_shown(line, strlen(line), tiny, sizeof tiny);
	if (strlen(tiny) > 3)
		abort();
}

static void check_command(const struct command *c, const char *line)
{
	bool need = c->kind == CMD_ACTIVATE || c->kind == CMD_REMOVE || c->kind == CMD_IMPORT;
	if (need && !c->arg)
		fail("argument missing", line);
	if (c->kind == CMD_RELOAD && c->arg)
		fail("reload with an argument", line);
	if (c->arg && (!*c->arg || strchr(c->arg, '\n') ||
		       (c->kind != CMD_IMPORT && strpbrk(c->arg, " \t"))))
		fail("argument empty or with a blank", line);
	if (c->kind == CMD_IMPORT && (strchr(" \t", c->arg[strlen(c->arg) - 1])))
		fail("import path with a trailing blank", line);
	if (c->all != (c->kind == CMD_VERIFY && c->arg && !strcmp(c->arg, "all") && !strstr(line, "--")))
		fail("verify all not told from verify -- all", line);
	if (c->kind == CMD_IMPORT && c->arg[0] != '/')
		fail("relative import path", line);
	if (c->keep == 0)
		fail("gc keep=0", line);
	if (c->kind != CMD_GC && c->keep != 2)
		fail("keep set for another command", line);
	if (c->kind == CMD_GC && c->arg && strncmp(c->arg, "keep=", 5))
		fail("gc argument is not keep=N", line);

	/* Printed back, it parses to the same command. */
	char again[4200], res[512] = "";
	snprintf(again, sizeof again, "%s%s%s%s", c->name, c->kind == CMD_VERIFY && c->arg && !c->all ? " --" : "",
		 c->arg ? " " : "", c->arg ? c->arg : "");
	struct command d;
	if (command_parse(again, &d, res, sizeof res) != 0)
		fail("printed back, it does not parse", line);
	if (d.kind != c->kind || strcmp(d.name, c->name) || !d.arg != !c->arg || (c->arg && strcmp(d.arg, c->arg)) ||
	    d.keep != c->keep || d.all != c->all)
		fail("printed back, it parses to another command", line);
}

static int one_line(void *ctx, char *line)
{
	struct run *run = ctx;
	size_t l = strlen(line);
	if (!l || line[0] == '#' || line[0] == ' ' || line[0] == '\t' || strchr(line, '\n') ||
	    line[l - 1] == ' ' || line[l - 1] == '\t' || line[l - 1] == '\r')
		fail("line not trimmed", line);
	if (run->first_err)
		fail("a line after a refused one", line);
	run->lines++;
	check_shown(line);

	char copy[COMMAND_TEXT_MAX + 1];
	memcpy(copy, line, l + 1);
	struct command c;
	char res[512];
	memset(res, 0, sizeof res);
	int r = command_parse(line, &c, res, sizeof res);
	if (r == 0) {
		check_command(&c, copy);
	} else {
		if (r != -EINVAL)
			fail("refused with another error than EINVAL", copy);
		if (!memchr(res, 0, sizeof res))
			fail("reason not terminated", copy);
		/* and with no room for a reason at all */
		char again[COMMAND_TEXT_MAX + 1];
		memcpy(again, copy, l + 1);
		if (command_parse(again, &c, NULL, 0) != -EINVAL)
			fail("parse differs without a reason buffer", copy);
		run->first_err = r;
	}
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	bool bad = size > COMMAND_TEXT_MAX || memchr(buf, 0, size);
	if ((command_check_text(buf, size) < 0) != bad)
		abort();
	if (bad)
		return 0;

	char text[COMMAND_TEXT_MAX + 1];
	memcpy(text, buf, size);
	text[size] = 0;
	/* what the journal shows of a command refused as busy */
	char shown[256];
	command_shown(text, strcspn(text, "\n"), shown, sizeof shown);
	for (const char *p = shown; *p; p++)
		if ((unsigned char)*p < 0x20)
			abort();

	struct run run = { 0 };
	int r = command_each_line(text, one_line, &run);
	if (r != run.first_err)
		abort();
	return 0;
}
