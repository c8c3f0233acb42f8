/* A small source tree and an ed25519 key in a temporary directory, and a
 * kit packed from them by core/kitwrite: shared by the unit tests of the
 * modules that write and read kits. */
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "kitwrite.h"
#include "sig.h"

static char fx_dir[] = "/tmp/stella-test-kit.XXXXXX";

static void fx_file(const char *name, uint64_t size, int seed)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/src/%s", fx_dir, name);
	FILE *f = fopen(path, "wb");
	CHECK(f != NULL);
	for (uint64_t i = 0; f && i < size; i++)
		fputc((int)((i * 131 + (uint64_t)seed * 7 + (i >> 12)) % 251), f);
	if (f)
		fclose(f);
}

/* dir/, src/{a.txt, d/big (3 blocks and a bit), d/empty, d/link -> big}, key.{key,pub} */
static void fx_setup(EVP_PKEY **key, struct trust **trust)
{
	CHECK(mkdtemp(fx_dir) != NULL);
	char cmd[1200], path[512];
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/src/d && ln -s big %s/src/d/link", fx_dir, fx_dir);
	CHECK(system(cmd) == 0);
	fx_file("a.txt", 100, 1);
	fx_file("d/big", 3 * 4096 + 17, 2);
	fx_file("d/empty", 0, 3);
	struct stella_err e = { 0 };
	snprintf(path, sizeof(path), "%s/key", fx_dir);
	CHECK(key_generate("ed25519", path, &e) == 0);
	snprintf(path, sizeof(path), "%s/key.key", fx_dir);
	CHECK(key_load_private(path, key, &e) == 0);
	snprintf(path, sizeof(path), "%s/key.pub", fx_dir);
	CHECK(trust_load(path, trust, &e) == 0);
}

#define FX_CREATED 1736899200

static int fx_pack(const char *out, EVP_PKEY *key, enum kit_compression comp, struct kitwrite_result *wr,
		   struct stella_err *e)
{
	char src[512];
	snprintf(src, sizeof(src), "%s/src", fx_dir);
	struct manifest *m = calloc(1, sizeof(*m));
	m->schema_version = 1;
	m->kit_id = strdup("k");
	m->version = strdup("v1");
	m->channel = strdup("stable");
	m->sequence = 1;
	m->created_at = FX_CREATED;
	m->expires_at = FX_CREATED + 86400 * 30;
	struct kitwrite_opts wo = { .src_dir = src, .out_path = out, .keys = &key, .nkeys = 1, .manifest = m,
				    .compression = comp };
	int r = kit_write(&wo, wr, e);
	manifest_free(m);
	return r;
}

static void fx_teardown(EVP_PKEY *key, struct trust *trust)
{
	trust_free(trust);
	EVP_PKEY_free(key);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", fx_dir);
	CHECK(system(cmd) == 0);
}
