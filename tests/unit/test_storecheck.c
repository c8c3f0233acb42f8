/* storecheck.c: a snapshot imported into a store opens vouched for by its
 * kept signed manifest (trusted under the signer's key, not trusted under
 * another's: the caller decides); a kept manifest changed by one byte, or
 * gone, is a verdict (-EBADMSG, forged): never served. */
#include <fcntl.h>

#include "kit_fixture.h"
#include "storecheck.h"
#include "util.h"

int main(void)
{
	EVP_PKEY *key = NULL;
	struct trust *trust = NULL;
	fx_setup(&key, &trust);
	char kit[512], sdir[512], path[700], hex[65];
	snprintf(kit, sizeof(kit), "%s/kit.tar", fx_dir);
	snprintf(sdir, sizeof(sdir), "%s/store", fx_dir);
	struct kitwrite_result wr;
	struct stella_err e = { 0 };
	CHECK(fx_pack(kit, key, KIT_COMPRESS_NONE, &wr, &e) == 0);

	struct store *st = NULL;
	CHECK(store_open(sdir, true, &st, &e) == 0);
	if (!st)
		return CHECK_DONE();
	CHECK(store_lock(st, &e) == 0);
	struct store_import_opts io = { .trust = trust, .threshold = 1, .now = FX_CREATED + 60, .activate = true };
	char version[129] = "";
	CHECK(store_import(st, kit, &io, version, &e) == 0);
	CHECK_STR(version, "v1");
	if (e.msg[0])
		fprintf(stderr, "  import: %s\n", e.msg);

	struct snapshot *s = NULL;
	struct storecheck c;
	CHECK(storecheck_open(st, "v1", trust, 1, NULL, &s, &c, &e) == 0);
	CHECK(s && c.trusted && c.signers == 1 && !c.forged);
	snapshot_unref(s);

	/* another trust store: opened, matching, but not trusted */
	struct trust *other = NULL;
	snprintf(path, sizeof(path), "%s/other", fx_dir);
	CHECK(key_generate("ed25519", path, &e) == 0);
	snprintf(path, sizeof(path), "%s/other.pub", fx_dir);
	CHECK(trust_load(path, &other, &e) == 0);
	s = NULL;
	CHECK(storecheck_open(st, "v1", other, 1, NULL, &s, &c, &e) == 0);
	CHECK(s && !c.trusted && c.signers == 0 && c.why[0]);
	snapshot_unref(s);
	trust_free(other);

	/* the kept manifest changed by one byte: forged */
	hex_encode(wr.manifest_sha256, 32, hex);
	snprintf(path, sizeof(path), "%s/manifests/%s.json", sdir, hex);
	int fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	char ch = 0;
	CHECK(pread(fd, &ch, 1, 10) == 1);
	ch ^= 1;
	CHECK(pwrite(fd, &ch, 1, 10) == 1);
	s = NULL;
	memset(&e, 0, sizeof(e));
	CHECK(storecheck_open(st, "v1", trust, 1, NULL, &s, &c, &e) == -EBADMSG);
	CHECK(c.forged && !s);
	/* and gone: forged too */
	CHECK(unlink(path) == 0);
	memset(&e, 0, sizeof(e));
	CHECK(storecheck_open(st, "v1", trust, 1, NULL, &s, &c, &e) == -EBADMSG);
	CHECK(c.forged);
	close(fd);

	store_unlock(st);
	store_close(st);
	fx_teardown(key, trust);
	return CHECK_DONE();
}
