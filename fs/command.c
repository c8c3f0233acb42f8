/* The control file's language: text -> command lines -> commands (see
 * command.h).  Nothing here runs a command; control.c does. */
#include "command.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

const char command_usage[] = "bad command: expected " COMMAND_SYNOPSIS_1 " | " COMMAND_SYNOPSIS_2;

int command_check_text(const char *buf, size_t len)
{
	if (len > COMMAND_TEXT_MAX || memchr(buf, 0, len))
		return -EINVAL;
	return 0;
}

int command_each_line(char *text, int (*cb)(void *ctx, char *line), void *ctx)
{
	int r = 0;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line && r == 0; line = strtok_r(NULL, "\n", &save)) {
		size_t l = strlen(line);
		while (l && (line[l - 1] == '\r' || line[l - 1] == ' ' || line[l - 1] == '\t'))
			line[--l] = 0;
		while (*line == ' ' || *line == '\t')
			line++;
		if (!*line || *line == '#')
			continue;
		r = cb(ctx, line);
	}
	return r;
}

static const struct {
	const char *name;
	enum command_kind kind;
} words[] = {
	{ "verify", CMD_VERIFY }, { "activate", CMD_ACTIVATE }, { "rollback", CMD_ROLLBACK },
	{ "remove", CMD_REMOVE }, { "gc", CMD_GC },             { "import", CMD_IMPORT },
	{ "reload", CMD_RELOAD },
};

/* The rest of the line after the command word, leading blanks skipped
 * (command_each_line already cut the trailing ones): import's path, which
 * may hold blanks ("kit-v1 (1).tar.zst" as a copier names a second copy). */
static char *rest_of_line(char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return *p ? p : NULL;
}

int command_parse(char *line, struct command *c, char *res, size_t rl)
{
	char *save = NULL;
	while (*line == ' ' || *line == '\t')
		line++;
	/* the command word cut by hand: what follows it stays whole for import */
	char *cmd = line, *after = line + strcspn(line, " \t");
	if (*after)
		*after++ = 0;
	size_t i;

	if (!*cmd)
		return -EINVAL;
	for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (!strcmp(cmd, words[i].name))
			break;
	if (i == sizeof(words) / sizeof(words[0]))
		return -EINVAL;
	*c = (struct command){ .kind = words[i].kind, .name = words[i].name, .keep = 2 };
	if (c->kind == CMD_IMPORT) {
		char *arg = rest_of_line(after);
		if (!arg)
			return -EINVAL;
		if (arg[0] != '/') {
			/* the daemon's directory is /, not the writer's */
			if (rl)
				snprintf(res, rl, "import needs an absolute path, not \"%.200s\"", arg);
			return -EINVAL;
		}
		c->arg = arg;
		return 0;
	}
	char *arg = strtok_r(after, " \t", &save);
	if (c->kind == CMD_VERIFY && arg && !strcmp(arg, "--")) {
		/* "verify -- all": the snapshot whose version is "all" */
		arg = strtok_r(NULL, " \t", &save);
		if (!arg)
			return -EINVAL;
	} else if (c->kind == CMD_VERIFY && arg && !strcmp(arg, "all")) {
		c->all = true;
	}
	if (strtok_r(NULL, " \t", &save))
		return -EINVAL; /* one argument too many */
	c->arg = arg;
	switch (c->kind) {
	case CMD_VERIFY:
	case CMD_ROLLBACK:
		return 0;
	case CMD_ACTIVATE:
	case CMD_REMOVE:
		return arg ? 0 : -EINVAL;
	case CMD_GC:
		if (arg && (strncmp(arg, "keep=", 5) || parse_u64(arg + 5, &c->keep) < 0 || c->keep == 0))
			return -EINVAL;
		return 0;
	case CMD_RELOAD:
		return arg ? -EINVAL : 0;
	case CMD_IMPORT:
		break; /* above */
	}
	return -EINVAL;
}

void command_shown(const char *line, size_t len, char *shown, size_t n)
{
	if (!n)
		return;
	size_t l = strnlen(line, len);
	if (l > n - 1)
		l = n - 1;
	memcpy(shown, line, l);
	shown[l] = 0;
	for (char *p = shown; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = '?';
}
