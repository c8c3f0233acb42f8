/* store.c through its public API, without a mount: kits packed by
 * core/kitwrite are imported (the first one activated), listed in sequence
 * order with their identity; an identical file is stored once; the
 * ratchet refuses an older or equal sequence (-ESTALE) and another kit
 * under a taken version (-EEXIST); activate and rollback move the
 * pointers; the current snapshot cannot be removed; a removed snapshot's
 * blobs are swept once nothing references them; a second writer gets
 * -EBUSY; the journal keeps what it was given, one line each; an imported
 * snapshot opens and reads back its files; a kit handed over open is
 * imported from that open file even when its name now names another. */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "fdcache.h"
#include "kitwrite.h"
#include "sig.h"
#include "snapshot.h"
#include "source.h"
#include "store.h"

#define T0 INT64_C(1736899200)

static char dir[] = "/tmp/stella-test-store.XXXXXX";
static EVP_PKEY *key;
static struct trust *trust;

static void put(const char *rel, const char *text)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", dir, rel);
	for (char *c = p + strlen(dir) + 1; (c = strchr(c, '/')); c++) {
		*c = 0;
		mkdir(p, 0755);
		*c = '/';
	}
	FILE *f = fopen(p, "w");
	fputs(text, f);
	fclose(f);
}

/* Pack dir/src-<tag> as kit <version> with sequence seq. */
static void pack(const char *tag, const char *kit_id, const char *version, int64_t seq, char out[512])
{
	char src[512];
	snprintf(src, sizeof(src), "%s/src-%s", dir, tag);
	snprintf(out, 512, "%s/%s-%s.tar", dir, kit_id, version);
	struct manifest *m = calloc(1, sizeof(*m));
	m->schema_version = 1;
	m->kit_id = strdup(kit_id);
	m->version = strdup(version);
	m->channel = strdup("stable");
	m->sequence = seq;
	m->created_at = T0;
	m->expires_at = T0 + 86400 * 30;
	struct kitwrite_opts wo = { .src_dir = src, .out_path = out, .keys = &key, .nkeys = 1, .manifest = m };
	struct kitwrite_result wr;
	struct stella_err e = { 0 };
	CHECK(kit_write(&wo, &wr, &e) == 0);
	if (e.msg[0])
		fprintf(stderr, "  pack %s: %s\n", version, e.msg);
	manifest_free(m);
}

static int import(struct store *st, const char *kit, bool activate, char version[129])
{
	struct store_import_opts o = { .trust = trust, .threshold = 1, .now = T0 + 60, .activate = activate };
	struct stella_err e = { 0 };
	int r = store_lock(st, &e);
	if (r < 0)
		return r;
	r = store_import(st, kit, &o, version, &e);
	store_unlock(st);
	return r;
}

static size_t count_blobs(const char *store)
{
	char p[512];
	size_t n = 0;
	for (int hi = 0; hi < 256; hi++) {
		snprintf(p, sizeof(p), "%s/blobs/%02x", store, hi);
		DIR *d = opendir(p);
		if (!d)
			continue;
		for (struct dirent *de; (de = readdir(d));)
			n += de->d_name[0] != '.';
		closedir(d);
	}
	return n;
}

static void pointers(struct store *st, const char *cur, const char *prev)
{
	char c[129], p[129];
	struct stella_err e = { 0 };
	CHECK(store_pointers(st, c, p, &e) == 0);
	CHECK_STR(c, cur);
	if (prev)
		CHECK_STR(p, prev);
}

/* The snapshot's file at path reads back as text. */
static void reads_back(struct store *st, const char *version, const char *path, const char *text)
{
	struct snapshot *s = NULL;
	struct stella_err e = { 0 };
	CHECK(store_open_snapshot(st, version, &s, &e) == 0);
	if (!s) {
		fprintf(stderr, "  open %s: %s\n", version, e.msg);
		return;
	}
	uint64_t ino = INDEX_ROOT_INO;
	struct index_node n;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		CHECK(snapshot_lookup(s, ino, c, &n) == 0);
		ino = n.ino;
	}
	struct snap_file *f = NULL;
	CHECK(snapshot_file_open(s, ino, &f, &e) == 0);
	char got[256] = "";
	ssize_t k = f ? snapshot_read(f, got, sizeof(got) - 1, 0) : -1;
	CHECK(k == (ssize_t)strlen(text));
	if (k >= 0)
		got[k] = 0;
	CHECK_STR(got, text);
	if (f)
		snapshot_file_close(f);
	snapshot_unref(s);
}

/* The store's names for blobs and trees: two hex digits, then all 64. */
static void test_blob_name(void)
{
	uint8_t d[32];
	for (int i = 0; i < 32; i++)
		d[i] = (uint8_t)(0xa0 + i);
	char name[68];
	fdcache_digest_name(d, name);
	CHECK_STR(name, "a0/a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf");
}

int main(void)
{
	test_blob_name();
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	struct stella_err e = { 0 };
	char keyp[512];
	snprintf(keyp, sizeof(keyp), "%s/k", dir);
	CHECK(key_generate("ed25519", keyp, &e) == 0);
	char priv[600], pub[600];
	snprintf(priv, sizeof(priv), "%s.key", keyp);
	snprintf(pub, sizeof(pub), "%s.pub", keyp);
	CHECK(key_load_private(priv, &key, &e) == 0);
	CHECK(trust_load(pub, &trust, &e) == 0);

	put("src-a/feeds/shared.json", "{\"same\": true}\n");
	put("src-a/feeds/a.json", "{\"v\": 1}\n");
	put("src-b/feeds/shared.json", "{\"same\": true}\n");
	put("src-b/feeds/b.json", "{\"v\": 2}\n");
	char k1[512], k2[512], k2other[512], kold[512];
	pack("a", "kit", "v1", 10, k1);
	pack("b", "kit", "v2", 20, k2);
	pack("a", "other", "v2", 5, k2other);
	pack("b", "kit", "v0", 10, kold);

	char sd[512];
	snprintf(sd, sizeof(sd), "%s/store", dir);
	struct store *st = NULL;
	CHECK(store_open(sd, false, &st, &e) < 0); /* not made unless asked */
	CHECK(store_open(sd, true, &st, &e) == 0);
	if (!st)
		return CHECK_DONE();

	char v[129];
	CHECK(import(st, k1, true, v) == 0);
	CHECK_STR(v, "v1");
	CHECK(import(st, k2, false, v) == 0);
	pointers(st, "v1", NULL);
	/* shared.json once, a.json, b.json */
	CHECK(count_blobs(sd) == 3);
	CHECK(import(st, kold, false, v) == -ESTALE);     /* sequence 10 is not above 20 */
	CHECK(import(st, k2other, false, v) == -EEXIST); /* another kit under v2 */

	struct store_snapshot *list = NULL;
	size_t n = 0;
	CHECK(store_list(st, &list, &n, &e) == 0 && n == 2);
	if (n == 2) {
		CHECK_STR(list[0].version, "v1");
		CHECK_STR(list[1].version, "v2");
		CHECK(list[1].sequence == 20 && list[1].files == 2);
		CHECK_STR(list[1].kit_id, "kit");
	}
	free(list);

	CHECK(store_lock(st, &e) == 0);
	struct store *other = NULL;
	CHECK(store_open(sd, false, &other, &e) == 0);
	if (other) {
		CHECK(store_lock(other, &e) == -EBUSY);
		store_close(other);
	}
	CHECK(store_activate(st, "v2", &e) == 0);
	pointers(st, "v2", "v1");
	CHECK(store_activate(st, "nope", &e) == -ENOENT);
	char now[129];
	CHECK(store_rollback(st, NULL, now, &e) == 0);
	CHECK_STR(now, "v1");
	pointers(st, "v1", "v2");
	CHECK(store_remove(st, "v1", &e) < 0); /* current */
	CHECK(store_remove(st, "v2", &e) == 0);
	uint64_t removed = 0;
	CHECK(store_sweep(st, &removed, &e) == 0);
	CHECK(removed == 1 && count_blobs(sd) == 2); /* b.json went; shared.json stays for v1 */
	store_unlock(st);
	reads_back(st, "v1", "feeds/shared.json", "{\"same\": true}\n");
	reads_back(st, "v1", "feeds/a.json", "{\"v\": 1}\n");

	CHECK(store_journal_add(st, T0 + 1, 0, "activate v2", 0, "") == 0);
	CHECK(store_journal_add(st, T0 + 2, 1000, "remove v9", ENOENT, "no such snapshot") == 0);
	char *j = store_journal_text(st, 10);
	CHECK(j && strstr(j, "activate v2") && strstr(j, "remove v9"));
	size_t lines = 0;
	for (const char *p = j; p && *p; p++)
		lines += *p == '\n';
	CHECK(lines == 2);
	free(j);

	/* A kit handed over open (as the daemon does) is read through that
	 * file only: its name now naming another kit changes nothing. */
	char k3[512], k4[512];
	pack("a", "kit", "v3", 30, k3);
	pack("b", "kit", "v4", 40, k4);
	struct source *src = NULL;
	CHECK(source_open(k3, &src, &e) == 0);
	CHECK(rename(k4, k3) == 0);
	if (src) {
		struct store_import_opts o = { .trust = trust, .threshold = 1, .now = T0 + 60, .source = src };
		memset(&e, 0, sizeof(e));
		CHECK(store_lock(st, &e) == 0);
		CHECK(store_import(st, k3, &o, v, &e) == 0);
		if (e.msg[0])
			fprintf(stderr, "  import of an open kit: %s\n", e.msg);
		CHECK_STR(v, "v3");
		store_unlock(st);
		source_close(src);
		reads_back(st, "v3", "feeds/a.json", "{\"v\": 1}\n");
	}
	store_close(st);

	/* reopened: the same truth */
	st = NULL;
	CHECK(store_open(sd, false, &st, &e) == 0);
	if (st) {
		pointers(st, "v1", NULL);
		store_close(st);
	}

	trust_free(trust);
	EVP_PKEY_free(key);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
