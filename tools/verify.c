#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "bounds.h"
#include "common.h"
#include "kitverify.h"
#include "sig.h"
#include "source.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " verify -t TRUST [--threshold N] [--now TIME] [--allow-expired]\n"
	"                       \n"
	"                       [--cacert FILE] [--mirror URL]... [--timeout SECONDS] KIT|URL\n"
	"\n"
	"Check KIT completely: archive structure and names, the manifest, at least\n"
	"N distinct trusted signatures, expiry, and the size, SHA-256 and fs-verity\n"
	"digest of every artifact.  KIT may be an http:// or https:// URL of a kit\n"
	"on a web server (user:password@ in it, or ~/.netrc, where it needs them;\n"
	"http_proxy, https_proxy and no_proxy as usual): its bytes are fetched with\n"
	"range requests and verified like a local kit's.  Exit 0 when valid; see\n"
	"the exit codes in stellakit(1) (a server none can reach, or that refuses\n"
	"the credentials: 1).\n"
	"\n"
	"  -t, --trust TRUST     PEM public key file, or a directory of *.pub/*.pem\n"
	"      --threshold N     distinct trusted keys required (default 1)\n"
	"      --now TIME        judge expiry at TIME instead of now (RFC 3339)\n"
	"      --allow-expired   accept a kit whose expiresAt is past\n"
"      --cacert FILE     CA bundle for an https:// KIT (default: the system store)\n"
"      --mirror URL      another location of the same kit, tried in order after\n"
"                        KIT when it fails (repeat for more)\n"
"      --timeout SECONDS no read of a remote kit waits longer (default 30)\n"
	"  -h, --help            show this help\n";

enum { OPT_THRESHOLD = 256, OPT_NOW, OPT_ALLOW_EXPIRED, OPT_CACERT, OPT_MIRROR, OPT_TIMEOUT };

int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "trust", required_argument, NULL, 't' },
		{ "threshold", required_argument, NULL, OPT_THRESHOLD },
		{ "now", required_argument, NULL, OPT_NOW },
		{ "allow-expired", no_argument, NULL, OPT_ALLOW_EXPIRED },
		{ "cacert", required_argument, NULL, OPT_CACERT },
		{ "mirror", required_argument, NULL, OPT_MIRROR },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *trust_path = NULL, *now_arg = NULL;
	struct location_args la = { 0 };
	unsigned threshold = 1;
	bool allow_expired = false;
	int c, r;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+t:h", opts, NULL)) != -1) {
		switch (c) {
		case 't': trust_path = optarg; break;
		case OPT_THRESHOLD:
			if (sig_threshold_parse(optarg, &threshold) < 0)
				return usage_error("verify", "--threshold '%s': a number from 1 to %u", optarg,
						   STELLA_TRUST_KEYS_MAX);
			break;
		case OPT_NOW: now_arg = optarg; break;
		case OPT_CACERT:
		case OPT_MIRROR:
		case OPT_TIMEOUT:
			if ((r = location_arg("verify", &la, c == OPT_CACERT ? 'c' : c == OPT_MIRROR ? 'm' : 'T', optarg)))
				return r;
			break;
		case OPT_ALLOW_EXPIRED: allow_expired = true; break;
		case 'h': fputs(help, stdout); return 0;
		default: return usage_error("verify", "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (!trust_path)
		return usage_error("verify", "-t TRUST is required");
	if (argc - optind != 1)
		return usage_error("verify", "expected exactly one KIT");
	int64_t now;
	if ((r = parse_now("verify", now_arg, &now)) != 0)
		return r;

	struct stella_err e = { 0 };
	struct trust *trust = NULL;
	if ((r = trust_load(trust_path, &trust, &e)) < 0)
		return report(&e, r);
	struct source *src = NULL;
	if ((r = open_location(argv[optind], &la, &src, &e)) < 0) {
		trust_free(trust);
		return report(&e, r);
	}
	struct kitverify_opts o = {
		.trust = trust, .threshold = threshold, .now = now, .allow_expired = allow_expired,
		.check_expiry = true, .content = true, .progress = progress_cb, .progress_ctx = (void *)"verifying",
		.source = src, .stream = true,
	};
	struct kitverify_result res;
	r = location_failure(src, kit_verify(argv[optind], &o, &res, &e), &e);
	trust_free(trust);
	source_close(src);
	if (r < 0)
		return report(&e, r);
	progress_done();
	const struct manifest *m = res.manifest;
	char exp[32];
	time_format(m->expires_at, exp);
	printf("%s: valid: %s %s (sequence %lld, %s), %llu files, %llu bytes, %u trusted signature(s), %s, expires %s%s\n",
	       argv[optind], m->kit_id, m->version, (long long)m->sequence, m->channel,
	       (unsigned long long)res.files, (unsigned long long)res.bytes, res.signers,
	       kit_compression_name(res.compression), exp, now >= m->expires_at ? " (EXPIRED, allowed)" : "");
	if (m->has_base)
		printf("%s: delta kit on base %s: %llu artifacts come from the base and are checked on import\n",
		       argv[optind], m->base_version, (unsigned long long)res.from_base);
	kitverify_result_free(&res);
	return 0;
}
