#include "common.h"
#include "location.h"
#include "source.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bounds.h"
#include "escape.h"
#include "util.h"

int report(const struct stella_err *e, int rc)
{
	progress_done();
	struct stella_err h = e ? *e : (struct stella_err){ 0 };
	stella_err_hint(&h, rc, -EKEYEXPIRED, "use --allow-expired to accept it");
	fprintf(stderr, PROG ": %s\n", stella_err_text(&h, rc));
	return stella_exit_code(rc);
}

int usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	stella_one_line(msg);
	if (cmd)
		fprintf(stderr, PROG ": %s: %s (try '" PROG " %s --help')\n", cmd, msg, cmd);
	else
		fprintf(stderr, PROG ": %s (try '" PROG " --help')\n", msg);
	return STELLA_EXIT_USAGE;
}

int parse_now(const char *cmd, const char *arg, int64_t *now)
{
	if (!arg) {
		*now = (int64_t)time(NULL);
		return 0;
	}
	if (time_parse(arg, now) < 0)
		return usage_error(cmd, "--now: not an RFC 3339 time: '%s'", arg);
	return 0;
}

static int last_pct = -1;

void progress_cb(void *ctx, const char *name, uint64_t done, uint64_t total)
{
	const char *what = ctx;
	if (!isatty(STDERR_FILENO) || total == 0)
		return;
	int pct = (int)(done * 100 / total);
	if (pct == last_pct)
		return;
	last_pct = pct;
	fprintf(stderr, "\r\033[K%s %3d%% %.60s", what, pct, name);
	fflush(stderr);
}

void progress_done(void)
{
	if (last_pct >= 0 && isatty(STDERR_FILENO))
		fprintf(stderr, "\r\033[K");
	last_pct = -1;
}

const char *text_name(const char *s)
{
	/* four at a time: one printf may show a link's name and target */
	static char buf[4][4 * STELLA_NAME_MAX + 1];
	static unsigned next;
	char *b = buf[next++ % 4];
	escape(s, ESCAPE_TEXT, b, sizeof(buf[0]));
	return b;
}

int location_arg(const char *cmd, struct location_args *la, int opt, const char *arg)
{
	char *end;
	unsigned long v;
	switch (opt) {
	case 'c':
		la->cacert = arg;
		return 0;
	case 'T':
		errno = 0;
		v = strtoul(arg, &end, 10);
		if (errno || end == arg || *end || v < 1 || v > 86400)
			return usage_error(cmd, "--timeout '%s': seconds, from 1 to 86400", arg);
		la->timeout_ms = (unsigned)v * 1000u;
		return 0;
	case 'm':
		if (la->nmirrors == sizeof(la->mirrors) / sizeof(la->mirrors[0]))
			return usage_error(cmd, "at most %zu --mirror", sizeof(la->mirrors) / sizeof(la->mirrors[0]));
		if (location_mirror_refusal(NULL, arg))
			return usage_error(cmd, "--mirror '%s': %s", arg, location_mirror_refusal(NULL, arg));
		la->mirrors[la->nmirrors++] = arg;
		return 0;
	}
	return usage_error(cmd, "unknown option");
}

int open_location(const char *kit, const struct location_args *la, struct source **out,
		  struct stella_err *e)
{
	*out = NULL;
	if (!location_is_remote(kit)) {
		if (la->nmirrors)
			return stella_fail(e, -EINVAL, "%s: --mirror is for a KIT given as a URL", kit);
		return 0;
	}
	struct remote_opts o = { .cacert = la->cacert, .timeout_ms = la->timeout_ms };
	struct bytes *b;
	int r = location_open(kit, la->mirrors, la->nmirrors, &o, &b, e);
	return r < 0 ? r : source_open_bytes(b, out, e);
}

int location_failure(struct source *src, int r, struct stella_err *e)
{
	if (!src || r != -REMOTE_EUNSERVED || !bytes_is_remote(source_bytes(src)))
		return r;
	char why[400];
	remote_last_error(source_bytes(src), why, sizeof(why));
	*e = (struct stella_err){ 0 };
	return stella_fail(e, -EIO, "%s: no mirror could serve the kit's bytes in time%s%s", source_path(src),
			   why[0] ? "; the last failure: " : "", why);
}
