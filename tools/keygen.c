#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "sig.h"

static const char help[] =
	"Usage: " PROG " keygen [--type ecdsa-p256|ed25519|rsa-3072] PREFIX\n"
	"\n"
	"Write a new signing key: PREFIX.key (PKCS#8 PEM, mode 0600) and\n"
	"PREFIX.pub (SubjectPublicKeyInfo PEM, to put in trust stores).  PREFIX\n"
	"must end in a file name (not '', 'dir/', '.' or '..').\n"
	"\n"
	"  -t, --type TYPE   ecdsa-p256 (default, cosign-compatible), ed25519\n"
	"                    (fully reproducible kits) or rsa-3072\n"
	"  -h, --help        show this help\n";

int cmd_keygen(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "type", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *type = "ecdsa-p256";
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+t:h", opts, NULL)) != -1) {
		switch (c) {
		case 't': type = optarg; break;
		case 'h': fputs(help, stdout); return 0;
		default: return usage_error("keygen", "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (strcmp(type, "ecdsa-p256") && strcmp(type, "ed25519") && strcmp(type, "rsa-3072"))
		return usage_error("keygen", "--type must be ecdsa-p256, ed25519 or rsa-3072, not '%s'", type);
	if (argc - optind != 1)
		return usage_error("keygen", "expected exactly one PREFIX");
	/* PREFIX names the files: "" or "dir/" would write the hidden .key and
	 * .pub, which a trust directory skips (only *.pub and *.pem count). */
	const char *prefix = argv[optind], *base = strrchr(prefix, '/');
	base = base ? base + 1 : prefix;
	if (!*base || !strcmp(base, ".") || !strcmp(base, ".."))
		return usage_error("keygen", "PREFIX '%s' must end in a file name (it writes PREFIX.key and PREFIX.pub)",
				   prefix);
	struct stella_err e = { 0 };
	int r = key_generate(type, argv[optind], &e);
	if (r < 0)
		return report(&e, r == -EINVAL ? -EIO : r);
	printf("wrote %s.key and %s.pub (%s)\n", argv[optind], argv[optind], type);
	return 0;
}
