/* stellakit: pack, sign and check offline kits (see stellakit(1)). */
#include <langinfo.h>
#include <locale.h>
#include <stdio.h>
#include <syslog.h>
#include <string.h>

#include "common.h"

static const char usage[] =
	"Usage: " PROG " COMMAND [OPTIONS] ARGS...\n"
	"\n"
	"Pack, sign and check stellafs offline kits.\n"
	"\n"
	"Commands:\n"
	"  keygen [--type ecdsa-p256|ed25519|rsa-3072] PREFIX\n"
	"      write PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub\n"
	"  pack -k KEY [-k KEY...] [--template kit.json] [--kit-id ID] [--version V]\n"
	"       [--sequence N] [--channel C] [--created-at TIME]\n"
	"       [--expires-at TIME | --expires-in DAYS]\n"
	"       [--component NAME=PATH[,warn=DAYS][,max=DAYS][,captured-at=TIME][,records=N]]...\n"
	"       [--compress none|gzip|zstd] [--base OLD_KIT] SRC_DIR OUT_KIT\n"
	"      pack SRC_DIR into a signed kit, with OUT_KIT.sha256,\n"
	"      OUT_KIT.metadata.json and OUT_KIT.sig beside it\n"
	"  verify -t TRUST [--threshold N] [--now TIME] [--allow-expired]\n"
	"         [--cacert FILE] [--mirror URL]... [--timeout SECONDS] KIT|URL\n"
	"      check a kit completely: structure, signatures, expiry, every byte\n"
	"  inspect [--json] KIT\n"
	"      show a kit's identity, components and artifacts (no trust needed)\n"
	"  diff OLD_KIT NEW_KIT\n"
	"      list artifacts added (+), removed (-) and changed (~)\n"
	"  import -s STORE -t TRUST [--threshold N] [--now TIME] [--allow-expired]\n"
	"         [--activate] [--repair] [--cacert FILE] [--mirror URL]...\n"
	"         [--timeout SECONDS] KIT|URL\n"
	"      verify KIT and add it to a store as a snapshot\n"
	"  push [--cacert FILE] [--chunk-size SIZE] KIT oci://REGISTRY/REPOSITORY:TAG\n"
	"      upload a kit to an OCI registry as an OCI 1.1 artifact; prints its\n"
	"      manifest digest\n"
	"  status [MOUNTPOINT | -s STORE] [--json]\n"
	"      health of a mounted kit or a store; exit 0/1/2 = HEALTHY/WARNING/\n"
	"      CRITICAL, 3 = UNKNOWN (nothing readable there, or a usage error)\n"
	"\n"
	"TRUST is a PEM public key file or a directory of *.pub / *.pem keys.\n"
	"URL is an http:// or https:// URL of a kit on a web server, or an\n"
	"oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST) reference to one in a\n"
	"registry; a --mirror is another of either kind (oci:// only beside oci://).\n"
	"Times are RFC 3339 UTC, e.g. 2025-01-15T00:00:00Z.\n"
	"\n"
	"Exit codes: 0 valid/done, 1 runtime failure, 2 usage, 3 malformed kit,\n"
	"4 content mismatch, 5 signature, 6 expired, 7 stale.\n"
	"\n"
	"'" PROG " COMMAND --help' describes one command; see stellakit(1).\n";

/* A mirror that failed and another that then served (core/remote.c logs
 * those at LOG_NOTICE) is the daemon's log's business, not a one-shot
 * run's: its one line on failure says what counts. */
static void log_quiet_notices(int prio, const char *line)
{
	if (prio < LOG_NOTICE)
		fprintf(stderr, "%s\n", line);
}

int main(int argc, char **argv)
{
	stella_log_set(log_quiet_notices);
	/* Names in kits are UTF-8; libarchive converts names through the
	 * locale, so make sure it is a UTF-8 one whatever the environment. */
	setlocale(LC_ALL, "");
	if (strcmp(nl_langinfo(CODESET), "UTF-8"))
		setlocale(LC_CTYPE, "C.UTF-8");

	if (argc < 2)
		return usage_error(NULL, "missing command");
	const char *cmd = argv[1];
	if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
		fputs(usage, stdout);
		return 0;
	}
	if (!strcmp(cmd, "--version")) {
		printf(PROG " " STELLA_VERSION "\n");
		return 0;
	}
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{ "keygen", cmd_keygen },
		{ "pack", cmd_pack },
		{ "verify", cmd_verify },
		{ "inspect", cmd_inspect },
		{ "diff", cmd_diff },
		{ "import", cmd_import },
		{ "status", cmd_status },
		{ "push", cmd_push },
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmd, cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	return usage_error(NULL, "unknown command '%s'", cmd);
}
