/* libcurl, loaded when a kit on a mirror or a registry first needs it.
 *
 * Linked the usual way, libcurl brings 26 shared libraries of its own
 * (Kerberos, LDAP, GnuTLS, SSH, IDN...) into every start of stellafs and
 * stellakit: about 20 ms with caches dropped and 9 ms warm, a tenth of a
 * first mount of 100,000 files, for programs that most often never speak
 * HTTP (docs/mount.md 2.2).  So core/ calls libcurl through a table filled
 * by dlopen() of its soname (meson.build: STELLA_CURL_SONAME, the library
 * pkg-config names) on first use, from any thread (pthread_once).
 *
 * Include this instead of <curl/curl.h>: the curl_* functions core/ uses
 * become calls through the table, with libcurl's own types and constants.
 * When libcurl cannot be loaded, every call fails the way libcurl's own do
 * when out of memory (NULL, an error code, nothing freed) and
 * curl_api_error() says why in one line. */
#pragma once

#define CURL_DISABLE_TYPECHECK 1 /* the names below become macros */
#include <curl/curl.h>

#include "err.h"

struct curl_api {
	CURLcode (*global_init)(long flags);
	CURL *(*easy_init)(void);
	void (*easy_cleanup)(CURL *h);
	void (*easy_reset)(CURL *h);
	CURLcode (*easy_setopt)(CURL *h, CURLoption o, ...);
	CURLcode (*easy_getinfo)(CURL *h, CURLINFO i, ...);
	CURLcode (*easy_perform)(CURL *h);
	const char *(*easy_strerror)(CURLcode c);
	char *(*easy_escape)(CURL *h, const char *s, int len);
	void (*free)(void *p);
	struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
	void (*slist_free_all)(struct curl_slist *l);
	CURLU *(*url)(void);
	void (*url_cleanup)(CURLU *u);
	CURLUcode (*url_set)(CURLU *u, CURLUPart what, const char *part, unsigned int flags);
	CURLUcode (*url_get)(const CURLU *u, CURLUPart what, char **part, unsigned int flags);
};

/* The table: libcurl's functions, or when it could not be loaded, ones
 * that fail.  Never NULL. */
const struct curl_api *curl_api(void);
/* Why libcurl could not be loaded ("libcurl.so.4: cannot open shared
 * object file..."), or NULL when it is loaded (loading it if not yet). */
const char *curl_api_error(void);
/* The same as an error: 0, or -ELIBACC with "cannot load libcurl: WHY"
 * in e. */
int curl_api_check(struct stella_err *e);

#undef curl_easy_setopt  /* curl.h's own: a check of the argument count */
#undef curl_easy_getinfo
#define curl_global_init(f) (curl_api()->global_init(f))
#define curl_easy_init() (curl_api()->easy_init())
#define curl_easy_cleanup(h) (curl_api()->easy_cleanup(h))
#define curl_easy_reset(h) (curl_api()->easy_reset(h))
#define curl_easy_setopt(h, o, v) (curl_api()->easy_setopt((h), (o), (v)))
#define curl_easy_getinfo(h, i, p) (curl_api()->easy_getinfo((h), (i), (p)))
#define curl_easy_perform(h) (curl_api()->easy_perform(h))
#define curl_easy_strerror(c) (curl_api()->easy_strerror(c))
#define curl_easy_escape(h, s, l) (curl_api()->easy_escape((h), (s), (l)))
#define curl_free(p) (curl_api()->free(p))
#define curl_slist_append(l, s) (curl_api()->slist_append((l), (s)))
#define curl_slist_free_all(l) (curl_api()->slist_free_all(l))
#define curl_url() (curl_api()->url())
#define curl_url_cleanup(u) (curl_api()->url_cleanup(u))
#define curl_url_set(u, w, p, f) (curl_api()->url_set((u), (w), (p), (f)))
#define curl_url_get(u, w, p, f) (curl_api()->url_get((u), (w), (p), (f)))
