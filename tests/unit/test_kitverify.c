/* kitverify.c: a kit packed by kitwrite verifies (its manifest digest is
 * the SHA-256 of the manifest member, as kit_read_head_source gives it); a byte
 * changed in a file's data is a content mismatch (-EUCLEAN), a trust
 * store without the signer is -EKEYREJECTED, a kit past its expiry is
 * -EKEYEXPIRED unless allowed, a truncated kit is -EBADMSG. */
#include <fcntl.h>
#include <openssl/sha.h>

#include "kit_fixture.h"
#include "kitverify.h"
#include "util.h"

static int verify(const char *kit, const struct trust *t, int64_t now, bool allow_expired, struct kitverify_result *res,
		  struct stella_err *e)
{
	struct kitverify_opts o = { .trust = t, .threshold = 1, .now = now, .allow_expired = allow_expired,
				    .check_expiry = true, .content = true };
	memset(e, 0, sizeof(*e));
	memset(res, 0, sizeof(*res));
	return kit_verify(kit, &o, res, e);
}

int main(void)
{
	EVP_PKEY *key = NULL;
	struct trust *trust = NULL;
	fx_setup(&key, &trust);
	char kit[512], bad[512], cmd[4096];
	snprintf(kit, sizeof(kit), "%s/kit.tar", fx_dir);
	struct kitwrite_result wr;
	struct stella_err e = { 0 };
	CHECK(fx_pack(kit, key, KIT_COMPRESS_NONE, &wr, &e) == 0);

	struct kitverify_result res;
	int64_t now = FX_CREATED + 60;
	CHECK(verify(kit, trust, now, false, &res, &e) == 0);
	CHECK(res.signers == 1 && res.files == 3 && res.bytes == 100 + 3 * 4096 + 17);
	CHECK(!memcmp(res.manifest_sha256, wr.manifest_sha256, 32));
	kitverify_result_free(&res);

	char *mj = NULL, *sig = NULL;
	size_t ml = 0, sl = 0;
	struct source *src = NULL;
	CHECK(source_open(kit, &src, &e) == 0);
	CHECK(src && kit_read_head_source(src, &mj, &ml, &sig, &sl, &e) == 0);
	source_close(src);
	uint8_t d[32];
	if (mj) {
		SHA256((const uint8_t *)mj, ml, d);
		CHECK(!memcmp(d, wr.manifest_sha256, 32));
	}
	CHECK(sig && sl > 0);
	free(mj);
	free(sig);

	/* expired: refused unless allowed */
	int64_t later = FX_CREATED + 86400 * 31;
	CHECK(verify(kit, trust, later, false, &res, &e) == -EKEYEXPIRED);
	kitverify_result_free(&res);
	CHECK(verify(kit, trust, later, true, &res, &e) == 0);
	kitverify_result_free(&res);

	/* signed by a key the trust store does not hold */
	struct trust *other = NULL;
	char path[600];
	snprintf(path, sizeof(path), "%s/other", fx_dir);
	CHECK(key_generate("ed25519", path, &e) == 0);
	snprintf(path, sizeof(path), "%s/other.pub", fx_dir);
	CHECK(trust_load(path, &other, &e) == 0);
	CHECK(verify(kit, other, now, false, &res, &e) == -EKEYREJECTED);
	kitverify_result_free(&res);
	trust_free(other);

	/* one byte of d/big's data changed: GNU tar says where it is */
	snprintf(bad, sizeof(bad), "%s/bad.tar", fx_dir);
	snprintf(cmd, sizeof(cmd),
		 "cp %s %s && off=$(tar -tvf %s --block-number | awk '$NF==\"d/big\"{print $2}' | tr -d ':') && "
		 "printf 'X' | dd of=%s bs=1 seek=$(( (off + 1) * 512 + 5000 )) conv=notrunc status=none",
		 kit, bad, kit, bad);
	CHECK(system(cmd) == 0);
	CHECK(verify(bad, trust, now, false, &res, &e) == -EUCLEAN);
	CHECK(strstr(e.msg, "d/big") != NULL);
	kitverify_result_free(&res);

	/* cut short inside the artifacts */
	snprintf(cmd, sizeof(cmd), "cp %s %s && truncate -s -3000 %s", kit, bad, bad);
	CHECK(system(cmd) == 0);
	CHECK(verify(bad, trust, now, false, &res, &e) == -EBADMSG);
	kitverify_result_free(&res);

	fx_teardown(key, trust);
	return CHECK_DONE();
}
