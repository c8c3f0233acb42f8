#include "sig.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "bounds.h"
#include "mapview.h"
#include "merkle.h"
#include "util.h"

static void pkey_freep(EVP_PKEY **p) { EVP_PKEY_free(*p); }
static void bio_freep(BIO **p) { BIO_free(*p); }

/* Which algorithms we accept, and how to use them: one table, shared by
 * trust loading, signing and verifying. */
static int key_kind(EVP_PKEY *k, const char **why)
{
	if (EVP_PKEY_is_a(k, "ED25519"))
		return 0;
	if (EVP_PKEY_is_a(k, "EC")) {
		char group[64] = "";
		size_t glen;
		if (EVP_PKEY_get_utf8_string_param(k, "group", group, sizeof(group), &glen) &&
		    (!strcmp(group, "prime256v1") || !strcmp(group, "P-256")))
			return 0;
		*why = "EC keys must be on curve P-256";
		return -EINVAL;
	}
	if (EVP_PKEY_is_a(k, "RSA")) {
		if (EVP_PKEY_get_bits(k) >= 2048)
			return 0;
		*why = "RSA keys must have at least 2048 bits";
		return -EINVAL;
	}
	*why = "unsupported key type (ECDSA P-256, Ed25519 or RSA >= 2048 expected)";
	return -EINVAL;
}

/* Ed25519 signs the message itself; the others sign its SHA-256. */
static const char *key_md(EVP_PKEY *k)
{
	return EVP_PKEY_is_a(k, "ED25519") ? NULL : "SHA256";
}

/* The SHA-256 of the key's SubjectPublicKeyInfo, in one encoding per key:
 * an EC key read with a compressed point or explicit curve parameters is
 * encoded as a named curve with an uncompressed point first, or the same
 * key in two files would have two ids (and count twice toward a
 * threshold; load_public also compares the keys themselves). */
static int key_id(EVP_PKEY *k, uint8_t id[32])
{
	if (EVP_PKEY_is_a(k, "EC")) {
		EVP_PKEY_set_utf8_string_param(k, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
					       OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED);
		EVP_PKEY_set_utf8_string_param(k, OSSL_PKEY_PARAM_EC_ENCODING, OSSL_PKEY_EC_ENCODING_GROUP);
		ERR_clear_error();
	}
	unsigned char *der = NULL;
	int n = i2d_PUBKEY(k, &der);
	if (n <= 0)
		return -ENOMEM;
	int r = sha256_once(der, (size_t)n, id);
	OPENSSL_free(der);
	return r;
}

/* A key file: a small regular file, read without waiting on anything
 * else (read_file).  -EINVAL, -EFBIG or -errno. */
static int read_key_file(const char *path, char **out, size_t *len)
{
	return read_file(path, STELLA_KEY_FILE_MAX, out, len);
}

static int load_public(const char *file, struct trust *t, struct stella_err *e)
{
	_cleanup_(freep) char *buf = NULL;
	size_t len;
	int r = read_key_file(file, &buf, &len);
	if (r == -EFBIG || r == -EINVAL)
		return stella_fail(e, -EINVAL, "%s: not a PEM public key (not a small regular file)", file);
	if (r < 0)
		return stella_fail_errno(e, r, "%s", file);
	_cleanup_(bio_freep) BIO *bio = BIO_new_mem_buf(buf, (int)len);
	if (!bio)
		return -ENOMEM;
	_cleanup_(pkey_freep) EVP_PKEY *k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	ERR_clear_error();
	if (!k)
		return stella_fail(e, -EINVAL, "%s: not a PEM public key (SubjectPublicKeyInfo expected)", file);
	const char *why = NULL;
	if (key_kind(k, &why) < 0)
		return stella_fail(e, -EINVAL, "%s: %s", file, why);
	uint8_t id[32];
	if ((r = key_id(k, id)) < 0)
		return stella_fail_errno(e, r, "%s: key id", file);
	for (size_t i = 0; i < t->n; i++)
		if (!memcmp(t->keys[i].id, id, 32) || EVP_PKEY_eq(t->keys[i].pkey, k) == 1) {
			ERR_clear_error();
			return 0; /* the same key twice is one key, however encoded */
		}
	ERR_clear_error();
	struct trust_key *nk = realloc(t->keys, (t->n + 1) * sizeof(*nk));
	if (!nk)
		return -ENOMEM;
	t->keys = nk;
	if (!(nk[t->n].source = strdup(file)))
		return -ENOMEM;
	memcpy(nk[t->n].id, id, 32);
	nk[t->n].pkey = k;
	k = NULL;
	t->n++;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_dir(const char *dir, struct trust *t, struct stella_err *e)
{
	DIR *d = opendir(dir);
	if (!d)
		return stella_fail_errno(e, -errno, "%s", dir);
	char **names = NULL;
	size_t n = 0;
	int r = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (de->d_name[0] == '.' || l < 5 ||
		    (strcmp(de->d_name + l - 4, ".pub") && strcmp(de->d_name + l - 4, ".pem")))
			continue;
		if (n >= STELLA_TRUST_KEYS_MAX) {
			r = stella_fail(e, -EINVAL, "%s: more than %u key files", dir, STELLA_TRUST_KEYS_MAX);
			goto out;
		}
		char **nn = realloc(names, (n + 1) * sizeof(*nn));
		if (!nn || !(nn[n] = malloc(strlen(dir) + l + 2))) {
			names = nn ? nn : names;
			r = -ENOMEM;
			goto out;
		}
		names = nn;
		sprintf(names[n++], "%s/%s", dir, de->d_name);
	}
	/* Sorted, so that messages and key order do not depend on readdir. */
	if (n)
		qsort(names, n, sizeof(*names), cmp_str);
	for (size_t i = 0; i < n && r == 0; i++)
		r = load_public(names[i], t, e);
	if (r == 0 && t->n == 0)
		r = stella_fail(e, -EINVAL, "%s: no trusted keys (*.pub or *.pem) in this directory", dir);
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return r;
}

void trust_free(struct trust *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++) {
		EVP_PKEY_free(t->keys[i].pkey);
		free(t->keys[i].source);
	}
	free(t->keys);
	free(t);
}

int trust_load(const char *path, struct trust **out, struct stella_err *e)
{
	struct stat st;
	if (stat(path, &st) < 0) /* a wrong -t argument: a usage error, with the real reason */
		return stella_fail(e, errno == ENOENT ? -EINVAL : -errno, "trust %s: %s", path, strerror(errno));
	struct trust *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	int r = S_ISDIR(st.st_mode) ? load_dir(path, t, e) : load_public(path, t, e);
	if (r < 0) {
		trust_free(t);
		return r;
	}
	*out = t;
	return 0;
}

/* 1: the signature verifies with k; 0: it does not; -ENOMEM: it could not
 * be checked at all (OpenSSL could not set up a context for a key that was
 * accepted when loaded: memory).  A failure to check is not a bad signature:
 * it must not turn into "untrusted" (exit 5) for a good kit. */
static int verify_one(EVP_PKEY *k, const uint8_t *msg, size_t len, const uint8_t *sig, size_t siglen)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int r = -ENOMEM;
	if (ctx && EVP_DigestVerifyInit_ex(ctx, NULL, key_md(k), NULL, NULL, k, NULL) == 1)
		r = EVP_DigestVerify(ctx, sig, siglen, msg, len) == 1;
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return r;
}

/* The same for ECDSA and RSA keys, given the message's SHA-256: what they
 * sign is the digest, so the message is hashed once for every line and
 * key, not once per pair (64 lines x 256 keys x a 64 MiB manifest, all
 * before any signature is known good). */
static int verify_digest(EVP_PKEY *k, const uint8_t dgst[32], const uint8_t *sig, size_t siglen)
{
	EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL);
	int r = -ENOMEM;
	if (pc && EVP_PKEY_verify_init(pc) == 1 && EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1)
		r = EVP_PKEY_verify(pc, sig, siglen, dgst, 32) == 1;
	EVP_PKEY_CTX_free(pc);
	ERR_clear_error();
	return r;
}

/* Whether sig can be a signature by k at all, judged from its shape alone:
 * a line of noise must cost no hashing. */
static bool sig_shape_ok(EVP_PKEY *k, const uint8_t *sig, size_t n)
{
	if (EVP_PKEY_is_a(k, "ED25519"))
		return n == 64;
	int max = EVP_PKEY_get_size(k);
	if (max <= 0 || n > (size_t)max)
		return false;
	if (EVP_PKEY_is_a(k, "RSA"))
		return n == (size_t)max;
	/* ECDSA: a DER SEQUENCE whose length covers exactly the line; read
	 * from the header, not parsed, since a parse allocates and a failed
	 * allocation must not pass for a bad signature */
	if (n >= 2 && sig[0] == 0x30 && sig[1] < 0x80)
		return sig[1] == n - 2;
	return n >= 3 && sig[0] == 0x30 && sig[1] == 0x81 && sig[2] == n - 3;
}

int sig_check(const struct trust *t, unsigned threshold, const uint8_t *msg, size_t len,
	      const char *sigtext, size_t siglen, unsigned *signers, struct stella_err *e)
{
	bool seen[STELLA_TRUST_KEYS_MAX] = { false }, hashed = false;
	unsigned good = 0, lines = 0;
	uint8_t sig[1024], dgst[32];

	if (signers)
		*signers = 0;
	if (threshold == 0)
		threshold = 1;
	for (size_t i = 0; i < siglen;) {
		size_t j = i;
		while (j < siglen && sigtext[j] != '\n')
			j++;
		size_t a = i, b = j;
		i = j + 1;
		while (a < b && (sigtext[a] == ' ' || sigtext[a] == '\t' || sigtext[a] == '\r'))
			a++;
		while (b > a && (sigtext[b - 1] == ' ' || sigtext[b - 1] == '\t' || sigtext[b - 1] == '\r'))
			b--;
		if (a == b)
			continue;
		if (++lines > STELLA_SIG_LINES_MAX)
			break;
		ssize_t n = base64_decode(sigtext + a, b - a, sig, sizeof(sig));
		if (n <= 0)
			continue; /* not base64: counts for no key */
		for (size_t k = 0; k < t->n; k++) {
			EVP_PKEY *key = t->keys[k].pkey;
			if (seen[k] || !sig_shape_ok(key, sig, (size_t)n))
				continue;
			int v;
			if (!key_md(key)) {
				v = verify_one(key, msg, len, sig, (size_t)n);
			} else {
				if (!hashed && (v = sha256_once(msg, len, dgst)) < 0)
					return stella_fail_errno(e, v, "signature: hashing the manifest");
				hashed = true;
				v = verify_digest(key, dgst, sig, (size_t)n);
			}
			if (v < 0)
				return stella_fail_errno(e, v, "signature: checking failed in OpenSSL");
			if (v) {
				seen[k] = true;
				good++;
				break;
			}
		}
	}
	if (signers)
		*signers = good;
	if (lines == 0)
		return stella_fail(e, -EKEYREJECTED, "signature: the signature member is empty");
	if (good == 0)
		return stella_fail(e, -EKEYREJECTED,
				   "signature: none of the %u signature line(s) verifies with a trusted key", lines);
	if (good < threshold)
		return stella_fail(e, -EKEYREJECTED,
				   "signature: threshold not met: %u distinct trusted key(s) signed, %u required (the trust store holds %zu)",
				   good, threshold, t->n);
	return 0;
}

int key_load_private(const char *path, EVP_PKEY **out, struct stella_err *e)
{
	_cleanup_(freep) char *buf = NULL;
	size_t len;
	int r = read_key_file(path, &buf, &len);
	if (r == -EFBIG || r == -EINVAL)
		return stella_fail(e, -EINVAL, "%s: not a PEM private key (not a small regular file)", path);
	if (r < 0)
		return stella_fail(e, r == -ENOENT ? -EINVAL : r, "key %s: %s", path, strerror(-r));
	_cleanup_(bio_freep) BIO *bio = BIO_new_mem_buf(buf, (int)len);
	if (!bio)
		return -ENOMEM;
	EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
	ERR_clear_error();
	if (!k)
		return stella_fail(e, -EINVAL, "%s: not a PEM private key (PKCS#8 expected, unencrypted)", path);
	const char *why = NULL;
	if (key_kind(k, &why) < 0) {
		EVP_PKEY_free(k);
		return stella_fail(e, -EINVAL, "%s: %s", path, why);
	}
	*out = k;
	return 0;
}

int sig_sign(EVP_PKEY *key, const uint8_t *msg, size_t len, char **b64, struct stella_err *e)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t n = 0;
	uint8_t *sig = NULL;
	int r;
	if (!ctx)
		r = stella_fail_errno(e, -ENOMEM, "signing");
	else if (EVP_DigestSignInit_ex(ctx, NULL, key_md(key), NULL, NULL, key, NULL) != 1 ||
		 EVP_DigestSign(ctx, NULL, &n, msg, len) != 1)
		r = stella_fail(e, -EIO, "signing failed in OpenSSL");
	else if (!(sig = malloc(n)))
		r = stella_fail_errno(e, -ENOMEM, "signing");
	else if (EVP_DigestSign(ctx, sig, &n, msg, len) != 1)
		r = stella_fail(e, -EIO, "signing failed in OpenSSL");
	else if (!(*b64 = base64_encode(sig, n)))
		r = stella_fail_errno(e, -ENOMEM, "signing");
	else
		r = 0;
	ERR_clear_error();
	free(sig);
	EVP_MD_CTX_free(ctx);
	return r;
}

/* Pure Ed25519 is one call over the whole message in OpenSSL 3.0 (it reads
 * it twice: once for the nonce, once for the challenge), so a file is
 * signed through a mapping trimmed behind the signer (mapview.h): its
 * pages do not stay in our RSS. */
static int sign_mapped(EVP_PKEY *key, int fd, uint64_t size, char **b64, struct stella_err *e)
{
	struct mapview v;
	int r = mapview_open(fd, size, &v);
	if (r < 0)
		return stella_fail_errno(e, r, "mmap for signing");
	r = sig_sign(key, v.base, v.size, b64, e);
	mapview_close(&v);
	return r;
}

int sig_sign_file(EVP_PKEY *key, int fd, uint64_t size, char **b64, struct stella_err *e)
{
	if (!key_md(key))
		return sign_mapped(key, fd, size, b64, e);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t *buf = malloc(1 << 20), *sig = NULL;
	size_t n = 0;
	int r = -ENOMEM;
	if (!ctx || !buf || EVP_DigestSignInit_ex(ctx, NULL, key_md(key), NULL, NULL, key, NULL) != 1)
		goto out;
	for (uint64_t off = 0; off < size;) {
		size_t want = (size_t)MIN(size - off, (uint64_t)1 << 20);
		if ((r = pread_full(fd, buf, want, off)) < 0) {
			r = stella_fail_errno(e, r, "reading for signing");
			goto out;
		}
		if (EVP_DigestSignUpdate(ctx, buf, want) != 1) {
			r = -EIO;
			goto out;
		}
		off += want;
	}
	r = -EIO;
	if (EVP_DigestSignFinal(ctx, NULL, &n) != 1 || !(sig = malloc(n)) || EVP_DigestSignFinal(ctx, sig, &n) != 1)
		goto out;
	r = (*b64 = base64_encode(sig, n)) ? 0 : -ENOMEM;
out:
	if (r == -EIO)
		r = stella_fail(e, -EIO, "signing failed in OpenSSL");
	ERR_clear_error();
	free(sig);
	free(buf);
	EVP_MD_CTX_free(ctx);
	return r;
}

int key_generate(const char *type, const char *prefix, struct stella_err *e)
{
	EVP_PKEY *k = NULL;
	if (!strcmp(type, "ecdsa-p256"))
		k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	else if (!strcmp(type, "ed25519"))
		k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	else if (!strcmp(type, "rsa-3072"))
		k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
	else
		return stella_fail(e, -EINVAL, "unknown key type \"%s\" (ecdsa-p256, ed25519, rsa-3072)", type);
	if (!k)
		return stella_fail(e, -ENOMEM, "key generation failed in OpenSSL");
	_cleanup_(pkey_freep) EVP_PKEY *key = k;

	BIO *priv = BIO_new(BIO_s_mem()), *pub = BIO_new(BIO_s_mem());
	int r = -ENOMEM;
	char *data;
	long n;
	size_t plen = strlen(prefix) + 5;
	_cleanup_(freep) char *path = malloc(plen);
	if (!priv || !pub || !path || !PEM_write_bio_PrivateKey(priv, key, NULL, NULL, 0, NULL, NULL) ||
	    !PEM_write_bio_PUBKEY(pub, key))
		goto out;
	/* The private key first, and never readable by others, not even for
	 * the instant between create and chmod. */
	snprintf(path, plen, "%s.key", prefix);
	n = BIO_get_mem_data(priv, &data);
	if ((r = write_file_atomic(path, data, (size_t)n, 0600)) < 0) {
		r = stella_fail_errno(e, r, "%s", path);
		goto out;
	}
	snprintf(path, plen, "%s.pub", prefix);
	n = BIO_get_mem_data(pub, &data);
	if ((r = write_file_atomic(path, data, (size_t)n, 0644)) < 0)
		r = stella_fail_errno(e, r, "%s", path);
out:
	BIO_free(priv);
	BIO_free(pub);
	ERR_clear_error();
	return r;
}

int sig_threshold_parse(const char *s, unsigned *out)
{
	uint64_t n;
	if (parse_u64(s, &n) < 0 || n < 1 || n > STELLA_TRUST_KEYS_MAX)
		return -EINVAL;
	*out = (unsigned)n;
	return 0;
}
