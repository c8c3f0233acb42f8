/* stellafs's mount options, parsed and checked (see options.h). */
#include "options.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bounds.h"
#include "sig.h"
#include "util.h"

enum { KEY_HELP, KEY_VERSION };

#define OPT(t, p) { t, offsetof(struct opts, p), 1 }
static const struct fuse_opt spec[] = {
	OPT("trust=%s", trust),
	OPT("threshold=%s", threshold),
	OPT("now=%s", now),
	OPT("cache=%s", cache),
	OPT("admin_gid=%s", admin_gid),
	OPT("incoming=%s", incoming),
	OPT("allow_expired", allow_expired),
	OPT("auto_activate", auto_activate),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_END,
};

/* SOURCE is the first non-option argument; the rest (the mount point) is
 * left for fuse_parse_cmdline. */
static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	(void)outargs;
	struct opts *o = data;
	if (key == KEY_HELP) {
		o->help = 1;
		return 0;
	}
	if (key == KEY_VERSION) {
		o->version = 1;
		return 0;
	}
	if (key == FUSE_OPT_KEY_NONOPT && !o->source) {
		if (!(o->source = strdup(arg))) {
			o->nomem = 1;
			return -1;
		}
		return 0;
	}
	if (key == FUSE_OPT_KEY_NONOPT && !o->mountpoint && !(o->mountpoint = strdup(arg))) {
		o->nomem = 1;
		return -1;
	}
	return 1;
}

int options_parse(struct fuse_args *args, struct opts *o)
{
	return fuse_opt_parse(args, o, spec, opt_proc) != 0 ? -1 : 0;
}

/* -EINVAL, with the message in *why (malloc'ed; NULL when out of memory). */
static int refuse(char **why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int refuse(char **why, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(why, fmt, ap) < 0)
		*why = NULL;
	va_end(ap);
	return -EINVAL;
}

int options_check(const struct opts *o, struct opt_values *v, char **why)
{
	*v = (struct opt_values){ .threshold = 1 };
	if (o->threshold) {
		if (sig_threshold_parse(o->threshold, &v->threshold) < 0)
			return refuse(why, "threshold=%s: a number from 1 to %u", o->threshold, STELLA_TRUST_KEYS_MAX);
	}
	if (o->now && time_parse(o->now, &v->fixed_now) < 0)
		return refuse(why, "now=%s: not an RFC 3339 time", o->now);
	if (o->admin_gid) {
		uint64_t n;
		if (parse_u64(o->admin_gid, &n) < 0 || n > 0x7fffffff)
			return refuse(why, "admin_gid=%s: not a group id", o->admin_gid);
		v->has_admin_gid = true;
		v->admin_gid = (gid_t)n;
	}
	return 0;
}

int options_check_mode(const struct opts *o, bool store_mode, char **why)
{
	if (!store_mode && (o->incoming || o->auto_activate)) {
		return refuse(why, "incoming= and auto_activate are store-mode options; %s is a kit file",
			      o->source ? o->source : "SOURCE");
	}
	return 0;
}

int options_fuse_defaults(struct fuse_args *args, bool root)
{
	if (fuse_opt_add_arg(args, "-odefault_permissions") || fuse_opt_add_arg(args, "-ofsname=stellafs") ||
	    fuse_opt_add_arg(args, "-osubtype=stellafs") || (root && fuse_opt_add_arg(args, "-oallow_other")))
		return -1;
	return 0;
}

void options_free(struct opts *o)
{
	free(o->source);
	free(o->mountpoint);
	free(o->trust);
	free(o->threshold);
	free(o->now);
	free(o->cache);
	free(o->admin_gid);
	free(o->incoming);
	*o = (struct opts){ 0 };
}
