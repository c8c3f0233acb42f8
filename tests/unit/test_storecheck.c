/* storecheck.c: a snapshot imported into a store opens vouched for by its
 * kept signed manifest (trusted under the signer's key, not trusted under
 * another's: the caller decides); a kept manifest changed by one byte, or
 * gone, is a verdict (-EBADMSG, forged): never served. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

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

	/* with a private cache: served from an index built there from the kept
	 * manifest (and sealed), not from the store's; reused by the next
	 * open; pruned once the store no longer lists the snapshot */
	char cache[600], built[800];
	snprintf(cache, sizeof(cache), "%s/cache", fx_dir);
	s = NULL;
	CHECK(storecheck_open(st, "v1", trust, 1, cache, &s, &c, &e) == 0 && s);
	hex_encode(wr.manifest_sha256, 32, hex);
	struct stat sb, sb2;
	int mfd = store_manifest_dirfd(st);
	CHECK(fstat(mfd, &sb) == 0);
	snprintf(built, sizeof(built), "%s/store-%llx-%llx/%s.db", cache, (unsigned long long)sb.st_dev,
		 (unsigned long long)sb.st_ino, hex);
	CHECK(stat(built, &sb) == 0);
	snapshot_unref(s);
	s = NULL;
	CHECK(storecheck_open(st, "v1", trust, 1, cache, &s, &c, &e) == 0 && s);
	CHECK(stat(built, &sb2) == 0 && sb2.st_ino == sb.st_ino); /* reused, not built again */
	snapshot_unref(s);
	struct store_snapshot *rows = NULL;
	size_t nrows = 0;
	CHECK(store_list(st, &rows, &nrows, &e) == 0 && nrows == 1);
	storecheck_prune(st, cache, rows, nrows);
	CHECK(stat(built, &sb2) == 0);               /* listed: kept */
	storecheck_prune(st, cache, rows, 0);
	CHECK(stat(built, &sb2) < 0 && errno == ENOENT); /* not listed: gone */
	free(rows);

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
