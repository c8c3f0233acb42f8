#include "hasher.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "util.h"

enum slot_state { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_HASHING };

struct slot {
	uint8_t *buf;
	size_t len;
	uint64_t first_block;
	enum slot_state state;
};

struct hasher {
	unsigned nworkers;
	pthread_t *workers;
	pthread_mutex_t lock;
	pthread_cond_t cond;     /* any slot changed state, or stop */
	bool stop;

	unsigned nslots;
	struct slot *slots;
	unsigned next;           /* next slot the producer fills */
	unsigned pending;        /* slots READY or HASHING */

	EVP_MD_CTX *sha;
	uint64_t size, fed;
	struct merkle_geom geom;
	uint8_t *tree;
	uint8_t first_leaf[32];
	int err;                 /* a leaf that could not be hashed (locked) */
};

static uint8_t *leaf_slot(struct hasher *h, uint64_t block)
{
	if (h->geom.levels == 0)
		return h->first_leaf;
	uint64_t tb;
	unsigned off;
	merkle_parent_slot(&h->geom, 0, block, &tb, &off);
	return h->tree + tb * MERKLE_BLOCK + off;
}

static int hash_leaves(struct hasher *h, const uint8_t *buf, size_t len, uint64_t first_block)
{
	for (size_t off = 0; off < len; off += MERKLE_BLOCK) {
		int r = merkle_hash_block(buf + off, MIN(MERKLE_BLOCK, len - off),
					  leaf_slot(h, first_block + off / MERKLE_BLOCK));
		if (r < 0)
			return r;
	}
	return 0;
}

static struct slot *take_ready(struct hasher *h)
{
	for (unsigned i = 0; i < h->nslots; i++)
		if (h->slots[i].state == SLOT_READY)
			return &h->slots[i];
	return NULL;
}

static void *worker_main(void *arg)
{
	struct hasher *h = arg;
	struct slot *s = NULL;
	pthread_mutex_lock(&h->lock);
	for (;;) {
		while (!h->stop && !(s = take_ready(h)))
			pthread_cond_wait(&h->cond, &h->lock);
		if (h->stop)
			break;
		s->state = SLOT_HASHING;
		pthread_mutex_unlock(&h->lock);

		int r = hash_leaves(h, s->buf, s->len, s->first_block);

		pthread_mutex_lock(&h->lock);
		if (r < 0 && !h->err)
			h->err = r;
		s->state = SLOT_FREE;
		h->pending--;
		pthread_cond_broadcast(&h->cond);
	}
	pthread_mutex_unlock(&h->lock);
	return NULL;
}

int hasher_new(struct hasher **out, unsigned threads)
{
	if (threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		/* The caller's thread does the sequential SHA-256. */
		threads = n > 1 ? (unsigned)MIN(n - 1, 8) : 0;
	}
	struct hasher *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
	h->nslots = 2 * threads + 2;
	h->slots = calloc(h->nslots, sizeof(*h->slots));
	h->sha = EVP_MD_CTX_new();
	if (!h->slots || !h->sha)
		goto fail;
	for (unsigned i = 0; i < h->nslots; i++)
		if (!(h->slots[i].buf = malloc(HASHER_CHUNK)))
			goto fail;
	h->workers = calloc(threads ? threads : 1, sizeof(pthread_t));
	if (!h->workers)
		goto fail;
	for (; h->nworkers < threads; h->nworkers++)
		if (pthread_create(&h->workers[h->nworkers], NULL, worker_main, h) != 0)
			break; /* fewer workers is slower, not wrong */
	*out = h;
	return 0;
fail:
	hasher_free(h);
	return -ENOMEM;
}

void hasher_free(struct hasher *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->lock);
	h->stop = true;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	for (unsigned i = 0; i < h->nworkers; i++)
		pthread_join(h->workers[i], NULL);
	free(h->workers);
	if (h->slots)
		for (unsigned i = 0; i < h->nslots; i++)
			free(h->slots[i].buf);
	free(h->slots);
	EVP_MD_CTX_free(h->sha);
	free(h->tree);
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

int hasher_begin(struct hasher *h, uint64_t size)
{
	merkle_geom_init(&h->geom, size);
	free(h->tree);
	h->tree = NULL;
	uint64_t tsize = merkle_tree_size(&h->geom);
	if (tsize && !(h->tree = calloc(1, tsize)))
		return -ENOMEM;
	memset(h->first_leaf, 0, sizeof(h->first_leaf));
	h->size = size;
	h->fed = 0;
	pthread_mutex_lock(&h->lock);
	h->err = 0;
	pthread_mutex_unlock(&h->lock);
	if (!EVP_DigestInit_ex2(h->sha, EVP_sha256(), NULL))
		return -ENOMEM;
	return 0;
}

uint8_t *hasher_buf(struct hasher *h)
{
	struct slot *s = &h->slots[h->next];
	pthread_mutex_lock(&h->lock);
	while (s->state != SLOT_FREE)
		pthread_cond_wait(&h->cond, &h->lock);
	s->state = SLOT_FILLING;
	pthread_mutex_unlock(&h->lock);
	return s->buf;
}

void hasher_put(struct hasher *h, size_t len)
{
	struct slot *s = &h->slots[h->next];
	s->len = len;
	s->first_block = h->fed / MERKLE_BLOCK;
	uint64_t fed_before = h->fed;
	h->fed += len;
	/* Leaves past the announced size have no slot in the tree: refuse to
	 * hash them (hasher_end reports the size error). */
	bool in_range = h->fed <= h->size && fed_before % MERKLE_BLOCK == 0;
	EVP_DigestUpdate(h->sha, s->buf, len);

	/* Small files and single-CPU machines: a hand-over costs more than it saves. */
	bool here = !in_range || h->nworkers == 0 || h->size <= HASHER_CHUNK;
	int r = here && in_range ? hash_leaves(h, s->buf, len, s->first_block) : 0;
	/* Every state change under the lock, the one back to FREE as well:
	 * an idle worker woken by another slot reads all the states
	 * (take_ready), and an unlocked write is a data race (ThreadSanitizer
	 * found it while stellakit packed small files). */
	pthread_mutex_lock(&h->lock);
	if (r < 0 && !h->err)
		h->err = r;
	if (here) {
		s->state = SLOT_FREE;
	} else {
		s->state = SLOT_READY;
		h->pending++;
		pthread_cond_broadcast(&h->cond);
	}
	pthread_mutex_unlock(&h->lock);
	h->next = (h->next + 1) % h->nslots;
}

int hasher_end(struct hasher *h, struct hasher_result *res)
{
	pthread_mutex_lock(&h->lock);
	while (h->pending)
		pthread_cond_wait(&h->cond, &h->lock);
	int err = h->err;
	h->err = 0;
	pthread_mutex_unlock(&h->lock);
	unsigned int n = 32;
	if (!EVP_DigestFinal_ex(h->sha, res->sha256, &n))
		return -ENOMEM;
	if (err < 0)
		return err;
	if (h->fed != h->size)
		return -EIO;
	int r = merkle_build_upper(&h->geom, h->tree, h->first_leaf, res->root);
	if (r == 0)
		r = merkle_file_digest(h->size, res->root, res->fsverity);
	if (r < 0)
		return r;
	res->geom = h->geom;
	res->tree = h->tree;
	return 0;
}

/* The SHA-256 of everything fd holds, read with pread (no shared offset). */
int sha256_fd(int fd, uint8_t out[32])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t *buf = malloc(1 << 20);
	int r = ctx && buf && EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) ? 0 : -ENOMEM;
	for (uint64_t off = 0; r == 0;) {
		ssize_t n = pread(fd, buf, 1 << 20, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		else if (n == 0)
			break;
		else if (!EVP_DigestUpdate(ctx, buf, (size_t)n))
			r = -ENOMEM;
		else
			off += (uint64_t)n;
	}
	if (r == 0 && !EVP_DigestFinal_ex(ctx, out, NULL))
		r = -ENOMEM;
	EVP_MD_CTX_free(ctx);
	free(buf);
	return r;
}
