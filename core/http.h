/* One HTTP(S) range request, with libcurl: the transport under remote.c
 * (and oci.c).  A thin layer: it fetches bytes [off, off+len) of a URL into
 * a caller's buffer within a deadline and says, as one enum remote_result
 * and one line, how that went.  It never decides that bytes are good.
 *
 * Threads: any number may call http_get at once.  Each thread keeps one
 * libcurl easy handle of its own (libcurl's rule: a handle is used by one
 * thread at a time), so its connections stay open between requests;
 * curl_global_init runs once, before the first handle.
 *
 * What a response means (docs/remote.md):
 *   206 with a Content-Range naming exactly the range asked for  ok
 *   fewer body bytes than that range                             short
 *   200 where a range was asked (the server ignores Range)       http_error
 *   401, 403 (credentials refused or missing)                    refused
 *   any other status, a connection refused or reset, a TLS
 *   failure, a redirect loop, more bytes than asked              http_error
 *   no answer by the deadline                                    timeout
 *
 * Credentials: user:password@ in the URL and ~/.netrc are libcurl's, which
 * sends them to the URL's own host only; an Authorization header (auth ops)
 * is dropped by libcurl (>= 7.83) on a redirect to another scheme, host or
 * port, since CURLOPT_UNRESTRICTED_AUTH is never set.  Redirects: at most
 * HTTP_MAX_REDIRECTS, http and https only. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "remote.h"

#define HTTP_MAX_REDIRECTS 8

/* "bytes FIRST-LAST/TOTAL" (TOTAL may be an asterisk: UINT64_MAX) or
 * "bytes ASTERISK/TOTAL" (unsatisfied: first = last = UINT64_MAX). */
struct http_content_range {
	uint64_t first, last, total;
};
/* Parse a Content-Range value (V, N bytes, not NUL-terminated, surrounding
 * blanks allowed).  0, or -EINVAL for anything else (last < first, last >=
 * total, numbers that overflow).  Pure: fuzzed by tests/fuzz/fuzz_http.c. */
int http_parse_content_range(const char *v, size_t n, struct http_content_range *out);
/* If the header line L (N bytes, as a server sent it, CRLF included or not)
 * is NAME (case-insensitive), its value, blanks trimmed, in *val / *vlen
 * and true; false otherwise.  Pure. */
bool http_header_value(const char *l, size_t n, const char *name, const char **val, size_t *vlen);
/* The status code of a status line "HTTP/x[.y] NNN ...", or -1.  Pure. */
int http_status_line(const char *l, size_t n);

struct http_req {
	const char *url;
	uint64_t off, len;          /* the range; len 0: no Range header */
	void *buf;                  /* len bytes (unused when len is 0) */
	int64_t deadline_ms;        /* absolute, http_now_ms() clock */
	const struct remote_opts *o;  /* cacert, proxy, client certificate */
	const char *authorization;  /* the Authorization value, or NULL */
	const char *if_none_match;  /* conditional request (follow=), or NULL */
	const char *if_modified_since;
	/* Optional: checked about once a second while the request waits; when
	 * it becomes true the request ends (http_error, "cancelled"). */
	const atomic_bool *cancel;
};

struct http_resp {
	enum remote_result result;
	long status;                /* the last response's, 0 if none */
	/* Did the last response come from the request URL's own origin
	 * (scheme, host, port)?  false after a redirect elsewhere: what that
	 * host says (a 401's challenge) is not the endpoint's to act on. */
	bool same_origin;
	uint64_t got;               /* body bytes written to buf */
	bool have_range;
	struct http_content_range range;
	char etag[128];
	char last_modified[64];
	char www_authenticate[REMOTE_CHALLENGE_MAX];
	bool www_authenticate_cut;  /* it was longer: not to be acted on */
	char error[256];            /* one line when result is not ok */
};

/* Monotonic milliseconds, for deadlines. */
int64_t http_now_ms(void);

/* One request.  Returns 0 (resp->result ok: the whole range is in buf, or
 * for len 0 a 2xx/304 answer), or a negative errno with resp->result and
 * resp->error saying why: -EACCES refused, -ETIMEDOUT timeout, -EIO the
 * rest.  A 304 to a conditional request is ok with status 304. */
int http_get(const struct http_req *rq, struct http_resp *rs);

/* URL without its user:password@ (what status, logs and messages show: a
 * password is never shown), in a new string the caller frees; NULL when
 * out of memory.  Text that is not a URL loses everything from "://" up to
 * the last '@' before the path, if it has one. */
char *http_redact(const char *url);

/* 0, or -ELIBACC when libcurl cannot be loaded (it is loaded on first use,
 * core/curlapi.h), e saying why. */
int http_usable(struct stella_err *e);

/* scheme://host:port of URL (user:password dropped, the port made
 * explicit), for metrics labels and messages: 0 or -EINVAL. */
int http_origin(const char *url, char *out, size_t len);
