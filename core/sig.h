/* Signatures: trust stores, k-of-n verification, signing, key generation.
 *
 * A .sig holds one base64 signature per line.  A line counts for a trusted
 * key when that key verifies it over the exact message bytes: ECDSA P-256
 * with SHA-256 (DER, as cosign sign-blob writes), Ed25519 (pure), or RSA of
 * at least 2048 bits with SHA-256 and PKCS#1 v1.5 padding.  Keys are told
 * apart by the SHA-256 of their SubjectPublicKeyInfo, so one key present in
 * two files, or signing twice, still counts once toward the threshold. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

#include "err.h"

struct trust_key {
	EVP_PKEY *pkey;
	uint8_t id[32];     /* SHA-256 of the DER SubjectPublicKeyInfo */
	char *source;       /* file it came from, for messages */
};

struct trust {
	size_t n;
	struct trust_key *keys;
};

/* path: one PEM public key file, or a directory of *.pub / *.pem files.
 * A file that is not a usable public key is an error (-EINVAL), not skipped:
 * an operator who drops a broken key in the trust dir wants to hear it. */
int trust_load(const char *path, struct trust **out, struct stella_err *e);
void trust_free(struct trust *t);

/* A threshold as written by an operator (threshold=N, --threshold N): a
 * whole number from 1 to the most keys a trust store holds; -EINVAL
 * otherwise.  One rule for the daemon and every tool. */
int sig_threshold_parse(const char *s, unsigned *out);

/* Count the distinct trusted keys that sign msg in the .sig text; returns 0
 * when at least threshold do, else -EKEYREJECTED with the reason. */
int sig_check(const struct trust *t, unsigned threshold, const uint8_t *msg, size_t len,
	      const char *sigtext, size_t siglen, unsigned *signers, struct stella_err *e);

/* Load a PKCS#8 (or traditional) PEM private key; -EINVAL if it is not one we
 * can sign with. */
int key_load_private(const char *path, EVP_PKEY **out, struct stella_err *e);
/* Sign msg; returns a malloc'ed base64 line (no newline). */
int sig_sign(EVP_PKEY *key, const uint8_t *msg, size_t len, char **b64, struct stella_err *e);

/* Sign a whole file (the kit's transfer signature).  ECDSA and RSA hash it
 * as a stream; pure Ed25519 cannot (one-shot in OpenSSL 3.0), so the file
 * is mapped read-only and a trimmer thread drops the pages already read
 * from the mapping as the signer goes (sig.c): RSS stays bounded by the
 * signer's speed, not the file's size. */
int sig_sign_file(EVP_PKEY *key, int fd, uint64_t size, char **b64, struct stella_err *e);

/* type: "ecdsa-p256", "ed25519" or "rsa-3072".  Writes PREFIX.key (0600) and
 * PREFIX.pub. */
int key_generate(const char *type, const char *prefix, struct stella_err *e);
