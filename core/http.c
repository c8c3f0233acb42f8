#include "http.h"

#include <stdarg.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curlapi.h"

/* ------------------------------------------------------------ pure parsing */

static size_t skip_blanks(const char *v, size_t i, size_t n)
{
	while (i < n && (v[i] == ' ' || v[i] == '\t'))
		i++;
	return i;
}

/* Decimal digits at v[*i..n) into *out: false if none or on overflow. */
static bool parse_u64(const char *v, size_t *i, size_t n, uint64_t *out)
{
	uint64_t x = 0;
	size_t s = *i;
	while (*i < n && v[*i] >= '0' && v[*i] <= '9') {
		unsigned d = (unsigned)(v[*i] - '0');
		if (x > (UINT64_MAX - d) / 10)
			return false;
		x = x * 10 + d;
		(*i)++;
	}
	*out = x;
	return *i > s && *i - s <= 20;
}

int http_parse_content_range(const char *v, size_t n, struct http_content_range *out)
{
	size_t i = skip_blanks(v, 0, n);
	while (n > i && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r' || v[n - 1] == '\n'))
		n--;
	if (n - i < 6 || strncasecmp(v + i, "bytes", 5) != 0 || (v[i + 5] != ' ' && v[i + 5] != '\t'))
		return -EINVAL;
	i = skip_blanks(v, i + 5, n);
	struct http_content_range r = { UINT64_MAX, UINT64_MAX, UINT64_MAX };
	if (i < n && v[i] == '*') {
		i++;
	} else {
		if (!parse_u64(v, &i, n, &r.first) || i >= n || v[i] != '-')
			return -EINVAL;
		i++;
		if (!parse_u64(v, &i, n, &r.last) || r.last < r.first)
			return -EINVAL;
	}
	if (i >= n || v[i] != '/')
		return -EINVAL;
	i++;
	if (i < n && v[i] == '*') {
		/* an unsatisfied range with no total says nothing at all */
		if (r.first == UINT64_MAX)
			return -EINVAL;
		i++;
	} else if (!parse_u64(v, &i, n, &r.total) || r.total == UINT64_MAX) {
		return -EINVAL;
	} else if (r.first != UINT64_MAX && r.last >= r.total) {
		return -EINVAL;
	}
	if (i != n)
		return -EINVAL;
	*out = r;
	return 0;
}

bool http_header_value(const char *l, size_t n, const char *name, const char **val, size_t *vlen)
{
	size_t k = strlen(name);
	if (n <= k || l[k] != ':' || strncasecmp(l, name, k) != 0)
		return false;
	size_t i = skip_blanks(l, k + 1, n);
	while (n > i && (l[n - 1] == '\r' || l[n - 1] == '\n' || l[n - 1] == ' ' || l[n - 1] == '\t'))
		n--;
	*val = l + i;
	*vlen = n - i;
	return true;
}

int http_status_line(const char *l, size_t n)
{
	if (n < 12 || strncmp(l, "HTTP/", 5) != 0)
		return -1;
	size_t i = 5;
	while (i < n && l[i] != ' ')
		i++;
	if (i + 4 > n || l[i] != ' ')
		return -1;
	int code = 0;
	for (size_t j = i + 1; j < i + 4; j++) {
		if (l[j] < '0' || l[j] > '9')
			return -1;
		code = code * 10 + (l[j] - '0');
	}
	if (i + 4 < n && l[i + 4] != ' ' && l[i + 4] != '\r' && l[i + 4] != '\n')
		return -1;
	return code;
}

/* ------------------------------------------------------------ libcurl */

int64_t http_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static pthread_key_t handle_key;
static int global_rc;

static void handle_free(void *h)
{
	curl_easy_cleanup(h);
}

static void global_init(void)
{
	global_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -ENOMEM;
	if (global_rc == 0 && pthread_key_create(&handle_key, handle_free) != 0)
		global_rc = -ENOMEM;
}

/* This thread's easy handle, reset to defaults but with its connections
 * kept (curl_easy_reset leaves the connection cache alone). */
static CURL *thread_handle(void)
{
	pthread_once(&global_once, global_init);
	if (global_rc < 0)
		return NULL;
	CURL *h = pthread_getspecific(handle_key);
	if (h) {
		curl_easy_reset(h);
		return h;
	}
	h = curl_easy_init();
	if (h && pthread_setspecific(handle_key, h) != 0) {
		curl_easy_cleanup(h);
		h = NULL;
	}
	return h;
}

struct xfer {
	const struct http_req *rq;
	struct http_resp *rs;
	CURL *h;
	bool aborted;        /* we stopped the body: rs says why */
	bool overflow;       /* more bytes than asked for */
};

static void copy_value(char *dst, size_t cap, const char *v, size_t n)
{
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, v, n);
	dst[n] = 0;
	stella_one_line(dst);
}

static size_t on_header(char *l, size_t size, size_t nitems, void *arg)
{
	struct xfer *x = arg;
	struct http_resp *rs = x->rs;
	size_t n = size * nitems;
	const char *v;
	size_t vn;
	int st = http_status_line(l, n);
	if (st >= 0) {
		/* a new response (after a redirect, or a 100): forget the last */
		rs->status = st;
		rs->have_range = false;
		rs->etag[0] = rs->last_modified[0] = rs->www_authenticate[0] = 0;
		rs->www_authenticate_cut = false;
	} else if (http_header_value(l, n, "Content-Range", &v, &vn)) {
		rs->have_range = http_parse_content_range(v, vn, &rs->range) == 0;
	} else if (http_header_value(l, n, "ETag", &v, &vn)) {
		copy_value(rs->etag, sizeof(rs->etag), v, vn);
	} else if (http_header_value(l, n, "Last-Modified", &v, &vn)) {
		copy_value(rs->last_modified, sizeof(rs->last_modified), v, vn);
	} else if (http_header_value(l, n, "WWW-Authenticate", &v, &vn)) {
		rs->www_authenticate_cut = vn >= sizeof(rs->www_authenticate);
		copy_value(rs->www_authenticate, sizeof(rs->www_authenticate), v, vn);
	}
	return n;
}

static size_t on_body(char *p, size_t size, size_t nitems, void *arg)
{
	struct xfer *x = arg;
	struct http_resp *rs = x->rs;
	size_t n = size * nitems;
	/* only the body of the range asked for is wanted: anything else (an
	 * error page, a 200 with the whole kit) stops the transfer at once */
	if (x->rq->len == 0 || rs->status != 206) {
		if (x->rq->len == 0 && rs->status / 100 == 2)
			return n;   /* a probe: the body is not wanted, but not an error */
		x->aborted = true;
		return 0;
	}
	if (rs->got + n > x->rq->len) {
		x->overflow = true;
		x->aborted = true;
		return 0;
	}
	memcpy((char *)x->rq->buf + rs->got, p, n);
	rs->got += n;
	return n;
}

static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	(void)dt; (void)dn; (void)ut; (void)un;
	const struct xfer *x = arg;
	const struct http_req *rq = x->rq;
	bool stop = (rq->cancel && atomic_load(rq->cancel)) || (rq->o && rq->o->cancel && atomic_load(rq->o->cancel));
	return stop ? 1 : 0;
}

static int fail(struct http_resp *rs, enum remote_result r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fail(struct http_resp *rs, enum remote_result r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(rs->error, sizeof(rs->error), fmt, ap);
	va_end(ap);
	stella_one_line(rs->error);
	rs->result = r;
	return r == REMOTE_REFUSED ? -EACCES : r == REMOTE_TIMEOUT ? -ETIMEDOUT : -EIO;
}

/* "NAME: VALUE" onto *HDRS when VALUE is set; 0 or -ENOMEM. */
static int add_header(struct curl_slist **hdrs, const char *name, const char *value)
{
	if (!value || !value[0])
		return 0;
	char *line = NULL;
	if (asprintf(&line, "%s: %s", name, value) < 0)
		return -ENOMEM;
	struct curl_slist *n = curl_slist_append(*hdrs, line);
	free(line);
	if (!n)
		return -ENOMEM;
	*hdrs = n;
	return 0;
}

static int set_options(CURL *h, const struct http_req *rq, struct xfer *x, struct curl_slist **hdrs,
		       char *range, size_t rlen, long ms)
{
	const struct remote_opts *o = rq->o;
	CURLcode c = CURLE_OK;
#define SET(opt, val) do { if (c == CURLE_OK) c = curl_easy_setopt(h, opt, val); } while (0)
	SET(CURLOPT_URL, rq->url);
	SET(CURLOPT_NOSIGNAL, 1L);   /* threads: no SIGALRM for DNS timeouts */
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 1L);
	SET(CURLOPT_MAXREDIRS, (long)HTTP_MAX_REDIRECTS);
	SET(CURLOPT_UNRESTRICTED_AUTH, 0L);
	SET(CURLOPT_NETRC, (long)CURL_NETRC_OPTIONAL);
	SET(CURLOPT_TIMEOUT_MS, ms);
	SET(CURLOPT_CONNECTTIMEOUT_MS, ms);
	SET(CURLOPT_USERAGENT, "stellafs");
	SET(CURLOPT_HEADERFUNCTION, on_header);
	SET(CURLOPT_HEADERDATA, x);
	SET(CURLOPT_WRITEFUNCTION, on_body);
	SET(CURLOPT_WRITEDATA, x);
	if (rq->cancel || (o && o->cancel)) {
		SET(CURLOPT_XFERINFOFUNCTION, on_progress);
		SET(CURLOPT_XFERINFODATA, x);
		SET(CURLOPT_NOPROGRESS, 0L);
	}
	/* a kit is stored as is: no Content-Encoding, whose ranges would be of
	 * the encoded bytes */
	SET(CURLOPT_HTTP_CONTENT_DECODING, 0L);
	/* fewer, larger writes into the chunk (the default is 16 KiB) */
	SET(CURLOPT_BUFFERSIZE, 256L * 1024);
	if (o && o->cacert)
		SET(CURLOPT_CAINFO, o->cacert);
	if (o && o->proxy)
		SET(CURLOPT_PROXY, o->proxy);
	if (o && o->client_cert)
		SET(CURLOPT_SSLCERT, o->client_cert);
	if (o && o->client_key)
		SET(CURLOPT_SSLKEY, o->client_key);
	if (rq->len > 0) {
		snprintf(range, rlen, "%" PRIu64 "-%" PRIu64, rq->off, rq->off + rq->len - 1);
		SET(CURLOPT_RANGE, range);
	}
	/* each line sized from its value: a registry's token runs to kilobytes */
	if (c == CURLE_OK && (add_header(hdrs, "Authorization", rq->authorization) < 0 ||
			      add_header(hdrs, "If-None-Match", rq->if_none_match) < 0 ||
			      add_header(hdrs, "If-Modified-Since", rq->if_modified_since) < 0))
		c = CURLE_OUT_OF_MEMORY;
	if (*hdrs)
		SET(CURLOPT_HTTPHEADER, *hdrs);
#undef SET
	return c == CURLE_OK ? 0 : -ENOMEM;
}

static enum remote_result curl_class(CURLcode c)
{
	switch (c) {
	case CURLE_OPERATION_TIMEDOUT:
		return REMOTE_TIMEOUT;
	case CURLE_PARTIAL_FILE:
		return REMOTE_SHORT;
	case CURLE_LOGIN_DENIED:
		return REMOTE_REFUSED;
	default:
		return REMOTE_HTTP_ERROR;
	}
}

/* Is the URL the handle ended at (after redirects) of URL's origin? */
static bool same_origin(CURL *h, const char *url)
{
	char *eff = NULL;
	char a[512], b[512];
	if (curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &eff) != CURLE_OK || !eff)
		return false;
	return http_origin(eff, a, sizeof(a)) == 0 && http_origin(url, b, sizeof(b)) == 0 && !strcmp(a, b);
}

/* The outcome of a finished transfer, whatever libcurl said. */
static int classify(const struct http_req *rq, struct http_resp *rs, struct xfer *x, CURLcode c,
		    const char *cerr)
{
	long st = rs->status;
	if (st == 401 || st == 403)
		return fail(rs, REMOTE_REFUSED, "HTTP %ld (credentials refused)", st);
	if (c == CURLE_ABORTED_BY_CALLBACK)
		return fail(rs, REMOTE_HTTP_ERROR, "cancelled");
	if (c != CURLE_OK && !x->aborted)
		return fail(rs, curl_class(c), "%s", cerr[0] ? cerr : curl_easy_strerror(c));
	if (rq->len == 0) {
		if (st / 100 == 2 || st == 304)
			return 0;
		return fail(rs, REMOTE_HTTP_ERROR, "HTTP %ld", st);
	}
	if (st == 200)
		return fail(rs, REMOTE_HTTP_ERROR, "HTTP 200 where a range was asked for (the server ignores Range)");
	if (st != 206)
		return fail(rs, REMOTE_HTTP_ERROR, "HTTP %ld", st);
	if (x->overflow)
		return fail(rs, REMOTE_HTTP_ERROR, "more bytes than the range asked for");
	if (!rs->have_range || rs->range.first != rq->off)
		return fail(rs, REMOTE_HTTP_ERROR, "HTTP 206 without the Content-Range asked for");
	/* the end may come before the range does: the kit is shorter */
	uint64_t want = rs->range.last - rs->range.first + 1;
	if (want > rq->len)
		return fail(rs, REMOTE_HTTP_ERROR, "HTTP 206 for a larger range than asked for");
	if (want < rq->len && rs->range.total != UINT64_MAX && rs->range.last + 1 != rs->range.total)
		return fail(rs, REMOTE_HTTP_ERROR, "HTTP 206 for a smaller range than asked for");
	if (rs->got < want)
		return fail(rs, REMOTE_SHORT, "short body: %" PRIu64 " of %" PRIu64 " bytes", rs->got, want);
	rs->result = REMOTE_OK;
	return 0;
}

int http_get(const struct http_req *rq, struct http_resp *rs)
{
	memset(rs, 0, sizeof(*rs));
	int64_t left = rq->deadline_ms - http_now_ms();
	if (left <= 0)
		return fail(rs, REMOTE_TIMEOUT, "no time left");
	CURL *h = thread_handle();
	struct stella_err le = { 0 };
	if (!h && curl_api_check(&le) < 0)
		return fail(rs, REMOTE_HTTP_ERROR, "%s", le.msg);
	if (!h)
		return fail(rs, REMOTE_HTTP_ERROR, "libcurl: cannot make a handle");
	struct xfer x = { .rq = rq, .rs = rs, .h = h };
	struct curl_slist *hdrs = NULL;
	char range[64], cerr[CURL_ERROR_SIZE] = "";
	int r = set_options(h, rq, &x, &hdrs, range, sizeof(range), (long)left);
	if (r == 0 && curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr) != CURLE_OK)
		r = -ENOMEM;
	if (r < 0) {
		curl_slist_free_all(hdrs);
		return fail(rs, REMOTE_HTTP_ERROR, "libcurl: cannot set options");
	}
	CURLcode c = curl_easy_perform(h);
	long code = 0;
	if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK && code > 0)
		rs->status = code;
	rs->same_origin = same_origin(h, rq->url);
	r = classify(rq, rs, &x, c, cerr);
	/* the handle outlives this call: it must not point at our stack */
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(hdrs);
	return r;
}

int http_usable(struct stella_err *e)
{
	return curl_api_check(e);
}

int http_origin(const char *url, char *out, size_t len)
{
	CURLU *u = curl_url();
	if (!u)
		return -ENOMEM;
	char *scheme = NULL, *host = NULL, *port = NULL;
	int r = -EINVAL;
	if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
		int n = snprintf(out, len, "%s://%s:%s", scheme, host, port);
		r = n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return r;
}

/* Not a URL to libcurl: drop what looks like userinfo, by hand. */
static char *redact_by_hand(const char *url)
{
	const char *host = strstr(url, "://");
	if (!host)
		return strdup(url);   /* a path: no userinfo to drop */
	host += 3;
	size_t authority = strcspn(host, "/?#");
	const char *at = NULL;
	for (const char *p = host; p < host + authority; p++)
		if (*p == '@')
			at = p;
	if (!at)
		return strdup(url);
	char *out = NULL;
	if (asprintf(&out, "%.*s%s", (int)(host - url), url, at + 1) < 0)
		return NULL;
	return out;
}

char *http_redact(const char *url)
{
	if (!url)
		return strdup("");
	CURLU *u = curl_url();
	if (!u)
		return redact_by_hand(url); /* out of memory, or no libcurl */
	char *got = NULL, *out = NULL;
	if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_USER, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_OPTIONS, NULL, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_URL, &got, 0) == CURLUE_OK) {
		out = strdup(got);
	} else {
		out = redact_by_hand(url);
	}
	curl_free(got);
	curl_url_cleanup(u);
	return out;
}
