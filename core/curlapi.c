#include "curlapi.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* Why each entry below is what it is: curlapi.h. */

static CURLcode no_global_init(long flags) { return CURLE_FAILED_INIT; }
static CURL *no_easy_init(void) { return NULL; }
static void no_easy_cleanup(CURL *h) {}
static void no_easy_reset(CURL *h) {}
static CURLcode no_easy_setopt(CURL *h, CURLoption o, ...) { return CURLE_FAILED_INIT; }
static CURLcode no_easy_getinfo(CURL *h, CURLINFO i, ...) { return CURLE_FAILED_INIT; }
static CURLcode no_easy_perform(CURL *h) { return CURLE_FAILED_INIT; }
static const char *no_easy_strerror(CURLcode c) { return "libcurl could not be loaded"; }
static char *no_easy_escape(CURL *h, const char *s, int len) { return NULL; }
static void no_free(void *p) {}
static struct curl_slist *no_slist_append(struct curl_slist *l, const char *s) { return NULL; }
static void no_slist_free_all(struct curl_slist *l) {}
static CURLU *no_url(void) { return NULL; }
static void no_url_cleanup(CURLU *u) {}
static CURLUcode no_url_set(CURLU *u, CURLUPart w, const char *p, unsigned int f) { return CURLUE_OUT_OF_MEMORY; }
static CURLUcode no_url_get(const CURLU *u, CURLUPart w, char **p, unsigned int f) { return CURLUE_OUT_OF_MEMORY; }

static const struct curl_api failing = {
	no_global_init, no_easy_init, no_easy_cleanup, no_easy_reset, no_easy_setopt, no_easy_getinfo,
	no_easy_perform, no_easy_strerror, no_easy_escape, no_free, no_slist_append, no_slist_free_all,
	no_url, no_url_cleanup, no_url_set, no_url_get,
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct curl_api loaded;
static const struct curl_api *api = &failing;
static char why[512];

/* ISO C has no cast from dlsym's void * to a function pointer; POSIX
 * guarantees the representation, so copy it. */
#define LOAD(field, name)                                                  \
	do {                                                               \
		void *p_ = dlsym(lib, name);                               \
		if (!p_) {                                                 \
			snprintf(why, sizeof(why), "%s: no %s", STELLA_CURL_SONAME, name); \
			return;                                            \
		}                                                          \
		memcpy(&loaded.field, &p_, sizeof(p_));                    \
	} while (0)

static void load(void)
{
	/* never closed: its threads and handles live as long as ours */
	void *lib = dlopen(STELLA_CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		const char *d = dlerror();
		snprintf(why, sizeof(why), "%s", d ? d : STELLA_CURL_SONAME ": cannot load");
		return;
	}
	LOAD(global_init, "curl_global_init");
	LOAD(easy_init, "curl_easy_init");
	LOAD(easy_cleanup, "curl_easy_cleanup");
	LOAD(easy_reset, "curl_easy_reset");
	LOAD(easy_setopt, "curl_easy_setopt");
	LOAD(easy_getinfo, "curl_easy_getinfo");
	LOAD(easy_perform, "curl_easy_perform");
	LOAD(easy_strerror, "curl_easy_strerror");
	LOAD(easy_escape, "curl_easy_escape");
	LOAD(free, "curl_free");
	LOAD(slist_append, "curl_slist_append");
	LOAD(slist_free_all, "curl_slist_free_all");
	LOAD(url, "curl_url");
	LOAD(url_cleanup, "curl_url_cleanup");
	LOAD(url_set, "curl_url_set");
	LOAD(url_get, "curl_url_get");
	api = &loaded;
}

const struct curl_api *curl_api(void)
{
	pthread_once(&once, load);
	return api;
}

const char *curl_api_error(void)
{
	return curl_api() == &loaded ? NULL : why;
}

int curl_api_check(struct stella_err *e)
{
	const char *w = curl_api_error();
	return w ? stella_fail(e, -ELIBACC, "cannot load libcurl: %s", w) : 0;
}
