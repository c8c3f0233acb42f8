/* libFuzzer target: trust stores (core/sig.c trust_load) as an operator's
 * trust directory holds them, then k-of-n counting against them.
 *
 * The input is cut at each line "--8<--" into pieces; piece i becomes a
 * file in an empty directory, under a name that a directory load takes
 * (*.pub, *.pem) or must skip (*.key, dot files), in turn.  A piece that is
 * exactly "@dir", "@fifo", "@link" or "@big" becomes a directory, a named
 * pipe, a dangling symlink or a file over the size limit instead.  The
 * directory is loaded, and so is the first piece alone (trust=FILE).
 *
 * Whatever loads is checked against a fixed message signed by three fixed
 * keys (tests/fuzz/fuzzkeys.h: Ed25519, ECDSA P-256, RSA-2048), each
 * signature line given twice: sig_check must count exactly the fixed keys
 * the store holds, each once however many files or encodings carry it (a
 * key counted twice would let one signer meet a threshold of two). */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bounds.h"
#include "fuzzkeys.h"
#include "sig.h"
#include "util.h"
#include "workdir.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SEP "\n--8<--\n"
#define MAX_PIECES 400   /* enough for more than STELLA_TRUST_KEYS_MAX loadable names */

static const char msg[] = "{\n  \"schemaVersion\": 1,\n  \"kitId\": \"fuzz-trust\"\n}\n";
static char work[64];       /* the harness's directory */
static char dir[128];       /* the trust directory, emptied before each input */
static EVP_PKEY *fixed[3];
static char *sigtext;
static size_t siglen;

static void die(const char *what, const struct stella_err *e, int r)
{
	fprintf(stderr, "fuzz_trust setup: %s: %s\n", what, e ? stella_err_text(e, r) : strerror(-r));
	abort();
}

static void put_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write_full(fd, data, len) < 0) {
		perror(path);
		abort();
	}
	close(fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(work, sizeof work, "%s", workdir_make("fuzz_trust"));
	snprintf(dir, sizeof dir, "%s/trust", work);
	if (mkdir(dir, 0700) < 0)
		die(dir, NULL, -errno);

	const char *keys[] = { fuzzkey_ed25519_key, fuzzkey_ec_key, fuzzkey_rsa_key };
	const char *pubs[] = { fuzzkey_ed25519_pub, fuzzkey_ec_pub, fuzzkey_rsa_pub };
	char p[256];
	snprintf(p, sizeof p, "%s/key", work);
	size_t cap = 0;
	for (int i = 0; i < 3; i++) {
		struct stella_err e = { 0 };
		put_file(p, keys[i], strlen(keys[i]));
		int r = key_load_private(p, &fixed[i], &e);
		if (r < 0)
			die("fixed key", &e, r);
		char *line = NULL;
		if ((r = sig_sign(fixed[i], (const uint8_t *)msg, sizeof msg - 1, &line, &e)) < 0)
			die("signing", &e, r);
		/* each line twice: a key must count once however often it signed */
		size_t l = strlen(line);
		char *nt = realloc(sigtext, cap + 2 * (l + 1) + 1);
		if (!nt)
			abort();
		sigtext = nt;
		for (int twice = 0; twice < 2; twice++) {
			memcpy(sigtext + cap, line, l);
			sigtext[cap + l] = '\n';
			cap += l + 1;
		}
		sigtext[cap] = 0;
		free(line);
	}
	siglen = cap;
	unlink(p);

	const char *seeds = getenv("STELLA_FUZZ_SEEDS");
	if (seeds && *seeds) {
		/* one file per fixed key, and all three in one input */
		const char *names[] = { "ed25519.pub", "ecdsa.pub", "rsa.pub" };
		char out[600];
		for (int i = 0; i < 3; i++) {
			snprintf(out, sizeof out, "%s/%s", seeds, names[i]);
			put_file(out, pubs[i], strlen(pubs[i]));
		}
		size_t n = 0;
		char all[8192];
		for (int i = 0; i < 3; i++)
			n += (size_t)snprintf(all + n, sizeof all - n, "%s%s", i ? "--8<--\n" : "", pubs[i]);
		snprintf(out, sizeof out, "%s/all-three.txt", seeds);
		put_file(out, all, n);
	}
	return 0;
}

/* Names in turn: loaded (*.pub, *.pem) or skipped by a directory load. */
static void piece_name(size_t i, char *out, size_t n)
{
	static const char *const pre[] = { "", "", "", "", ".", "" };
	static const char *const ext[] = { ".pub", ".pem", ".pub", ".key", ".pub", ".pub" };
	snprintf(out, n, "%sk%03zu%s", pre[i % 6], i, ext[i % 6]);
}

static bool is(const uint8_t *p, size_t len, const char *word)
{
	size_t wl = strlen(word);
	return (len == wl || (len == wl + 1 && p[wl] == '\n')) && !memcmp(p, word, wl);
}

static void make_piece(const char *path, const uint8_t *p, size_t len)
{
	if (is(p, len, "@dir")) {
		if (mkdir(path, 0755) < 0)
			abort();
	} else if (is(p, len, "@fifo")) {
		if (mkfifo(path, 0644) < 0)
			abort();
	} else if (is(p, len, "@link")) {
		if (symlink("nowhere/at/all.pub", path) < 0)
			abort();
	} else if (is(p, len, "@big")) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || ftruncate(fd, STELLA_KEY_FILE_MAX + 1) < 0)
			abort();
		close(fd);
	} else {
		put_file(path, p, len);
	}
}

/* The fixed keys a trust store holds, compared as keys (not by the ids
 * sig.c computes). */
static unsigned fixed_held(const struct trust *t)
{
	unsigned n = 0;
	for (int f = 0; f < 3; f++)
		for (size_t i = 0; i < t->n; i++)
			if (EVP_PKEY_eq(t->keys[i].pkey, fixed[f]) == 1) {
				n++;
				break;
			}
	return n;
}

static void check(const struct trust *t)
{
	if (t->n == 0 || t->n > STELLA_TRUST_KEYS_MAX) {
		fprintf(stderr, "trust store of %zu keys\n", t->n);
		abort();
	}
	for (size_t i = 0; i < t->n; i++) {
		if (!t->keys[i].pkey || !t->keys[i].source)
			abort();
		for (size_t j = 0; j < i; j++)
			if (!memcmp(t->keys[i].id, t->keys[j].id, 32)) {
				fprintf(stderr, "keys %zu and %zu have the same id\n", j, i);
				abort();
			}
	}
	unsigned want = fixed_held(t), got = 0;
	struct stella_err e = { 0 };
	int r = sig_check(t, 1, (const uint8_t *)msg, sizeof msg - 1, sigtext, siglen, &got, &e);
	if (got != want || (r == 0) != (want > 0)) {
		fprintf(stderr, "sig_check counted %u signer(s) (r=%d), the store holds %u of the signing keys:\n",
			got, r, want);
		for (size_t i = 0; i < t->n; i++)
			fprintf(stderr, "  %s\n", t->keys[i].source);
		abort();
	}
	if (want) {
		e = (struct stella_err){ 0 };
		if (sig_check(t, want, (const uint8_t *)msg, sizeof msg - 1, sigtext, siglen, &got, &e) != 0)
			abort();
		e = (struct stella_err){ 0 };
		if (sig_check(t, want + 1, (const uint8_t *)msg, sizeof msg - 1, sigtext, siglen, &got, &e) !=
		    -EKEYREJECTED) {
			fprintf(stderr, "threshold %u met by %u signing key(s)\n", want + 1, want);
			abort();
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char names[MAX_PIECES][16];
	char path[256], first[256] = "";
	size_t n = 0, pos = 0;

	while (n < MAX_PIECES) {
		const uint8_t *end = memmem(data + pos, size - pos, SEP, strlen(SEP));
		size_t plen = end ? (size_t)(end - (data + pos)) + 1 : size - pos;  /* keeps its '\n' */
		piece_name(n, names[n], sizeof names[n]);
		snprintf(path, sizeof path, "%s/%s", dir, names[n]);
		make_piece(path, data + pos, plen);
		if (n == 0)
			snprintf(first, sizeof first, "%s", path);
		n++;
		if (!end)
			break;
		pos = (size_t)(end - data) + strlen(SEP);
	}

	struct stella_err e = { 0 };
	struct trust *t = NULL;
	if (trust_load(dir, &t, &e) == 0) {
		check(t);
		trust_free(t);
	}
	t = NULL;
	e = (struct stella_err){ 0 };
	if (trust_load(first, &t, &e) == 0) {
		check(t);
		trust_free(t);
	}

	for (size_t i = 0; i < n; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, names[i]);
		if (unlink(path) < 0 && rmdir(path) < 0)
			abort();
	}
	return 0;
}
