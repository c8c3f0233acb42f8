/* stellafs: mount a signed offline kit as a verified read-only tree (see
 * stellafs(8)).  Everything is checked before anything is mounted: a
 * refused kit exits with SPEC's code and one line, and the mount point is
 * left as it was. */
#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <malloc.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "stellafs.h"
#include "util.h"

#define PROG "stellafs"
#define DEFAULT_TRUST "/etc/stella/keys"
#define DEFAULT_CACHE "/var/cache/stellafs"

static const char usage[] =
	"Usage: " PROG " [-f] [-o OPT[,OPT...]] SOURCE MOUNTPOINT\n"
	"\n"
	"Mount a signed offline kit read-only; every byte read is verified against\n"
	"the kit's signed manifest, block by block.\n"
	"\n"
	"SOURCE is a kit file (direct mode: that kit is the one snapshot; nothing is\n"
	"copied) or a store directory (store mode: many snapshots, imports,\n"
	"switching; created if empty).\n"
	"\n"
	"Options:\n"
	"  -f                      stay in the foreground (log to stderr)\n"
	"  -d                      debug: foreground, FUSE requests logged\n"
	"  -o trust=TRUST          PEM public key file or directory of *.pub/*.pem keys\n"
	"                          (default " DEFAULT_TRUST ")\n"
	"  -o threshold=N          distinct trusted signatures required (default 1)\n"
	"  -o now=TIME             judge expiry and freshness at TIME (RFC 3339), not the clock\n"
	"  -o allow_expired        mount a kit whose expiresAt is past (health stays CRITICAL)\n"
	"  -o cache=DIR            where kit indexes persist (default " DEFAULT_CACHE ")\n"
	"  -o admin_gid=GID        members of GID may write the control file (root always may)\n"
	"  -o incoming=DIR         store mode: import kits written (closed) or moved into DIR;\n"
	"                          a refused one goes to STORE/quarantine with a .reason\n"
	"  -o auto_activate        store mode: a successful import becomes current\n"
	"  -o allow_other, ...     standard FUSE mount options (allow_other is the default\n"
	"                          when run as root, so scanners of any user can read)\n"
	"  -h, --help              show this help\n"
	"  -V, --version           show the version\n"
	"\n"
	"Exit codes: 0 mounted, 1 runtime failure (I/O, mount failed), 2 usage,\n"
	"3 malformed kit, 4 content mismatch, 5 signature, 6 expired.\n"
	"Store mode: the snapshots were checked at import; a mount needs a store.\n"
	"\n"
	"The tree: current -> snapshots/VERSION, feeds -> current/feeds, snapshots/,\n"
	"status, status.json, health, metrics, control.  See stellafs(8).\n";

struct opts {
	char *trust, *threshold, *now, *cache, *admin_gid, *incoming;
	int allow_expired, auto_activate;
	int help, version;
	char *source;
	char *mountpoint;   /* seen, and left for fuse_parse_cmdline */
};

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
		o->source = strdup(arg);
		return 0;
	}
	if (key == FUSE_OPT_KEY_NONOPT && !o->mountpoint)
		o->mountpoint = strdup(arg);
	return 1;
}

static int fail_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, PROG ": ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, " (try '" PROG " --help')\n");
	va_end(ap);
	return STELLA_EXIT_USAGE;
}

static bool daemonized;

/* The sd_notify protocol without libsystemd: one datagram to the socket
 * systemd names in NOTIFY_SOCKET (Type=notify units).  Type=forking works
 * as well: without -f we detach only once mounted. */
static void sd_notify_send(const char *msg)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, path, strlen(path));
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = 0; /* abstract namespace */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0) {
		/* nobody listening: nothing to tell */
	}
	close(fd);
}

static void log_line(int prio, const char *line)
{
	if (daemonized)
		syslog(prio, "%s", line);
	else
		fprintf(stderr, PROG ": %s\n", line);
}

int main(int argc, char **argv)
{
	setlocale(LC_ALL, "");
	if (strcmp(nl_langinfo(CODESET), "UTF-8"))
		setlocale(LC_CTYPE, "C.UTF-8");

	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct opts o = { 0 };
	struct fuse_cmdline_opts cl = { 0 };
	struct stellafs sf = { .threshold = 1 };
	struct fuse_session *se = NULL;
	struct stella_err e = { 0 };
	int rc = STELLA_EXIT_RUNTIME, r;
	bool mounted = false;

	/* A first mount reads a manifest of tens of MiB more than once; from
	 * the heap the second read reuses the pages the first faulted in,
	 * from mmap (glibc's default above 128 KiB) each faults them anew.
	 * What is kept is given back once the index is built. */
	mallopt(M_MMAP_THRESHOLD, 256 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	pthread_mutex_init(&sf.lock, NULL);
	pthread_mutex_init(&sf.cmd_lock, NULL);
	pthread_mutex_init(&sf.inval_lock, NULL);
	pthread_mutex_init(&sf.refresh_lock, NULL);
	pthread_cond_init(&sf.inval_cond, NULL);
	stella_log_set(log_line);

	if (fuse_opt_parse(&args, &o, spec, opt_proc) != 0) {
		rc = fail_usage("bad options");
		goto out;
	}
	if (o.help) {
		fputs(usage, stdout);
		printf("\nFUSE options:\n");
		fflush(stdout);
		fuse_lowlevel_help();
		rc = 0;
		goto out;
	}
	if (o.version) {
		printf(PROG " " STELLA_VERSION " (FUSE %s)\n", fuse_pkgversion());
		rc = 0;
		goto out;
	}
	/* libfuse's own complaint about a mount point is two lines and says
	 * "bad command line": check it first, in our words. */
	struct stat mst;
	if (o.mountpoint) {
		const char *why = stat(o.mountpoint, &mst) < 0 ? strerror(errno) :
				  !S_ISDIR(mst.st_mode) ? "not a directory" : NULL;
		if (why) {
			rc = fail_usage("mount point %s: %s", o.mountpoint, why);
			goto out;
		}
	}
	if (fuse_parse_cmdline(&args, &cl) != 0) {
		rc = fail_usage("bad command line");
		goto out;
	}
	if (!o.source || !cl.mountpoint) {
		rc = fail_usage("expected SOURCE and MOUNTPOINT");
		goto out;
	}

	/* Options: every one checked before the kit is touched.  Paths are made
	 * absolute: the daemon runs in / once detached, and reload re-reads
	 * the kit and the trust store by name. */
	char *abs_source = realpath(o.source, NULL), *abs_trust = NULL;
	if (!abs_source) {
		rc = fail_usage("%s: %s", o.source, strerror(errno));
		goto out;
	}
	free(o.source);
	o.source = abs_source;
	if (o.trust && (abs_trust = realpath(o.trust, NULL))) {
		free(o.trust);
		o.trust = abs_trust;
	}
	sf.source = o.source;
	sf.trust_path = o.trust ? o.trust : (char *)DEFAULT_TRUST;
	sf.cache_dir = o.cache ? o.cache : (char *)DEFAULT_CACHE;
	sf.allow_expired = o.allow_expired;
	if (o.threshold) {
		uint64_t n;
		if (parse_u64(o.threshold, &n) < 0 || n < 1 || n > 256) {
			rc = fail_usage("threshold=%s: a number from 1 to 256", o.threshold);
			goto out;
		}
		sf.threshold = (unsigned)n;
	}
	if (o.now && time_parse(o.now, &sf.fixed_now) < 0) {
		rc = fail_usage("now=%s: not an RFC 3339 time", o.now);
		goto out;
	}
	if (o.admin_gid) {
		uint64_t n;
		if (parse_u64(o.admin_gid, &n) < 0 || n > 0x7fffffff) {
			rc = fail_usage("admin_gid=%s: not a group id", o.admin_gid);
			goto out;
		}
		sf.has_admin_gid = true;
		sf.admin_gid = (gid_t)n;
	}
	struct stat st;
	if (stat(o.source, &st) < 0) {
		rc = fail_usage("%s: %s", o.source, strerror(errno));
		goto out;
	}
	if (o.cache) {
		char *abs_cache = realpath(o.cache, NULL);
		if (abs_cache) {
			free(o.cache);
			o.cache = abs_cache;
			sf.cache_dir = o.cache;
		}
	}
	bool store_mode = S_ISDIR(st.st_mode);
	if (!store_mode && (o.incoming || o.auto_activate)) {
		rc = fail_usage("incoming= and auto_activate are store-mode options; %s is a kit file", o.source);
		goto out;
	}
	if (o.incoming) {
		char *abs_in = realpath(o.incoming, NULL);
		struct stat ist;
		if (!abs_in || stat(abs_in, &ist) < 0 || !S_ISDIR(ist.st_mode)) {
			rc = fail_usage("incoming=%s: not a directory", o.incoming);
			free(abs_in);
			goto out;
		}
		free(o.incoming);
		o.incoming = abs_in;
	}
	sf.incoming = o.incoming;
	sf.auto_activate = o.auto_activate;
	if ((r = trust_load(sf.trust_path, &sf.trust, &e)) < 0) {
		rc = stella_exit_code(r);
		fprintf(stderr, PROG ": %s\n", stella_err_text(&e, r));
		goto out;
	}
	sf.trust_ok = true;
	sf.mounted_at = (int64_t)time(NULL);

	if (store_mode) {
		/* The store: its snapshots were verified when imported.  Opened
		 * here to refuse a bad one before mounting, then closed: SQLite's
		 * POSIX locks do not survive the fork into the background, and a
		 * connection without them makes other processes delete the WAL
		 * under it.  It is opened again for good after daemonizing. */
		struct store *probe = NULL;
		if ((r = store_open(o.source, true, &probe, &e)) < 0) {
			rc = stella_exit_code(r);
			fprintf(stderr, PROG ": %s\n", stella_err_text(&e, r));
			goto out;
		}
		store_close(probe);
	} else {
		/* The kit: signature, expiry, structure, index; refused before mounting. */
		struct snapshot_opts so = {
			.kit = o.source, .trust = sf.trust, .threshold = sf.threshold, .now = sf_now(&sf),
			.allow_expired = sf.allow_expired, .cache_dir = sf.cache_dir,
		};
		struct snapshot *snap = NULL;
		if ((r = snapshot_open_kit(&so, &snap, &e)) < 0) {
			rc = stella_exit_code(r);
			fprintf(stderr, PROG ": %s\n", stella_err_text(&e, r));
			goto out;
		}
		sf.signers = snap->signers;
		malloc_trim(0);
		if ((r = sf_add_direct(&sf, snap)) < 0) {
			snapshot_unref(snap);
			goto out;
		}
	}

	/* Defaults a read-only, many-reader filesystem wants. */
	fuse_opt_add_arg(&args, "-odefault_permissions");
	fuse_opt_add_arg(&args, "-ofsname=stellafs");
	fuse_opt_add_arg(&args, "-osubtype=stellafs");
	if (getuid() == 0)
		fuse_opt_add_arg(&args, "-oallow_other");

	se = fuse_session_new(&args, &stellafs_ops, sizeof(stellafs_ops), &sf);
	if (!se) {
		fprintf(stderr, PROG ": bad FUSE options\n");
		rc = STELLA_EXIT_USAGE;
		goto out;
	}
	if (fuse_set_signal_handlers(se) != 0)
		goto out;
	if (fuse_session_mount(se, cl.mountpoint) != 0) {
		fprintf(stderr, PROG ": mounting on %s failed\n", cl.mountpoint);
		goto out;
	}
	mounted = true;
	sf.se = se;
	if (!cl.foreground) {
		openlog(PROG, LOG_PID, LOG_DAEMON);
		daemonized = true;
	}
	if (fuse_daemonize(cl.foreground) != 0)
		goto out;
	if (store_mode) {
		sf.store_version = -2; /* the first fill is not a switch */
		if ((r = store_open(o.source, false, &sf.store, &e)) < 0 || (r = sf_refresh(&sf, &e)) < 0) {
			stella_log(LOG_ERR, "%s", stella_err_text(&e, r));
			goto out;
		}
	}
	if (sf_start_inval(&sf) < 0)
		goto out;
	if (sf.store)
		stella_log(LOG_INFO, "mounted store %s on %s: %zu snapshot(s), current %s", o.source, cl.mountpoint,
			   sf.nslots, *sf.current ? sf.current : "none");
	else
		stella_log(LOG_INFO, "mounted %s %s on %s%s", sf.slots[0].s->identity->kit_id, sf.current,
			   cl.mountpoint, sf.slots[0].s->index_cached ? " (cached index)" : "");
	/* The watcher starts after daemonizing: threads do not survive fork. */
	if ((r = sf_start_watch(&sf, &e)) < 0)
		stella_log(LOG_ERR, "%s", stella_err_text(&e, r));

	sd_notify_send("READY=1\nSTATUS=serving\n");
	struct fuse_loop_config *lc = fuse_loop_cfg_create();
	if (!lc)
		goto out;
	fuse_loop_cfg_set_clone_fd(lc, cl.clone_fd);
	fuse_loop_cfg_set_idle_threads(lc, cl.max_idle_threads <= 100 ? cl.max_idle_threads : 10);
	fuse_loop_cfg_set_max_threads(lc, cl.max_threads >= 2 && cl.max_threads <= 256 ? cl.max_threads : 16);
	r = cl.singlethread ? fuse_session_loop(se) : fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	rc = r == 0 ? 0 : STELLA_EXIT_RUNTIME;
	sd_notify_send("STOPPING=1\n");
out:
	if (se) {
		if (mounted)
			fuse_session_unmount(se);
		fuse_remove_signal_handlers(se);
		fuse_session_destroy(se);
	}
	sf_stop_watch(&sf);
	sf_stop_inval(&sf);
	sf_free_slots(&sf);
	store_close(sf.store);
	trust_free(sf.trust);
	free(cl.mountpoint);
	fuse_opt_free_args(&args);
	free(o.source);
	free(o.mountpoint);
	free(o.trust);
	free(o.threshold);
	free(o.now);
	free(o.cache);
	free(o.admin_gid);
	free(o.incoming);
	return rc;
}
