/* stellafs's mount options, parsed and checked (see options.h). */
#include "options.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bounds.h"
#include "location.h"
#include "remote.h"
#include "sig.h"
#include "util.h"

enum { KEY_HELP, KEY_VERSION, KEY_MIRROR };

#define OPT(t, p) { t, offsetof(struct opts, p), 1 }
static const struct fuse_opt spec[] = {
	OPT("trust=%s", trust),
	OPT("threshold=%s", threshold),
	OPT("now=%s", now),
	OPT("cache=%s", cache),
	OPT("admin_gid=%s", admin_gid),
	OPT("incoming=%s", incoming),
	OPT("cache_size=%s", cache_size),
	OPT("timeout=%s", timeout),
	OPT("cacert=%s", cacert),
	OPT("client_cert=%s", client_cert),
	OPT("client_key=%s", client_key),
	OPT("proxy=%s", proxy),
	OPT("follow=%s", follow),
	OPT("interval=%s", interval),
	FUSE_OPT_KEY("mirror=", KEY_MIRROR),
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
	if (key == KEY_MIRROR) {
		/* repeatable: each one more location, in the order given */
		if (o->nmirrors >= OPTS_MIRRORS_MAX) {
			o->too_many_mirrors = 1;
			return 0;
		}
		if (!(o->mirrors[o->nmirrors] = strdup(arg + strlen("mirror=")))) {
			o->nomem = 1;
			return -1;
		}
		o->nmirrors++;
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

/* SIZE: a number of bytes, or of KiB, MiB, GiB with K, M, G (either case). */
static int parse_size(const char *s, uint64_t *out)
{
	char num[32];
	size_t n = strspn(s, "0123456789");
	if (n == 0 || n >= sizeof(num))
		return -EINVAL;
	memcpy(num, s, n);
	num[n] = 0;
	uint64_t v, mul = 1;
	if (parse_u64(num, &v) < 0)
		return -EINVAL;
	switch (s[n]) {
	case 0: break;
	case 'k': case 'K': mul = UINT64_C(1) << 10; break;
	case 'm': case 'M': mul = UINT64_C(1) << 20; break;
	case 'g': case 'G': mul = UINT64_C(1) << 30; break;
	default: return -EINVAL;
	}
	if (s[n] && s[n + 1])
		return -EINVAL;
	if (v > UINT64_MAX / mul)
		return -ERANGE;
	*out = v * mul;
	return 0;
}

/* A whole number of seconds in [1, max]. */
static int parse_secs(const char *s, unsigned max, unsigned *out)
{
	uint64_t n;
	if (parse_u64(s, &n) < 0 || n < 1 || n > max)
		return -EINVAL;
	*out = (unsigned)n;
	return 0;
}

/* An http(s):// URL with a host: what a mirror or a proxy must be. */
static bool is_http_url(const char *s)
{
	size_t n = !strncasecmp(s, "http://", 7) ? 7 : !strncasecmp(s, "https://", 8) ? 8 : 0;
	return n && s[n] && s[n] != '/' && !strpbrk(s, " \t\n\r");
}

static int check_remote(const struct opts *o, struct opt_values *v, char **why)
{
	if (o->too_many_mirrors)
		return refuse(why, "mirror=: at most %d mirrors", OPTS_MIRRORS_MAX);
	for (size_t i = 0; i < o->nmirrors; i++) {
		const char *no = location_mirror_refusal(o->source, o->mirrors[i]);
		if (no)
			return refuse(why, "mirror=%s: %s", o->mirrors[i], no);
	}
	if (o->cache_size) {
		if (parse_size(o->cache_size, &v->cache_size) < 0 || v->cache_size < OPTS_CACHE_SIZE_MIN ||
		    v->cache_size > OPTS_CACHE_SIZE_MAX)
			return refuse(why, "cache_size=%s: a size from 1M to 1048576G (suffix K, M or G)", o->cache_size);
	}
	if (o->timeout) {
		unsigned t;
		if (parse_secs(o->timeout, OPTS_TIMEOUT_MAX, &t) < 0)
			return refuse(why, "timeout=%s: seconds, from 1 to %u", o->timeout, OPTS_TIMEOUT_MAX);
		v->timeout_ms = t * 1000u;
	}
	if (o->interval && parse_secs(o->interval, OPTS_INTERVAL_MAX, &v->interval) < 0)
		return refuse(why, "interval=%s: seconds, from 1 to %u", o->interval, OPTS_INTERVAL_MAX);
	if (o->follow && !location_is_remote(o->follow))
		return refuse(why, "follow=%s: not an http://, https:// or oci:// location", o->follow);
	if (o->interval && !o->follow)
		return refuse(why, "interval=%s: only with follow=URL", o->interval);
	if (o->proxy && !is_http_url(o->proxy) && strncasecmp(o->proxy, "socks5://", 9) &&
	    strncasecmp(o->proxy, "socks5h://", 10))
		return refuse(why, "proxy=%s: not an http://, https:// or socks5:// URL", o->proxy);
	if (o->cacert && !*o->cacert)
		return refuse(why, "cacert=: a file name is needed");
	if (o->client_cert && !*o->client_cert)
		return refuse(why, "client_cert=: a file name is needed");
	if (o->client_key && !o->client_cert)
		return refuse(why, "client_key=%s: only with client_cert=FILE", o->client_key);
	return 0;
}

int options_check(const struct opts *o, struct opt_values *v, char **why)
{
	*v = (struct opt_values){ .threshold = 1, .cache_size = REMOTE_CACHE_SIZE_DEFAULT,
				  .timeout_ms = REMOTE_TIMEOUT_DEFAULT_MS, .interval = OPTS_INTERVAL_DEFAULT };
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
	return check_remote(o, v, why);
}

int options_check_mode(const struct opts *o, bool store_mode, char **why)
{
	const char *src = o->source ? o->source : "SOURCE";
	bool remote = o->source && location_is_remote(o->source);
	if ((!store_mode || remote) && (o->incoming || o->auto_activate))
		return refuse(why, "incoming= and auto_activate are store-mode options; %s is a kit", src);
	if ((!store_mode || remote) && (o->follow || o->interval))
		return refuse(why, "follow= and interval= are store-mode options; %s is a kit", src);
	if (o->nmirrors && !remote)
		return refuse(why, "mirror=%s: only for a kit on a mirror (SOURCE http://, https:// or oci://); %s is not one",
			      o->mirrors[0], src);
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
	free(o->cache_size);
	free(o->timeout);
	free(o->cacert);
	free(o->client_cert);
	free(o->client_key);
	free(o->proxy);
	free(o->follow);
	free(o->interval);
	for (size_t i = 0; i < o->nmirrors; i++)
		free(o->mirrors[i]);
	*o = (struct opts){ 0 };
}
