#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/vfs.h>
#include <time.h>
#include <yajl/yajl_tree.h>

#include "common.h"
#include "health.h"
#include "snapshot.h"
#include "store.h"
#include "storecheck.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " status [MOUNTPOINT | -s STORE [-t TRUST [--threshold N]]] [--json]\n"
	"\n"
	"Show the health of a mounted kit (default MOUNTPOINT /stella), or of a\n"
	"store's current snapshot: its status text, or status.json with --json.\n"
	"Exit 0 HEALTHY, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (not a stellafs mount,\n"
	"nothing readable there, or a usage error),\n"
	"as Nagios-style checks expect.\n"
	"\n"
	"  --json       print status.json as the daemon wrote it\n"
	"  -s STORE     a store directory, read directly: no mount needed\n"
	"  -t TRUST     with -s: check the current snapshot as a mount does (its index\n"
	"               against its kept signed manifest, signed by N keys of TRUST)\n"
	"  --threshold N  distinct trusted keys required with -t (default 1)\n"
	"  -h, --help   show this help\n";

#define STATUS_UNKNOWN 3
#define FUSE_SUPER_MAGIC 0x65735546

/* Mount points in /proc/self/mountinfo escape space, tab, newline and
 * backslash as \ooo (octal). */
static void mountinfo_unescape(char *s)
{
	char *w = s;
	for (const char *r = s; *r; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' &&
		    r[3] <= '7') {
			*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
			r += 3;
		} else {
			*w++ = *r;
		}
	}
	*w = 0;
}

/* Is dir where a stellafs is mounted?  The kernel says FUSE (statfs) and
 * the mount table says which FUSE file system is mounted there.  Without
 * the check, a directory holding an old status.json (the mount point after
 * an unmount, a copy) reported that file's health. */
static bool stellafs_mounted(const char *dir)
{
	struct statfs sfs;
	if (statfs(dir, &sfs) < 0 || (unsigned long)sfs.f_type != FUSE_SUPER_MAGIC)
		return false;
	_cleanup_(freep) char *real = realpath(dir, NULL);
	_cleanup_(fclosep) FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!real || !f)
		return false;
	char line[8192];
	bool found = false;
	while (fgets(line, sizeof(line), f)) {
		/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [FIELDS...] - FSTYPE SOURCE ..." */
		char point[4096], type[256];
		const char *sep = strstr(line, " - ");
		if (!sep || sscanf(line, "%*s %*s %*s %*s %4095s", point) != 1 || sscanf(sep + 3, "%255s", type) != 1)
			continue;
		mountinfo_unescape(point);
		/* the last entry for a point is the one on top */
		if (!strcmp(point, real))
			found = !strcmp(type, "fuse.stellafs");
	}
	return found;
}

/* The current snapshot: with a trust store, opened as a mount opens it
 * (core/storecheck.h); without, as the import left it. */
static int open_current(struct store *st, const char *cur, const struct trust *t, unsigned threshold,
			struct snapshot **s, bool *trusted, char *why, size_t wl, struct stella_err *e)
{
	*trusted = true;
	if (!t) {
		return store_open_snapshot(st, cur, s, e);
	}
	struct storecheck c;
	int r = storecheck_open(st, cur, t, threshold, NULL, s, &c, e);
	if (r == 0 && !c.trusted) {
		*trusted = false;
		snprintf(why, wl, "current snapshot %.128s: %.300s", cur, c.why);
	} else if (r < 0) {
		*trusted = false;
		snprintf(why, wl, "%.500s", stella_err_text(e, r));
	}
	return r;
}

/* A store read directly: its current snapshot judged now.  Signatures were
 * checked when each snapshot was imported, and again here with -t. */
static int store_status(const char *dir, const struct trust *t, unsigned threshold, bool json)
{
	struct stella_err e = { 0 };
	struct store *st = NULL;
	struct store_snapshot *list = NULL;
	struct snapshot *s = NULL;
	size_t n = 0;
	char cur[129], prev[129];
	int r = store_open(dir, false, &st, &e);
	if (r < 0) {
		fprintf(stderr, PROG ": status: %s\n", stella_err_text(&e, r));
		return STATUS_UNKNOWN;
	}
	/* A store whose state cannot be read is UNKNOWN, not judged on
	 * whatever the buffers held. */
	if ((r = store_pointers(st, cur, prev, &e)) < 0 || (r = store_list(st, &list, &n, &e)) < 0) {
		fprintf(stderr, PROG ": status: %s\n", stella_err_text(&e, r));
		store_close(st);
		return STATUS_UNKNOWN;
	}
	bool trusted = true;
	char why[640] = "";
	if (*cur && (r = open_current(st, cur, t, threshold, &s, &trusted, why, sizeof(why), &e)) < 0)
		fprintf(stderr, PROG ": status: %s: snapshot %s: %s\n", dir, cur, stella_err_text(&e, r));
	const char **names = calloc(n ? n : 1, sizeof(*names));
	for (size_t i = 0; names && i < n; i++)
		names[i] = list[i].version;
	struct health_input in = {
		.mode = "store", .source = store_dir(st), .kit = s ? s->identity : NULL,
		.snapshots = names, .nsnapshots = names ? n : 0, .now = (int64_t)time(NULL),
		.trust_ok = trusted, .trust_detail = why, .signers = s ? s->signers : 0,
		.threshold = t ? threshold : 1,
		.store_usage_pct = store_usage_pct(st),
	};
	char *out = json ? health_render_json(&in) : health_render_status(&in);
	enum health_level level = health_overall(&in);
	if (out)
		fputs(out, stdout);
	free(out);
	free(names);
	free(list);
	snapshot_unref(s);
	store_close(st);
	return (int)level;
}

int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "store", required_argument, NULL, 's' },
		{ "trust", required_argument, NULL, 't' },
		{ "threshold", required_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	bool json = false;
	const char *store = NULL, *trust_path = NULL;
	uint64_t threshold = 1;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+s:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 's': store = optarg; break;
		case 't': trust_path = optarg; break;
		case 'T':
			if (parse_u64(optarg, &threshold) < 0 || threshold < 1 || threshold > 256) {
				usage_error("status", "--threshold '%s': a number from 1 to 256", optarg);
				return STATUS_UNKNOWN;
			}
			break;
		case 'h': fputs(help, stdout); return 0;
		default:
			/* a monitoring check must not read a usage error as CRITICAL (2) */
			usage_error("status", "unknown or incomplete option '%s'", argv[optind - 1]);
			return STATUS_UNKNOWN;
		}
	}
	/* --json may also follow the mount point */
	const char *mnt = NULL;
	for (int i = optind; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!mnt)
			mnt = argv[i];
		else {
			usage_error("status", "unexpected argument '%s'", argv[i]);
			return STATUS_UNKNOWN;
		}
	}
	if (trust_path && !store) {
		usage_error("status", "-t TRUST goes with -s STORE");
		return STATUS_UNKNOWN;
	}
	if (store) {
		struct trust *t = NULL;
		struct stella_err e = { 0 };
		int r = trust_path ? trust_load(trust_path, &t, &e) : 0;
		if (r < 0) {
			fprintf(stderr, PROG ": status: %s\n", stella_err_text(&e, r));
			return STATUS_UNKNOWN;
		}
		int rc = store_status(store, t, (unsigned)threshold, json);
		trust_free(t);
		return rc;
	}
	if (!mnt)
		mnt = "/stella";
	if (!stellafs_mounted(mnt)) {
		fprintf(stderr, PROG ": status: %s: not a stellafs mount\n", text_name(mnt));
		return STATUS_UNKNOWN;
	}
	char path[4096];
	_cleanup_(freep) char *sj = NULL, *text = NULL;
	snprintf(path, sizeof(path), "%s/status.json", mnt);
	int r = read_file(path, 16 << 20, &sj, NULL);
	if (r < 0) {
		fprintf(stderr, PROG ": status: %s: %s (is a stellafs kit mounted there?)\n", path, strerror(-r));
		return STATUS_UNKNOWN;
	}
	char ebuf[128];
	yajl_val root = yajl_tree_parse(sj, ebuf, sizeof(ebuf));
	const char *hp[] = { "health", NULL };
	yajl_val h = root ? yajl_tree_get(root, hp, yajl_t_string) : NULL;
	const char *health = h ? YAJL_GET_STRING(h) : NULL;
	int rc = !health ? STATUS_UNKNOWN : !strcmp(health, "HEALTHY") ? 0 : !strcmp(health, "WARNING") ? 1 :
		 !strcmp(health, "CRITICAL") ? 2 : STATUS_UNKNOWN;
	if (rc == STATUS_UNKNOWN)
		fprintf(stderr, PROG ": status: %s: no health in it\n", path);
	else if (json)
		fputs(sj, stdout);
	else {
		snprintf(path, sizeof(path), "%s/status", mnt);
		if (read_file(path, 16 << 20, &text, NULL) == 0)
			fputs(text, stdout);
		else
			printf("%s\n", health);
	}
	if (root)
		yajl_tree_free(root);
	return rc;
}
