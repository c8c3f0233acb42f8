/* Signing and k-of-n verification over distinct keys, for each algorithm. */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "sig.h"
#include "util.h"

static char dir[] = "/tmp/stella-test-sig.XXXXXX";

static EVP_PKEY *make(const char *type, const char *name)
{
	char prefix[256], path[300];
	snprintf(prefix, sizeof(prefix), "%s/%s", dir, name);
	struct stella_err e = { 0 };
	CHECK(key_generate(type, prefix, &e) == 0);
	snprintf(path, sizeof(path), "%s.key", prefix);
	struct stat st;
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	EVP_PKEY *k = NULL;
	CHECK(key_load_private(path, &k, &e) == 0);
	return k;
}

static char *sign(EVP_PKEY *k, const char *msg)
{
	char *s = NULL;
	struct stella_err e = { 0 };
	CHECK(sig_sign(k, (const uint8_t *)msg, strlen(msg), &s, &e) == 0);
	return s;
}

static int check(const char *trust_path, unsigned threshold, const char *msg, const char *sigtext,
		 unsigned *signers)
{
	struct trust *t = NULL;
	struct stella_err e = { 0 };
	int r = trust_load(trust_path, &t, &e);
	CHECK(r == 0);
	if (r < 0)
		return r;
	r = sig_check(t, threshold, (const uint8_t *)msg, strlen(msg), sigtext, strlen(sigtext), signers, &e);
	trust_free(t);
	return r;
}

/* A file signed through sig_sign_file is signed over exactly its bytes:
 * Ed25519 is deterministic, so the signature of the mapped file (its pages
 * dropped from the mapping behind the signer) equals the one over the
 * same bytes in memory.  Large enough that the trimmer runs while the
 * signer reads. */
static void sign_file_same(EVP_PKEY *ed)
{
	size_t size = (48u << 20) + 12345;
	uint8_t *data = malloc(size);
	CHECK(data != NULL);
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < size; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		data[i] = (uint8_t)x;
	}
	char path[300];
	snprintf(path, sizeof(path), "%s/big.bin", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0 && write(fd, data, size) == (ssize_t)size);
	struct stella_err e = { 0 };
	char *a = NULL, *b = NULL, *z = NULL, *z2 = NULL;
	CHECK(sig_sign(ed, data, size, &a, &e) == 0);
	CHECK(sig_sign_file(ed, fd, size, &b, &e) == 0);
	CHECK(a && b && !strcmp(a, b));
	/* the empty file: no mapping at all */
	CHECK(sig_sign(ed, (const uint8_t *)"", 0, &z, &e) == 0);
	CHECK(sig_sign_file(ed, fd, 0, &z2, &e) == 0);
	CHECK(z && z2 && !strcmp(z, z2));
	close(fd);
	unlink(path);
	free(a);
	free(b);
	free(z);
	free(z2);
	free(data);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	unsigned th = 7;
	CHECK(sig_threshold_parse("1", &th) == 0 && th == 1);
	CHECK(sig_threshold_parse("256", &th) == 0 && th == 256);
	CHECK(sig_threshold_parse("0", &th) == -EINVAL && th == 256);
	CHECK(sig_threshold_parse("257", &th) == -EINVAL);
	CHECK(sig_threshold_parse("-1", &th) == -EINVAL);
	CHECK(sig_threshold_parse("2x", &th) == -EINVAL);
	CHECK(sig_threshold_parse("", &th) == -EINVAL);
	EVP_PKEY *ec = make("ecdsa-p256", "ec"), *ed = make("ed25519", "ed"), *rsa = make("rsa-3072", "rsa");
	sign_file_same(ed);
	const char *msg = "the manifest bytes\n";
	char *s_ec = sign(ec, msg), *s_ed = sign(ed, msg), *s_rsa = sign(rsa, msg);
	char path[300], text[8192];
	unsigned n;

	snprintf(path, sizeof(path), "%s/ec.pub", dir);
	CHECK(check(path, 1, msg, s_ec, &n) == 0 && n == 1);
	CHECK(check(path, 1, "other bytes", s_ec, &n) == -EKEYREJECTED);
	CHECK(check(path, 1, msg, s_ed, &n) == -EKEYREJECTED);      /* untrusted key */
	CHECK(check(path, 1, msg, "", &n) == -EKEYREJECTED);        /* empty */
	CHECK(check(path, 1, msg, "!!!not base64!!!\n", &n) == -EKEYREJECTED);

	/* The directory holds all three public keys. */
	snprintf(text, sizeof(text), "%s\n%s\n%s\n", s_ec, s_ed, s_rsa);
	CHECK(check(dir, 3, msg, text, &n) == 0 && n == 3);
	/* The same key's signature twice counts once. */
	snprintf(text, sizeof(text), "%s\n%s\n", s_ec, s_ec);
	CHECK(check(dir, 2, msg, text, &n) == -EKEYREJECTED && n == 1);
	/* Whitespace and blank lines around lines are tolerated. */
	snprintf(text, sizeof(text), "\n  %s \r\n\n%s", s_ed, s_rsa);
	CHECK(check(dir, 2, msg, text, &n) == 0 && n == 2);

	/* A copy of a key under another name is still one key. */
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "cp %s/ec.pub %s/ec-copy.pem", dir, dir);
	CHECK(system(cmd) == 0);
	struct trust *t = NULL;
	struct stella_err e = { 0 };
	CHECK(trust_load(dir, &t, &e) == 0 && t && t->n == 3);
	trust_free(t);

	/* A file that is not a key is an error naming the file. */
	snprintf(path, sizeof(path), "%s/junk.pub", dir);
	FILE *f = fopen(path, "w");
	fputs("not a key\n", f);
	fclose(f);
	memset(&e, 0, sizeof(e));
	t = NULL;
	CHECK(trust_load(dir, &t, &e) == -EINVAL && strstr(e.msg, "junk.pub"));
	memset(&e, 0, sizeof(e));
	EVP_PKEY *k = NULL;
	CHECK(key_load_private(path, &k, &e) == -EINVAL && strstr(e.msg, "not a PEM private key"));

	free(s_ec);
	free(s_ed);
	free(s_rsa);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(ed);
	EVP_PKEY_free(rsa);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return CHECK_DONE();
}
