/* kitwrite.c: a packed kit is a tar GNU tar reads, with the manifest, its
 * signature and merkle.bin first (the decompressed stream, for gzip and zstd) and the artifacts after in bytewise
 * order; its SHA-256 is what sha256sum says and what the .sha256 sidecar
 * holds; with an ed25519 key the same tree packs to the same bytes (none,
 * gzip and zstd). */
#include "kit_fixture.h"
#include "util.h"

static void check_members(const char *kit)
{
	char cmd[1200];
	snprintf(cmd, sizeof(cmd),
		 "tar -tf %s | tr '\\n' ' ' | grep -qx 'manifest/offline-manifest.json manifest/offline-manifest.json.sig "
		 "manifest/index manifest/merkle.bin a.txt d/big d/empty d/link '",
		 kit);
	if (system(cmd) != 0) {
		snprintf(cmd, sizeof(cmd), "tar -tf %s >&2", kit);
		CHECK(system(cmd) == 0);
		CHECK(!"members in this order");
	}
}

int main(void)
{
	EVP_PKEY *key = NULL;
	struct trust *trust = NULL;
	fx_setup(&key, &trust);
	const struct { const char *name; enum kit_compression c; } kinds[] = {
		{ "kit.tar", KIT_COMPRESS_NONE },
		{ "kit.tar.gz", KIT_COMPRESS_GZIP },
		{ "kit.tar.zst", KIT_COMPRESS_ZSTD },
	};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		char a[512], b[512], cmd[1600], hex[65];
		snprintf(a, sizeof(a), "%s/a-%s", fx_dir, kinds[i].name);
		snprintf(b, sizeof(b), "%s/b-%s", fx_dir, kinds[i].name);
		struct kitwrite_result wr, wr2;
		struct stella_err e = { 0 };
		CHECK(fx_pack(a, key, kinds[i].c, &wr, &e) == 0);
		CHECK(fx_pack(b, key, kinds[i].c, &wr2, &e) == 0);
		if (e.msg[0])
			fprintf(stderr, "  %s: %s\n", kinds[i].name, e.msg);
		CHECK(wr.files == 3 && wr.carried == 4 && wr.from_base == 0);
		snprintf(cmd, sizeof(cmd), "cmp -s %s %s", a, b);
		CHECK(system(cmd) == 0); /* reproducible */
		hex_encode(wr.kit_sha256, 32, hex);
		snprintf(cmd, sizeof(cmd), "sha256sum %s | grep -q '^%s ' && grep -q '^%s ' %s.sha256", a, hex, hex, a);
		CHECK(system(cmd) == 0);
		if (kinds[i].c == KIT_COMPRESS_ZSTD)
			snprintf(cmd, sizeof(cmd), "zstd -dc %s > %s/plain.tar", a, fx_dir);
		else if (kinds[i].c == KIT_COMPRESS_GZIP)
			snprintf(cmd, sizeof(cmd), "gzip -dc %s > %s/plain.tar", a, fx_dir);
		else
			snprintf(cmd, sizeof(cmd), "cp %s %s/plain.tar", a, fx_dir);
		CHECK(system(cmd) == 0);
		snprintf(b, sizeof(b), "%s/plain.tar", fx_dir);
		check_members(b);
	}
	fx_teardown(key, trust);
	return CHECK_DONE();
}
