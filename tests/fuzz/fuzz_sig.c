/* libFuzzer target: sig_check with a fixed trust store (one ECDSA P-256 and
 * one Ed25519 key generated at first call) over a fixed message; the input is
 * the .sig text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct trust *trust;
static const char msg[] = "{\n  \"schemaVersion\": 1,\n  \"kitId\": \"fuzz\"\n}\n";

static void rm_dir(const char *dir)
{
	char p[4096];
	const char *names[] = {"ec.key", "ec.pub", "ed.key", "ed.pub"};
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		snprintf(p, sizeof p, "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
}

static void setup(void)
{
	char dir[] = "/tmp/fuzz_sig.XXXXXX";
	char prefix[4096];
	struct stella_err e = {0};
	if (!mkdtemp(dir))
		abort();
	snprintf(prefix, sizeof prefix, "%s/ec", dir);
	if (key_generate("ecdsa-p256", prefix, &e) != 0) {
		fprintf(stderr, "key_generate: %s\n", e.msg);
		abort();
	}
	snprintf(prefix, sizeof prefix, "%s/ed", dir);
	if (key_generate("ed25519", prefix, &e) != 0) {
		fprintf(stderr, "key_generate: %s\n", e.msg);
		abort();
	}
	/* A directory load takes only *.pub / *.pem: the .key files stay out. */
	if (trust_load(dir, &trust, &e) != 0) {
		fprintf(stderr, "trust_load: %s\n", e.msg);
		abort();
	}
	rm_dir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!trust)
		setup();
	struct stella_err e = {0};
	unsigned signers = 0;
	(void)sig_check(trust, 1, (const uint8_t *)msg, sizeof msg - 1, (const char *)data, size,
			&signers, &e);
	e = (struct stella_err){0};
	(void)sig_check(trust, 2, (const uint8_t *)msg, sizeof msg - 1, (const char *)data, size,
			&signers, &e);
	return 0;
}
