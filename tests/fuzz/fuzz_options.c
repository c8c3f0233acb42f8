/* libFuzzer target: stellafs's command line and mount options, as main.c
 * takes them before anything is opened or mounted (fs/options.c, then
 * libfuse's own parsers; nothing is mounted).  The input is the argument
 * vector after "stellafs", one argument per line: "-o", an fstab option
 * string such as "trust=/etc/stella/keys,threshold=2,allow_other", "-f",
 * SOURCE, MOUNTPOINT, ...
 *
 * Checked: what options_check accepts is in range (threshold 1..256, a
 * group id below 2^31, a time that formats and parses back to itself,
 * cache_size=, timeout= and interval= within their bounds) and
 * what it refuses comes with a message naming the option; the store-only
 * options are refused for a kit file exactly when given; libfuse's
 * fuse_parse_cmdline and fuse_session_new (the standard FUSE options, with
 * the defaults main.c adds) take what is left without crashing or leaking. */
#define FUSE_USE_VERSION 312
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "location.h"
#include "options.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ARGS 32

static void no_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
	(void)level;
	(void)fmt;
	(void)ap;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuse_set_log_func(no_log);  /* libfuse's complaints about bad options */
	return 0;
}

static void check_values(const struct opts *o)
{
	struct opt_values v;
	char *why = NULL;
	int r = options_check(o, &v, &why);
	if (r == 0) {
		if (why || v.threshold < 1 || v.threshold > 256 || (!o->threshold && v.threshold != 1))
			abort();
		if (v.has_admin_gid != !!o->admin_gid || v.admin_gid > 0x7fffffff)
			abort();
		/* the remote options' values within their documented bounds */
		if (v.cache_size < OPTS_CACHE_SIZE_MIN || v.cache_size > OPTS_CACHE_SIZE_MAX ||
		    v.timeout_ms < 1000 || v.timeout_ms > OPTS_TIMEOUT_MAX * 1000u || v.interval < 1 ||
		    v.interval > OPTS_INTERVAL_MAX || (o->interval && !o->follow) || o->nmirrors > OPTS_MIRRORS_MAX)
			abort();
		if (o->now) {
			/* a time taken is one the daemon can print and read again */
			char t[32];
			int64_t back = 0;
			time_format(v.fixed_now, t);
			if (time_parse(t, &back) < 0 || back != v.fixed_now) {
				fprintf(stderr, "now=%s: taken as %lld, printed as %s, read back as %lld\n", o->now,
					(long long)v.fixed_now, t, (long long)back);
				abort();
			}
		} else if (v.fixed_now) {
			abort();
		}
	} else {
		if (r != -EINVAL || !why)
			abort();
		static const char *const named[] = { "threshold=", "now=", "admin_gid=", "mirror=", "cache_size=",
						     "timeout=", "interval=", "follow=", "proxy=", "cacert=",
						     "client_cert=", "client_key=" };
		bool ok = false;
		for (size_t i = 0; i < sizeof(named) / sizeof(named[0]) && !ok; i++)
			ok = !strncmp(why, named[i], strlen(named[i]));
		if (!ok) {
			fprintf(stderr, "refusal names no option: %s\n", why);
			abort();
		}
	}
	free(why);

	why = NULL;
	r = options_check_mode(o, true, &why);
	bool remote_src = o->source && location_is_remote(o->source);
	bool refused = (remote_src && (o->incoming || o->auto_activate || o->follow || o->interval)) ||
		       (o->nmirrors && !remote_src);
	if ((r != 0) != refused || (r != 0) != !!why)
		abort();
	free(why);
	/* SOURCE a kit file: the store-only options refused, and mirror= (for
	 * kits on mirrors only) too */
	why = NULL;
	r = options_check_mode(o, false, &why);
	bool remote = o->source && location_is_remote(o->source);
	bool store_only = o->incoming || o->auto_activate || o->follow || o->interval;
	if ((r != 0) != (store_only || (o->nmirrors && !remote)) || (r != 0) != !!why)
		abort();
	free(why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	char *argv[MAX_ARGS + 1];
	int argc = 0;
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = 0;
	argv[argc++] = (char *)"stellafs";
	for (char *p = text; argc < MAX_ARGS;) {
		char *nl = strchr(p, '\n');
		argv[argc++] = p;
		if (!nl)
			break;
		*nl = 0;
		p = nl + 1;
	}
	argv[argc] = NULL;

	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct opts o = { 0 };
	if (options_parse(&args, &o) == 0) {
		check_values(&o);
		if (!o.help && !o.version) {
			/* (libfuse may have set the mount point when it fails:
			 * freed either way, as main.c does) */
			struct fuse_cmdline_opts cl = { 0 };
			if (fuse_parse_cmdline(&args, &cl) == 0 && options_fuse_defaults(&args, true) == 0) {
				static const struct fuse_lowlevel_ops ops = { 0 };
				struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
				if (se)
					fuse_session_destroy(se);
			}
			free(cl.mountpoint);
		}
	}
	options_free(&o);
	fuse_opt_free_args(&args);
	free(text);
	return 0;
}
