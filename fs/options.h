/* stellafs's own mount options (-o trust=..., threshold=, now=, cache=,
 * admin_gid=, incoming=, allow_expired, auto_activate, and for kits on site
 * mirrors mirror=, cache_size=, timeout=, cacert=, proxy=, follow=,
 * interval=; as on a command line or in fstab) and their checks.  Pure: nothing here touches a file or
 * mounts; main.c does both with what these return, and the fuzz target
 * tests/fuzz/fuzz_options.c drives them directly.  The standard FUSE options
 * are left in the arguments for libfuse (fuse_parse_cmdline and
 * fuse_session_new). */
#pragma once

#include <fuse_opt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* mirror= may be given this many times (remote.h: the SOURCE is one more) */
#define OPTS_MIRRORS_MAX 15

struct opts {
	char *trust, *threshold, *now, *cache, *admin_gid, *incoming;
	char *cache_size, *timeout, *cacert, *proxy, *follow, *interval, *client_cert, *client_key;
	char *mirrors[OPTS_MIRRORS_MAX];
	size_t nmirrors;
	int too_many_mirrors;  /* more mirror= than OPTS_MIRRORS_MAX */
	int allow_expired, auto_activate;
	int help, version;
	int nomem;          /* options_parse failed for want of memory */
	char *source;
	char *mountpoint;   /* seen, and left for fuse_parse_cmdline */
};

/* What the checked options say. */
struct opt_values {
	unsigned threshold;        /* 1 when not given */
	int64_t fixed_now;         /* 0: the clock */
	bool has_admin_gid;
	gid_t admin_gid;
	uint64_t cache_size;       /* bytes; REMOTE_CACHE_SIZE_DEFAULT when not given */
	unsigned timeout_ms;       /* REMOTE_TIMEOUT_DEFAULT_MS when not given */
	unsigned interval;         /* follow=: seconds between polls (300) */
};

/* Bounds of the remote options (docs/mirrors.md). */
#define OPTS_CACHE_SIZE_MIN (UINT64_C(1) << 20)
#define OPTS_CACHE_SIZE_MAX (UINT64_C(1) << 50)
#define OPTS_TIMEOUT_MAX 86400u
#define OPTS_INTERVAL_DEFAULT 300u
#define OPTS_INTERVAL_MAX 604800u

/* Take stellafs's options and SOURCE (the first non-option argument) out of
 * args into o; everything else stays for libfuse.  0, or -1 when libfuse
 * refuses the arguments (an option without its value, ...). */
int options_parse(struct fuse_args *args, struct opts *o);

/* The values of threshold=, now=, admin_gid=, cache_size=, timeout=,
 * interval=, and the form of mirror=, follow=, proxy=: 0, or -EINVAL with the
 * usage message (without the program name) in *why, malloc'ed (NULL if
 * there was no memory for it). */
int options_check(const struct opts *o, struct opt_values *v, char **why);

/* incoming=, auto_activate, follow= and interval= need a store; mirror=
 * needs a remote SOURCE (http://, https://, oci://); a remote SOURCE is a
 * kit (direct mode): -EINVAL with *why as above otherwise (store_mode:
 * SOURCE is a directory). */
int options_check_mode(const struct opts *o, bool store_mode, char **why);

/* The FUSE options a read-only, many-reader filesystem wants, added to
 * args (allow_other when root).  0 or -1 (out of memory). */
int options_fuse_defaults(struct fuse_args *args, bool root);

void options_free(struct opts *o);
