#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "escape.h"
#include "util.h"

static void __attribute__((format(printf, 3, 0))) vset(struct stella_err *e, int rc, const char *fmt, va_list ap)
{
	if (!e || e->code)
		return;
	e->code = rc;
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	stella_one_line(e->msg);
}

void stella_one_line(char *s)
{
	/* One line, always: a hostile name must not break the log format
	 * (a vertical tab or form feed ends a line for some readers too). */
	for (unsigned char *p = (unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			*p = *p == '\n' || *p == '\r' || *p == '\t' ? ' ' : '?';
}

int stella_fail(struct stella_err *e, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset(e, rc, fmt, ap);
	va_end(ap);
	return rc;
}

int stella_fail_errno(struct stella_err *e, int rc, const char *fmt, ...)
{
	va_list ap;
	if (!e || e->code)
		return rc;
	va_start(ap, fmt);
	vset(e, rc, fmt, ap);
	va_end(ap);
	size_t n = strlen(e->msg);
	snprintf(e->msg + n, sizeof(e->msg) - n, ": %s", strerror(rc < 0 ? -rc : rc));
	return rc;
}

int stella_exit_code(int rc)
{
	static const struct { int err; int code; } table[] = {
		{ 0, STELLA_EXIT_OK },
		{ EINVAL, STELLA_EXIT_USAGE },
		{ STELLA_EMALFORMED, STELLA_EXIT_MALFORMED },
		{ STELLA_EMISMATCH, STELLA_EXIT_MISMATCH },
		{ STELLA_ESIGNATURE, STELLA_EXIT_SIGNATURE },
		{ STELLA_EEXPIRED, STELLA_EXIT_EXPIRED },
		{ STELLA_ESTALE, STELLA_EXIT_STALE },
	};
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (-rc == table[i].err)
			return table[i].code;
	return STELLA_EXIT_RUNTIME;
}

const char *stella_err_text(const struct stella_err *e, int rc)
{
	if (e && e->code && e->msg[0])
		return e->msg;
	return strerror(rc < 0 ? -rc : rc);
}

static void log_stderr(int prio, const char *line)
{
	(void)prio;
	fprintf(stderr, "%s\n", line);
}

static void (*log_fn)(int, const char *) = log_stderr;

void stella_log_set(void (*fn)(int prio, const char *line))
{
	log_fn = fn ? fn : log_stderr;
}

void stella_log(int prio, const char *fmt, ...)
{
	char raw[1024], line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	/* one line, whatever a file name or manifest field in it holds, and
	 * nothing a terminal (stellafs -f) would take for an escape sequence */
	escape(raw, ESCAPE_TEXT, line, sizeof(line));
	log_fn(prio, line);
}

void stella_err_hint(struct stella_err *e, int rc, int when, const char *hint)
{
	if (!e || rc != when || !e->code || !e->msg[0])
		return;
	size_t n = strlen(e->msg);
	snprintf(e->msg + n, sizeof(e->msg) - n, " (%s)", hint);
}
