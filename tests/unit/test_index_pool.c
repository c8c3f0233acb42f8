/* core/index.c, its connection pool: the reading connections of every index stay within the
 * process's budget (counted in /proc/self/fd), an index whose connections
 * were closed for others answers again, and concurrent queries over more
 * indexes than the budget all get their own rows. */
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "index.h"

#define NIX 20
#define BUDGET 4
#define THREADS 6

static struct index *ix[NIX];
static char names[NIX][16];


/* index i has one file, "f<i>" */
static int lookup_ok(int i)
{
	struct index_node n;
	return index_lookup(ix[i], INDEX_ROOT_INO, names[i], &n) == 0 && !strcmp(n.name, names[i]) &&
	       n.size == (uint64_t)i + 1;
}

static atomic_int bad;

static void *worker(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	for (int k = 0; k < 2000; k++) {
		int i = (int)(rand_r(&seed) % NIX);
		if (!lookup_ok(i))
			atomic_fetch_add(&bad, 1);
	}
	return NULL;
}

int main(void)
{
	char dir[] = "/tmp/test-index.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	index_set_conn_budget(BUDGET);
	CHECK(index_conn_budget() == BUDGET);
	char path[NIX][64];
	for (int i = 0; i < NIX; i++) {
		struct index *w = NULL;
		snprintf(path[i], sizeof(path[i]), "%s/%d.db", dir, i);
		snprintf(names[i], sizeof(names[i]), "f%d", i);
		struct artifact a = { .name = names[i], .type = ARTIFACT_FILE, .size = (uint64_t)i + 1, .mode = 0644 };
		CHECK(index_create(path[i], &w, NULL) == 0);
		CHECK(index_add(w, &a, 0, -1, NULL) == 0);
		CHECK(index_finish(w, NULL) == 0);
		index_close(w);
	}
	int base = count_fds();
	for (int i = 0; i < NIX; i++) {
		CHECK(index_open(path[i], &ix[i], NULL) == 0);
		CHECK(count_fds() - base <= BUDGET);
	}
	/* every index answers, again and again, its connections closed for
	 * the others' in between */
	for (int round = 0; round < 3; round++)
		for (int i = 0; i < NIX; i++) {
			CHECK(lookup_ok(i));
			CHECK(count_fds() - base <= BUDGET);
		}
	pthread_t t[THREADS];
	for (int k = 0; k < THREADS; k++)
		CHECK(pthread_create(&t[k], NULL, worker, (void *)(uintptr_t)(k + 1)) == 0);
	for (int k = 0; k < THREADS; k++)
		pthread_join(t[k], NULL);
	CHECK(atomic_load(&bad) == 0);
	CHECK(count_fds() - base <= BUDGET);
	for (int i = 0; i < NIX; i++) {
		index_close(ix[i]);
		unlink(path[i]);
	}
	CHECK(count_fds() == base);
	/* a file that is no index fails at open, not at the first query */
	FILE *f = fopen(path[0], "w");
	CHECK(f && fputs("not a database, not at all, no\n", f) >= 0);
	if (f)
		fclose(f);
	struct index *x = NULL;
	CHECK(index_open(path[0], &x, NULL) < 0);
	unlink(path[0]);
	rmdir(dir);
	return CHECK_DONE();
}
