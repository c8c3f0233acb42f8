#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "common.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " status [MOUNTPOINT] [--json]\n"
	"\n"
	"Show the health of a mounted kit (default MOUNTPOINT /stella): its status\n"
	"text, or status.json with --json.  Exit 0 HEALTHY, 1 WARNING, 2 CRITICAL,\n"
	"3 UNKNOWN (no readable stellafs mount there), as Nagios-style checks expect.\n"
	"\n"
	"  --json       print status.json as the daemon wrote it\n"
	"  -s STORE     a store directory without a mount (store mode: not\n"
	"               supported by this build yet)\n"
	"  -h, --help   show this help\n";

#define STATUS_UNKNOWN 3

int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "store", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	bool json = false;
	const char *store = NULL;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 's': store = optarg; break;
		case 'h': fputs(help, stdout); return 0;
		default: return usage_error("status", "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	/* --json may also follow the mount point */
	const char *mnt = NULL;
	for (int i = optind; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!mnt)
			mnt = argv[i];
		else
			return usage_error("status", "unexpected argument '%s'", argv[i]);
	}
	if (store) {
		fprintf(stderr, PROG ": status: -s %s: store mode is not supported by this build yet\n", store);
		return STELLA_EXIT_USAGE;
	}
	if (!mnt)
		mnt = "/stella";
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
