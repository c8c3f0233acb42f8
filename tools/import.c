#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "bounds.h"
#include "common.h"
#include "sig.h"
#include "source.h"
#include "store.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " import -s STORE -t TRUST [--threshold N] [--now TIME] [--allow-expired]\n"
	"                       [--activate] [--repair]\n"
	"                       [--cacert FILE] [--mirror URL]... [--timeout SECONDS] KIT|URL\n"
	"\n"
	"Verify KIT completely and add it to STORE as a snapshot: its files are\n"
	"stored once by content, its index beside them.  Nothing changes in the\n"
	"store unless every check passes.  The first snapshot of a store becomes\n"
	"current; with --activate the new one does.  A mounted store shows the new\n"
	"snapshot as soon as the import has finished.  STORE is created if needed.\n"
	"KIT may be an http:// or https:// URL, as for verify.\n"
	"Every stored file the kit carries is checked, and replaced by the kit's\n"
	"verified bytes when damaged: importing a known-good kit that carries a\n"
	"file repairs it, in every snapshot that has it.\n"
	"\n"
	"  -s, --store STORE     the store directory\n"
	"  -t, --trust TRUST     PEM public key file, or a directory of *.pub/*.pem\n"
	"      --threshold N     distinct trusted keys required (default 1)\n"
	"      --now TIME        judge expiry at TIME instead of now (RFC 3339)\n"
	"      --allow-expired   accept a kit whose expiresAt is past\n"
"      --cacert FILE     CA bundle for an https:// KIT (default: the system store)\n"
"      --mirror URL      another location of the same kit, tried in order after\n"
"                        KIT when it fails (repeat for more)\n"
"      --timeout SECONDS no read of a remote kit waits longer (default 30)\n"
	"      --activate        make the imported snapshot current\n"
	"      --repair          KIT made a snapshot of STORE already (same version and\n"
	"                        manifest): check that snapshot's stored files, replace\n"
	"                        the damaged ones, rebuild its index and keep its signed\n"
	"                        manifest, instead of refusing the kit as not newer\n"
	"  -h, --help            show this help\n"
	"\n"
	"Exit codes as verify, plus 7: the kit's sequence is not newer than the one\n"
	"the store already trusts for its kitId.\n";

enum { OPT_THRESHOLD = 256, OPT_NOW, OPT_ALLOW_EXPIRED, OPT_ACTIVATE, OPT_REPAIR, OPT_CACERT, OPT_MIRROR, OPT_TIMEOUT };

int cmd_import(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "store", required_argument, NULL, 's' },
		{ "trust", required_argument, NULL, 't' },
		{ "threshold", required_argument, NULL, OPT_THRESHOLD },
		{ "now", required_argument, NULL, OPT_NOW },
		{ "allow-expired", no_argument, NULL, OPT_ALLOW_EXPIRED },
		{ "activate", no_argument, NULL, OPT_ACTIVATE },
		{ "repair", no_argument, NULL, OPT_REPAIR },
		{ "cacert", required_argument, NULL, OPT_CACERT },
		{ "mirror", required_argument, NULL, OPT_MIRROR },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *store_path = NULL, *trust_path = NULL, *now_arg = NULL;
	struct location_args la = { 0 };
	unsigned threshold = 1;
	bool allow_expired = false, activate = false, repair = false;
	int c, r;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+s:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 's': store_path = optarg; break;
		case 't': trust_path = optarg; break;
		case OPT_THRESHOLD:
			if (sig_threshold_parse(optarg, &threshold) < 0)
				return usage_error("import", "--threshold '%s': a number from 1 to %u", optarg,
						   STELLA_TRUST_KEYS_MAX);
			break;
		case OPT_NOW: now_arg = optarg; break;
		case OPT_CACERT:
		case OPT_MIRROR:
		case OPT_TIMEOUT:
			if ((r = location_arg("import", &la, c == OPT_CACERT ? 'c' : c == OPT_MIRROR ? 'm' : 'T', optarg)))
				return r;
			break;
		case OPT_ALLOW_EXPIRED: allow_expired = true; break;
		case OPT_ACTIVATE: activate = true; break;
		case OPT_REPAIR: repair = true; break;
		case 'h': fputs(help, stdout); return 0;
		default: return usage_error("import", "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (!store_path)
		return usage_error("import", "-s STORE is required");
	if (!trust_path)
		return usage_error("import", "-t TRUST is required");
	if (argc - optind != 1)
		return usage_error("import", "expected exactly one KIT");
	int64_t now;
	if ((r = parse_now("import", now_arg, &now)) != 0)
		return r;

	struct stella_err e = { 0 };
	struct trust *trust = NULL;
	struct store *st = NULL;
	char version[129];
	if ((r = trust_load(trust_path, &trust, &e)) < 0)
		return report(&e, r);
	if ((r = store_open(store_path, true, &st, &e)) < 0 || (r = store_lock(st, &e)) < 0) {
		trust_free(trust);
		store_close(st);
		return report(&e, r);
	}
	struct source *src = NULL;
	struct store_import_report rep = { 0 };
	struct store_import_opts o = { .trust = trust, .threshold = threshold, .now = now,
				       .allow_expired = allow_expired, .activate = activate, .repair = repair,
				       .report = &rep };
	r = open_location(argv[optind], &la, &src, &e);
	o.source = src;
	if (r == 0)
		r = location_failure(src, store_import(st, argv[optind], &o, version, &e), &e);
	source_close(src);
	char cur[129], prev[129];
	store_pointers(st, cur, prev, NULL);
	store_unlock(st);
	store_close(st);
	trust_free(trust);
	if (r < 0)
		return report(&e, r);
	if (rep.existed)
		printf("%s is snapshot %s of %s already: its stored files checked, %llu damaged one(s) replaced%s\n",
		       argv[optind], version, store_path, (unsigned long long)rep.repaired,
		       !strcmp(cur, version) ? " (current)" : "");
	else
		printf("imported %s into %s as snapshot %s%s%s\n", argv[optind], store_path, version,
		       !strcmp(cur, version) ? " (current)" : "",
		       rep.repaired ? "; damaged stored files replaced by its verified bytes" : "");
	return 0;
}
