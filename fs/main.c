/* stellafs: mount a signed offline kit as a verified read-only tree (see
 * stellafs(8)).  Everything is checked before anything is mounted: a
 * refused kit exits with the code docs/kit-format.md section 12 gives, and one line, and the mount point is
 * left as it was. */
#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sysmacros.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "fdcache.h"
#include "index.h"
#include "kithead.h"
#include "kitpath.h"
#include "location.h"
#include "options.h"
#include "signals.h"
#include "stellafs.h"
#include "source.h"
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
	"copied), a kit on a site mirror (http://HOST[:PORT]/PATH, https://...,\n"
	"oci://REGISTRY/REPOSITORY:TAG or @sha256:HEX: direct mode, fetched lazily,\n"
	"every block verified), or a store directory (store mode: many snapshots,\n"
	"imports, switching; created if empty).\n"
	"\n"
	"Options:\n"
	"  -f                      stay in the foreground (log to stderr)\n"
	"  -d                      debug: foreground, FUSE requests logged\n"
	"  -o trust=TRUST          PEM public key file or directory of *.pub/*.pem keys\n"
	"                          (default " DEFAULT_TRUST ")\n"
	"  -o threshold=N          distinct trusted signatures required (default 1)\n"
	"  -o now=TIME             judge expiry and freshness at TIME (RFC 3339), not the clock\n"
	"  -o allow_expired        mount a kit whose expiresAt is past (health stays CRITICAL)\n"
	"  -o cache=DIR            where kit and store-snapshot indexes persist (default " DEFAULT_CACHE ")\n"
	"  -o admin_gid=GID        members of GID may write the control file (root always may)\n"
	"  -o incoming=DIR         store mode: import kits written (closed) or moved into DIR;\n"
	"                          a refused one goes to STORE/quarantine with a .reason\n"
	"  -o auto_activate        store mode: a successful import becomes current\n"
	"  -o mirror=URL           another location of the same kit, tried in order after\n"
	"                          SOURCE (repeat for more; a comma in a URL as \\,)\n"
	"  -o cache_size=SIZE      fetched kit data kept under cache= (K, M, G; default 1G;\n"
	"                          the kit's head is kept on top of it; below 2M the head\n"
	"                          only; other kits no mount uses are pruned to fit)\n"
	"  -o timeout=SECONDS      a read no mirror serves in time fails with EIO; a mount\n"
	"                          that cannot fetch the kit's head in time fails (default 30)\n"
	"  -o cacert=FILE          CA bundle for https (default: the system store)\n"
	"  -o client_cert=FILE     https client certificate (PEM); client_key=FILE its key\n"
	"                          (default: in the same file)\n"
	"  -o proxy=URL            HTTP proxy (default: http_proxy/https_proxy/no_proxy)\n"
	"  -o follow=URL           store mode: poll this kit (http(s):// or oci://) and\n"
	"                          import, then activate, each newer one published there\n"
	"  -o interval=SECONDS     follow=: seconds between polls (default 300)\n"
	"  -o allow_other, ...     standard FUSE mount options (allow_other is the default\n"
	"                          when run as root, so scanners of any user can read)\n"
	"  -h, --help              show this help\n"
	"  -V, --version           show the version\n"
	"\n"
	"Exit codes: 0 mounted, 1 runtime failure (I/O, mount failed), 2 usage,\n"
	"3 malformed kit, 4 content mismatch, 5 signature, 6 expired.\n"
	"A kit on a mirror that no mirror serves in time: 1.  See docs/mirrors.md.\n"
	"Store mode: the snapshots were checked at import; a mount needs a store.\n"
	"\n"
	"The tree: current -> snapshots/VERSION, feeds -> current/feeds, snapshots/,\n"
	"status, status.json, health, metrics, control.  See stellafs(8).\n";

static int fail_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail_usage(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	stella_one_line(msg);
	fprintf(stderr, PROG ": %s (try '" PROG " --help')\n", msg);
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

/* STATUS= for `systemctl status`: the overall health, the first check
 * that is not OK, and the current snapshot, e.g. "WARNING (expiry: ...),
 * current 2025.01.15".  Polled, not hooked into every change: health also
 * moves with the clock (expiry, feed age) and the store's disk.  Sent when
 * the text changes, and again now and then (status_main says why). */
#define STATUS_POLL_SECS 2
#define STATUS_EARLY_TICKS 5    /* the first 10 s */
#define STATUS_RESEND_TICKS 15  /* then every 30 s */

struct status_notifier {
	struct stellafs *sf;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool quit, running;
};

static void status_text(struct stellafs *sf, char *out, size_t n)
{
	size_t len = 0;
	char *h = vfile_content(sf, INO_HEALTH, &len);
	if (!h) {
		snprintf(out, n, "serving (health unknown: out of memory)");
		return;
	}
	/* "LEVEL\nWORD     label: detail\n...": the level, then the first
	 * check whose word is not OK */
	char *nl = strchr(h, '\n');
	const char *bad = NULL;
	if (nl) {
		*nl = 0;
		for (char *l = nl + 1; *l; ) {
			char *e = strchr(l, '\n');
			if (e)
				*e = 0;
			if (strncmp(l, "OK ", 3) != 0) {
				bad = l;
				break;
			}
			if (!e)
				break;
			l = e + 1;
		}
	}
	if (bad) {
		bad += strcspn(bad, " ");
		bad += strspn(bad, " ");
	}
	struct snapshot *s = sf_current(sf, NULL);
	snprintf(out, n, "%s%s%.200s%s, current %s", h, bad ? " (" : "", bad ? bad : "", bad ? ")" : "",
		 s ? s->version : "none");
	snapshot_unref(s);
	free(h);
}

static void *status_main(void *arg)
{
	struct status_notifier *sn = arg;
	char last[512] = "", now[512], msg[600];
	unsigned tick = 0;
	pthread_mutex_lock(&sn->lock);
	while (!sn->quit) {
		pthread_mutex_unlock(&sn->lock);
		status_text(sn->sf, now, sizeof(now));
		/* Also sent unchanged during the first ticks and then every
		 * STATUS_RESEND_TICKS: under Type=forking systemd drops what
		 * arrives before it has learned the main PID from the parent's
		 * exit, and the text must not wait for the next change. */
		if (strcmp(now, last) != 0 || tick < STATUS_EARLY_TICKS || tick % STATUS_RESEND_TICKS == 0) {
			snprintf(msg, sizeof(msg), "STATUS=%s\n", now);
			sd_notify_send(msg);
			memcpy(last, now, sizeof(last));
		}
		tick++;
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		t.tv_sec += STATUS_POLL_SECS;
		pthread_mutex_lock(&sn->lock);
		while (!sn->quit && pthread_cond_timedwait(&sn->cond, &sn->lock, &t) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&sn->lock);
	return NULL;
}

/* Only under a service manager: elsewhere nobody reads STATUS=. */
static void status_start(struct status_notifier *sn, struct stellafs *sf)
{
	if (!getenv("NOTIFY_SOCKET"))
		return;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sn->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&sn->lock, NULL);
	sn->sf = sf;
	sn->quit = false;
	sn->running = pthread_create(&sn->thread, NULL, status_main, sn) == 0;
	if (!sn->running) {
		pthread_cond_destroy(&sn->cond);
		pthread_mutex_destroy(&sn->lock);
		stella_log(LOG_WARNING, "cannot start the status thread: systemctl status shows no health");
	}
}

static void status_stop(struct status_notifier *sn)
{
	if (!sn->running)
		return;
	pthread_mutex_lock(&sn->lock);
	sn->quit = true;
	pthread_cond_signal(&sn->cond);
	pthread_mutex_unlock(&sn->lock);
	pthread_join(sn->thread, NULL);
	pthread_cond_destroy(&sn->cond);
	pthread_mutex_destroy(&sn->lock);
	sn->running = false;
}

/* Detach into the background, but let the parent exit only with the
 * daemon's verdict: 0 once it serves, or the exit code and the one line of
 * a failure that came after the fork (a store that cannot be read back).
 * fuse_daemonize() lets the parent exit 0 right after the fork.  Returns
 * the pipe's write end in the child; the parent never returns. */
static int detach(void)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		/* a stop signal would only end a session this process no
		 * longer runs: Ctrl-C or a timeout must end the wait */
		stop_signals_default();
		close(p[1]);
		char buf[600];
		size_t n = 0;
		ssize_t k;
		while (n < sizeof(buf) - 1 && (k = read(p[0], buf + n, sizeof(buf) - 1 - n)) != 0) {
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0)
				break;
			n += (size_t)k;
		}
		buf[n] = 0;
		if (n == 0) {
			while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
				;
			fprintf(stderr, PROG ": the daemon ended while starting (see the system log)\n");
			_exit(STELLA_EXIT_RUNTIME);
		}
		int code = buf[0] - '0';
		if (code == 0)
			_exit(0);
		/* a failed daemon is gone before its parent says so */
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		fprintf(stderr, PROG ": %s\n", buf + 1);
		_exit(code > 0 && code <= 9 ? code : STELLA_EXIT_RUNTIME);
	}
	close(p[0]);
	if (setsid() < 0 || chdir("/") < 0) {
		/* still a daemon, of the parent's session */
	}
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		if (null > 2)
			close(null);
	}
	return p[1];
}

/* Tell the waiting parent: rc 0 (serving) or the failure's code and line.
 * When "serving" cannot be written, the descriptor stays open and the
 * error is returned: the caller stops and tells the failure instead. */
static int detach_done(int *fd, int code, const char *msg)
{
	if (*fd < 0)
		return 0;
	char buf[600];
	int n = snprintf(buf, sizeof(buf), "%c%s", '0' + (code >= 0 && code <= 9 ? code : 1), code ? msg : "");
	if (write(*fd, buf, (size_t)MIN(n, (int)sizeof(buf) - 1)) < 0) {
		int r = -errno;
		/* kept open for a failure's line (see main) */
		if (code == 0)
			return r;
	}
	close(*fd);
	*fd = -1;
	return 0;
}

/* Descriptors the daemon keeps besides its two budgets below: stdio,
 * /dev/fuse (one more per worker with clone_fd: counted apart), syslog,
 * inotify and its pipe, the store (five directories, store.db, its WAL and
 * shm, its lock), one import's kit, temporaries and index writer, a
 * direct mount's kit, a trust store being read. */
#define FD_RESERVE 64
#define FD_CONNS_MAX 64     /* index connections: 8 per busy snapshot */
#define FD_FILES_MAX 1024   /* blobs and trees: what open files read */

/* The daemon's descriptors are bounded by configuration, not by the store's
 * history or by how many files users hold open: index connections and
 * store files are two budgets (core/index.c, core/fdcache.c) sized from
 * RLIMIT_NOFILE, whose soft limit is first raised to the hard one (as
 * systemd advises: no select(2) here).  docs/hardening.md, "Resource
 * budgets". */
static void fd_budgets(unsigned threads, char *said, size_t n)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t soft = rl.rlim_cur;
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			rl.rlim_cur = soft;
	}
	uint64_t lim = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
	uint64_t avail = lim > FD_RESERVE + threads ? lim - FD_RESERVE - threads : 0;
	unsigned conns = (unsigned)MIN(MAX(avail / 4, 4), FD_CONNS_MAX);
	unsigned files = (unsigned)MIN(MAX(avail - MIN(avail, conns), 8), FD_FILES_MAX);
	index_set_conn_budget(conns);
	fdcache_set_max(files);
	snprintf(said, n, "descriptors: limit %llu, index connections <= %u, store files <= %u",
		 (unsigned long long)lim, conns, files);
}

static void log_line(int prio, const char *line)
{
	if (daemonized)
		syslog(prio, "%s", line);
	else
		fprintf(stderr, PROG ": %s\n", line);
}

/* Everything main owns, from the command line to the unmount: each phase
 * below fills a part of it, and daemon_end undoes all of it.  A phase
 * returns true to go on; false with rc set (and fail_msg for a failure
 * after the fork) to stop. */
struct daemon {
	struct fuse_args args;
	struct opts o;
	struct fuse_cmdline_opts cl;
	struct stellafs sf;
	struct fuse_session *se;
	struct status_notifier sn;
	int rc;
	int status_fd;            /* detached: the pipe to the waiting parent */
	bool mounted;
	bool store_mode;
	bool remote;              /* SOURCE is a kit on a mirror */
	atomic_bool guard_off;    /* the stops left are local: exit_guard_main stands down */
	char budgets[160];
	char fail_msg[512];
};

static void daemon_init(struct daemon *d, int argc, char **argv)
{
	int r = stop_signals_start();
	if (r < 0) {
		fprintf(stderr, PROG ": cannot take the stop signals: %s\n", strerror(-r));
		exit(STELLA_EXIT_RUNTIME);
	}
	setlocale(LC_ALL, "");
	if (strcmp(nl_langinfo(CODESET), "UTF-8"))
		setlocale(LC_CTYPE, "C.UTF-8");
	d->args = (struct fuse_args)FUSE_ARGS_INIT(argc, argv);
	d->sf.opt.threshold = 1;
	d->rc = STELLA_EXIT_RUNTIME;
	d->status_fd = -1;
	/* A first mount reads a manifest of tens of MiB more than once; from
	 * the heap the second read reuses the pages the first faulted in,
	 * from mmap (glibc's default above 128 KiB) each faults them anew.
	 * What is kept is given back once the index is built. */
	mallopt(M_MMAP_THRESHOLD, 256 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	struct stellafs *sf = &d->sf;
	pthread_mutex_init(&sf->lock, NULL);
	pthread_mutex_init(&sf->cmd_lock, NULL);
	pthread_mutex_init(&sf->inval.lock, NULL);
	pthread_mutex_init(&sf->journal.lock, NULL);
	pthread_mutex_init(&sf->ops.lock, NULL);
	pthread_mutex_init(&sf->refresh_lock, NULL);
	pthread_rwlock_init(&sf->trust_lock, NULL);
	pthread_cond_init(&sf->inval.cond, NULL);
	pthread_mutex_init(&sf->fetch.lock, NULL);
	pthread_mutex_init(&sf->follow.lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sf->follow.cond, &ca);
	pthread_condattr_destroy(&ca);
	sf->opt.timeout_ms = REMOTE_TIMEOUT_DEFAULT_MS;
	stella_log_set(log_line);
}

/* The command line: --help, --version, SOURCE and MOUNTPOINT. */
static bool parse_command_line(struct daemon *d)
{
	struct opts *o = &d->o;
	if (options_parse(&d->args, o) != 0) {
		if (o->nomem)
			fprintf(stderr, PROG ": %s\n", strerror(ENOMEM));
		else
			d->rc = fail_usage("bad options");
		return false;
	}
	if (o->help) {
		fputs(usage, stdout);
		printf("\nFUSE options:\n");
		fflush(stdout);
		fuse_lowlevel_help();
		d->rc = 0;
		return false;
	}
	if (o->version) {
		printf(PROG " " STELLA_VERSION " (FUSE %s)\n", fuse_pkgversion());
		d->rc = 0;
		return false;
	}
	/* libfuse's own complaint about a mount point is two lines and says
	 * "bad command line": check it first, in our words. */
	struct stat mst;
	if (o->mountpoint) {
		const char *why = stat(o->mountpoint, &mst) < 0 ? strerror(errno) :
				  !S_ISDIR(mst.st_mode) ? "not a directory" : NULL;
		if (why) {
			d->rc = fail_usage("mount point %s: %s", o->mountpoint, why);
			return false;
		}
	}
	if (fuse_parse_cmdline(&d->args, &d->cl) != 0) {
		d->rc = fail_usage("bad command line");
		return false;
	}
	if (!o->source || !d->cl.mountpoint) {
		d->rc = fail_usage("expected SOURCE and MOUNTPOINT");
		return false;
	}
	return true;
}

/* The options of kits on mirrors (docs/mirrors.md): cacert= must name a
 * readable file, made absolute (the daemon runs in /). */
static bool check_remote_options(struct daemon *d, const struct opt_values *ov)
{
	struct opts *o = &d->o;
	struct stellafs *sf = &d->sf;
	struct { const char *name; char **val; } files[] = {
		{ "cacert", &o->cacert }, { "client_cert", &o->client_cert }, { "client_key", &o->client_key },
	};
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char *v = *files[i].val;
		if (!v)
			continue;
		errno = 0;
		char *abs = realpath(v, NULL);
		struct stat st;
		if (!abs || stat(abs, &st) < 0 || !S_ISREG(st.st_mode) || access(abs, R_OK) < 0) {
			d->rc = fail_usage("%s=%s: %s", files[i].name, v, errno ? strerror(errno) : "not a readable file");
			free(abs);
			return false;
		}
		free(v);
		*files[i].val = abs;
	}
	sf->opt.mirrors = (const char *const *)o->mirrors;
	sf->opt.nmirrors = o->nmirrors;
	sf->opt.follow = o->follow;
	sf->opt.interval = ov->interval;
	sf->opt.timeout_ms = ov->timeout_ms;
	sf->opt.remote = (struct remote_opts){
		.cache_size = ov->cache_size, .timeout_ms = ov->timeout_ms, .cacert = o->cacert, .proxy = o->proxy,
		.client_cert = o->client_cert, .client_key = o->client_key,
	};
	return true;
}

/* Options: every one checked before the kit is touched.  Paths are made
 * absolute: the daemon runs in / once detached, and reload re-reads the
 * kit and the trust store by name. */
static bool check_options(struct daemon *d)
{
	struct opts *o = &d->o;
	struct stellafs *sf = &d->sf;
	d->remote = location_is_remote(o->source);
	char *abs_source = d->remote ? strdup(o->source) : realpath(o->source, NULL), *abs_trust = NULL;
	if (!abs_source) {
		if (errno == ENOMEM) /* ours, not the operator's: exit 1 */
			fprintf(stderr, PROG ": %s: %s\n", o->source, strerror(errno));
		else
			d->rc = fail_usage("%s: %s", o->source, strerror(errno));
		return false;
	}
	free(o->source);
	o->source = abs_source;
	if (o->trust && (abs_trust = realpath(o->trust, NULL))) {
		free(o->trust);
		o->trust = abs_trust;
	}
	sf->opt.source = o->source;
	sf->opt.trust_path = o->trust ? o->trust : (char *)DEFAULT_TRUST;
	sf->opt.cache_dir = o->cache ? o->cache : (char *)DEFAULT_CACHE;
	sf->opt.allow_expired = o->allow_expired;
	struct opt_values ov;
	char *bad = NULL;
	if (options_check(o, &ov, &bad) < 0) {
		d->rc = fail_usage("%s", bad ? bad : strerror(ENOMEM));
		free(bad);
		return false;
	}
	sf->opt.threshold = ov.threshold;
	sf->opt.fixed_now = ov.fixed_now;
	sf->opt.has_admin_gid = ov.has_admin_gid;
	sf->opt.admin_gid = ov.admin_gid;
	if (!check_remote_options(d, &ov))
		return false;
	struct stat st = { .st_mode = S_IFREG }; /* a kit on a mirror is a kit */
	if (!d->remote && stat(o->source, &st) < 0) {
		d->rc = fail_usage("%s: %s", o->source, strerror(errno));
		return false;
	}
	if (o->cache) {
		char *abs_cache = realpath(o->cache, NULL);
		if (abs_cache) {
			free(o->cache);
			o->cache = abs_cache;
			sf->opt.cache_dir = o->cache;
		}
	}
	/* fetched bytes are kept beside the indexes, when that directory is
	 * fit for them (private; else nothing is kept on disk) */
	sf->opt.remote.cache_dir = sf->opt.cache_dir;
	d->store_mode = S_ISDIR(st.st_mode);
	if (options_check_mode(o, d->store_mode, &bad) < 0) {
		d->rc = fail_usage("%s", bad ? bad : strerror(ENOMEM));
		free(bad);
		return false;
	}
	if (o->incoming) {
		char *abs_in = realpath(o->incoming, NULL);
		struct stat ist;
		if (!abs_in || stat(abs_in, &ist) < 0 || !S_ISDIR(ist.st_mode)) {
			d->rc = fail_usage("incoming=%s: not a directory", o->incoming);
			free(abs_in);
			return false;
		}
		free(o->incoming);
		o->incoming = abs_in;
	}
	sf->opt.incoming = o->incoming;
	sf->opt.auto_activate = o->auto_activate;
	return true;
}

/* The worker count libfuse will use: -o max_threads, within its bounds. */
static unsigned max_threads(const struct fuse_cmdline_opts *cl)
{
	return cl->max_threads >= 2 && cl->max_threads <= 256 ? cl->max_threads : 16;
}

/* A kit on a mirror, verified: its fetched bytes are kept under cache=
 * by its signed manifest's digest, the head pinned (core/remote.h), so
 * that every mirror of it shares them and a remount with every mirror
 * down still mounts. */
static int bind_cache(struct snapshot *s, struct stella_err *e)
{
	uint64_t head_len = s->head_len;
	char key[65];
	/* a kit that carries its index (docs/kit-format.md) said where its
	 * head ends; an older one is read again up to its last head member */
	int r = s->carried ? 0 : kit_head_extent(s->src, &head_len, e);
	if (r < 0)
		return r;
	hex_encode(s->manifest_sha256, 32, key);
	return remote_bind(source_bytes(s->src), key, head_len, e);
}

/* The kit SOURCE names, opened and checked as a snapshot: a local file
 * by its path; a kit on a mirror through core/location.h, fetching its
 * head only (docs/mirrors.md). */
static int open_kit(struct daemon *d, struct snapshot **out, struct stella_err *e)
{
	struct stellafs *sf = &d->sf;
	struct snapshot_opts so = {
		.kit = d->o.source, .trust = sf->trust.keys, .threshold = sf->opt.threshold, .now = sf_now(sf),
		.allow_expired = sf->opt.allow_expired, .cache_dir = sf->opt.cache_dir,
	};
	if (d->remote) {
		struct remote_opts ro = sf->opt.remote;
		if (!ro.cache_dir || !snapshot_cache_usable(ro.cache_dir))
			ro.cache_dir = NULL;
		int r = location_open(d->o.source, sf->opt.mirrors, sf->opt.nmirrors, &ro, &so.bytes, e);
		if (r < 0)
			return r;
	}
	int r = snapshot_open_kit(&so, out, e);
	if (r == 0 && d->remote && (r = bind_cache(*out, e)) < 0) {
		snapshot_unref(*out);
		*out = NULL;
	}
	return r;
}

/* The trust store, then the source: a refused kit or store exits with its
 * code before anything is mounted. */
static bool check_source(struct daemon *d)
{
	struct stellafs *sf = &d->sf;
	struct stella_err e = { 0 };
	int r;
	if ((r = trust_load(sf->opt.trust_path, &sf->trust.keys, &e)) < 0) {
		d->rc = stella_exit_code(r);
		fprintf(stderr, PROG ": %s\n", stella_err_text(&e, r));
		return false;
	}
	sf->trust.ok = true;
	sf->opt.mounted_at = (int64_t)time(NULL);
	fd_budgets(max_threads(&d->cl), d->budgets, sizeof(d->budgets));
	sf->opt.base_nice = tune_nice();
	if (d->store_mode) {
		/* The store: its snapshots were verified when imported.  Opened
		 * here to refuse a bad one before mounting, then closed: SQLite's
		 * POSIX locks do not survive the fork into the background, and a
		 * connection without them makes other processes delete the WAL
		 * under it.  It is opened again for good after daemonizing. */
		struct store *probe = NULL;
		if ((r = store_open(d->o.source, true, &probe, &e)) < 0) {
			d->rc = stella_exit_code(r);
			fprintf(stderr, PROG ": %s\n", stella_err_text(&e, r));
			return false;
		}
		store_close(probe);
		return true;
	}
	/* The kit: signature, expiry, structure, index; refused before mounting. */
	struct snapshot *snap = NULL;
	if ((r = open_kit(d, &snap, &e)) < 0) {
		d->rc = stella_exit_code(r);
		stella_err_hint(&e, r, -EKEYEXPIRED, SF_EXPIRED_HINT);
		fprintf(stderr, PROG ": %s\n", stella_err_text(&e, r));
		return false;
	}
	sf->trust.signers = snap->signers;
	malloc_trim(0);
	if (d->remote && !d->cl.foreground) {
		/* Checked, and closed again: the transfers' threads and
		 * connections would not survive the fork into the background.
		 * Opened again for good after it (start_daemon), from what this
		 * open left in the cache (the head, the index). */
		snapshot_unref(snap);
		return true;
	}
	if ((r = sf_add_direct(sf, snap)) < 0) {
		snapshot_unref(snap);
		return false;
	}
	return true;
}

/* The FUSE session, mounted; then, without -f, into the background. */
static bool mount_session(struct daemon *d)
{
	/* Defaults a read-only, many-reader filesystem wants. */
	if (options_fuse_defaults(&d->args, getuid() == 0) < 0)
		return false;
	d->se = fuse_session_new(&d->args, &stellafs_ops, sizeof(stellafs_ops), &d->sf);
	if (!d->se) {
		fprintf(stderr, PROG ": bad FUSE options\n");
		d->rc = STELLA_EXIT_USAGE;
		return false;
	}
	stop_signals_session(d->se);
	if (fuse_session_mount(d->se, d->cl.mountpoint) != 0) {
		fprintf(stderr, PROG ": mounting on %s failed\n", d->cl.mountpoint);
		return false;
	}
	d->mounted = true;
	d->sf.se = d->se;
	d->sf.opt.mountpoint = d->cl.mountpoint;
	/* Once, now: looked up by the mount point's name later, a rename of a
	 * directory above it would lose it, and with it the check that keeps
	 * an import from reading through this mount (fs/kitpath.c). */
	char dev[64];
	unsigned maj, min;
	if (mount_devname(d->cl.mountpoint, dev) == 0 && sscanf(dev, "%u:%u", &maj, &min) == 2)
		d->sf.opt.self_dev = makedev(maj, min);
	if (!d->cl.foreground) {
		if ((d->status_fd = detach()) < 0) {
			fprintf(stderr, PROG ": cannot detach: %s\n", strerror(-d->status_fd));
			return false;
		}
		openlog(PROG, LOG_PID, LOG_DAEMON);
		daemonized = true;
	}
	return true;
}

/* After the fork: the store opened for good and read, the threads. */
static bool start_daemon(struct daemon *d)
{
	struct stellafs *sf = &d->sf;
	struct stella_err e = { 0 };
	int r;
	if (d->store_mode) {
		sf->tab.store_version = -2; /* the first fill is not a switch */
		if ((r = store_open(d->o.source, false, &sf->store, &e)) < 0 || (r = sf_changed(sf, &e)) < 0) {
			d->rc = stella_exit_code(r);
			stella_log(LOG_ERR, "%s", stella_err_text(&e, r));
			snprintf(d->fail_msg, sizeof(d->fail_msg), "%s", stella_err_text(&e, r));
			return false;
		}
		malloc_trim(0); /* the manifests the first fill checked */
	}
	if (d->remote && !sf->tab.nslots) {
		/* detached: the kit checked before the fork, opened again */
		struct snapshot *snap = NULL;
		if ((r = open_kit(d, &snap, &e)) < 0 || (r = sf_add_direct(sf, snap)) < 0) {
			snapshot_unref(snap);
			d->rc = stella_exit_code(r);
			snprintf(d->fail_msg, sizeof(d->fail_msg), "%s", stella_err_text(&e, r));
			stella_log(LOG_ERR, "%s", d->fail_msg);
			return false;
		}
		sf->trust.signers = snap->signers;
	}
	if (d->remote && (r = fetch_start(sf)) < 0) {
		snprintf(d->fail_msg, sizeof(d->fail_msg), "cannot start the fetch threads: %s", strerror(-r));
		return false;
	}
	if ((r = inval_start(sf)) < 0) {
		snprintf(d->fail_msg, sizeof(d->fail_msg), "cannot start the invalidation thread: %s", strerror(-r));
		return false;
	}
	if (sf->store)
		stella_log(LOG_INFO, "mounted store %s on %s: %zu snapshot(s), current %s", d->o.source, d->cl.mountpoint,
			   sf->tab.nslots, *sf->tab.current ? sf->tab.current : "none");
	else
		stella_log(LOG_INFO, "mounted %s %s on %s%s", sf->tab.slots[0].s->identity->kit_id, sf->tab.current,
			   d->cl.mountpoint, sf->tab.slots[0].s->index_cached ? " (cached index)" : "");
	if (d->budgets[0])
		stella_log(LOG_INFO, "%s", d->budgets);
	/* The watcher starts after daemonizing: threads do not survive fork. */
	if ((r = incoming_start(sf, &e)) < 0)
		stella_log(LOG_ERR, "%s", stella_err_text(&e, r));
	if (sf->opt.follow && (r = follow_start(sf)) < 0)
		stella_log(LOG_ERR, "follow=%s: cannot start its thread: %s", sf->opt.follow, strerror(-r));
	return true;
}

/* Tell the parent and systemd, then serve until unmounted or signalled. */
static bool serve(struct daemon *d)
{
	struct fuse_loop_config *lc = fuse_loop_cfg_create();
	if (!lc) {
		snprintf(d->fail_msg, sizeof(d->fail_msg), "%s", strerror(ENOMEM));
		return false;
	}
	/* A parent that was not told we serve waits for us to end (it saw
	 * only EOF): serving on would hang it, and whatever started it, for
	 * as long as the mount lives.  Such a start failed. */
	int r = detach_done(&d->status_fd, 0, "");
	if (r < 0) {
		snprintf(d->fail_msg, sizeof(d->fail_msg), "%s: cannot tell the starting process that it is mounted: %s",
			 d->cl.mountpoint, strerror(-r));
		stella_log(LOG_ERR, "%s", d->fail_msg);
		fuse_loop_cfg_destroy(lc);
		return false;
	}
	sd_notify_send("READY=1\n");
	status_start(&d->sn, &d->sf);
	fuse_loop_cfg_set_clone_fd(lc, d->cl.clone_fd);
	fuse_loop_cfg_set_idle_threads(lc, d->cl.max_idle_threads <= 100 ? d->cl.max_idle_threads : 10);
	fuse_loop_cfg_set_max_threads(lc, max_threads(&d->cl));
	stop_signals_serve();
	r = d->cl.singlethread ? fuse_session_loop(d->se) : fuse_session_loop_mt(d->se, lc);
	stop_signals_left();
	fuse_loop_cfg_destroy(lc);
	/* A stop signal ends the loop (fs/signals.c): a stop that was asked
	 * for (systemctl stop), not a failure.  Only a negative errno is one. */
	d->rc = r >= 0 ? 0 : STELLA_EXIT_RUNTIME;
	status_stop(&d->sn);
	sd_notify_send("STOPPING=1\nSTATUS=stopping\n");
	return true;
}

/* Once unmounted, a daemon that reads a kit over the network must end even
 * if a mirror hangs under a transfer that the teardown would wait for (an
 * import by follow=, a connection being closed): past EXIT_GUARD_SECS it
 * exits at once, with the code it would have exited with. */
#define EXIT_GUARD_SECS 5

static void *exit_guard_main(void *arg)
{
	struct daemon *d = arg;
	sleep(EXIT_GUARD_SECS);
	if (atomic_load(&d->guard_off))
		return NULL;
	stella_log(LOG_WARNING, "stopping took over %d s (a mirror hangs): exiting now", EXIT_GUARD_SECS);
	_exit(d->rc);
}

static void exit_guard_start(struct daemon *d)
{
	pthread_t t;
	if (pthread_create(&t, NULL, exit_guard_main, d) == 0)
		pthread_detach(t);
}

/* Whatever the phases got to, undone in reverse; returns the exit code. */
static int daemon_end(struct daemon *d)
{
	struct stellafs *sf = &d->sf;
	if ((d->remote || sf->opt.follow) && d->mounted && d->status_fd < 0)
		exit_guard_start(d);
	status_stop(&d->sn); /* it reads the snapshots freed below */
	/* Unmounted first: the stops below may wait for a mirror (an import
	 * by follow= under a hanging one), and past EXIT_GUARD_SECS the guard
	 * exits; a mountpoint left to a dead daemon would answer "Transport
	 * endpoint is not connected" until someone runs umount. */
	if (d->se) {
		if (d->mounted)
			fuse_session_unmount(d->se); /* a send blocked in the kernel returns */
	}
	stop_signals_done();
	follow_stop(sf); /* at most one poll's time bound */
	/* A store's own imports (incoming=) are local: waited for, as
	 * without follow=, not cut short by the guard. */
	if (!d->remote)
		atomic_store(&d->guard_off, true);
	incoming_stop(sf); /* nothing queues notifications after this */
	/* Fetches that still hang on a mirror are not waited for beyond a
	 * bounded time (fs/fetch.c); what they hold is left to the exit. */
	bool fetches_done = fetch_stop(sf);
	inval_stop(sf); /* before the session it sends on is freed */
	if (d->se)
		fuse_session_destroy(d->se);
	ops_free_vbufs(sf);
	if (fetches_done) {
		fetch_close_all(sf);
		sf_free_slots(sf);
	}
	store_close(sf->store);
	trust_free(sf->trust.keys);
	free(d->cl.mountpoint);
	fuse_opt_free_args(&d->args);
	options_free(&d->o);
	/* a daemon that failed before serving: its parent says why, once
	 * everything here is undone (nothing stays mounted) */
	int rc = d->rc;
	detach_done(&d->status_fd, rc ? rc : STELLA_EXIT_RUNTIME,
		    d->fail_msg[0] ? d->fail_msg : "cannot start serving (see the system log)");
	return rc;
}

int main(int argc, char **argv)
{
	static struct daemon d; /* zeroed; its address is the sessions' userdata */
	daemon_init(&d, argc, argv);
	if (parse_command_line(&d) && check_options(&d) && check_source(&d) && mount_session(&d) && start_daemon(&d))
		serve(&d);
	return daemon_end(&d);
}
