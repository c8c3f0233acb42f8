/* The registry client: a few requests of the distribution API on libcurl,
 * with the authentication docker and skopeo speak.  Redirects are followed
 * here, by hand, so that this file decides what each hop carries: the
 * registry's credentials only to its own origin (a blob GET is commonly
 * sent on to object storage with a presigned URL). */
#include <ctype.h>
#include "curlapi.h"
#include <stddef.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "oci.h"
#include "util.h"

#define OCI_MAX_REDIRECTS 5
#define OCI_SMALL_BODY (64u << 10)   /* tokens, errors, the /v2/ ping */
#define OCI_CONNECT_TIMEOUT_MS 10000L

enum auth_scheme { AUTH_NONE, AUTH_BASIC, AUTH_BEARER };

/* Who we are to one registry; shared by the client and, as a copy, by the
 * endpoint remote_open reads the blob from.  The mutex serialises token
 * refreshes (remote.c reads from many threads). */
struct oci_auth {
	pthread_mutex_t lock;
	char origin[300];           /* scheme://host:port of the registry */
	char registry[262];         /* for messages */
	char *basic;                /* base64 user:password from the auth file, or NULL */
	char cred_file[512];        /* where it came from, for messages */
	enum auth_scheme scheme;
	char *realm, *service, *scope;
	char *token;
	time_t token_expiry;
	time_t token_margin;
	char cacert[512];           /* "" for the default store */
	char client_cert[512];      /* "" for none (remote_opts.client_cert) */
	char client_key[512];       /* "" when in client_cert */
	char proxy[512];
	long timeout_ms;
	/* One token fetch at a time, outside the lock (docs/mirrors.md): the
	 * others wait on cv, within their own deadlines, for its outcome. */
	bool fetching;
	pthread_cond_t cv;          /* CLOCK_MONOTONIC */
	uint64_t fetches;           /* fetches finished */
	int fetch_rc;               /* the last one's outcome */
	struct stella_err fetch_e;
};

struct oci_client {
	struct oci_ref ref;
	char base[300];             /* scheme://registry */
	struct oci_auth *auth;
	CURL *curl;
	long timeout_ms;
	/* A client that resolves a kit (not a push): all its requests, hops,
	 * challenges and token fetches end by one deadline, timeout= after it
	 * was made, or once *cancel (remote_opts.cancel) is true. */
	int64_t deadline_ms;        /* 0: each request its own timeout */
	const atomic_bool *cancel;
};

/* ---- small helpers ---- */

/* A condition variable timed by CLOCK_MONOTONIC (deadlines are). */
static void cv_init(pthread_cond_t *cv)
{
	pthread_condattr_t at;
	pthread_condattr_init(&at);
	pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &at);
	pthread_condattr_destroy(&at);
}

static void auth_free(struct oci_auth *a)
{
	if (!a)
		return;
	pthread_mutex_destroy(&a->lock);
	pthread_cond_destroy(&a->cv);
	free(a->basic);
	free(a->realm);
	free(a->service);
	free(a->scope);
	free(a->token);
	free(a);
}

static void sha256_hex_digest(const void *buf, size_t len, char out[7 + 64 + 1])
{
	uint8_t d[32];
	unsigned dl = 0;
	EVP_Digest(buf, len, d, &dl, EVP_sha256(), NULL);
	memcpy(out, "sha256:", 7);
	hex_encode(d, 32, out + 7);
}

/* scheme://host:port of URL, with the scheme's default port spelt out, so
 * that two spellings of one origin compare equal. */
static int url_origin(const char *url, char *out, size_t cap)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL;
	int r = -EINVAL;
	if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
		for (char *p = scheme; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		for (char *p = host; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		r = snprintf(out, cap, "%s://%s:%s", scheme, host, port) < (int)cap ? 0 : -EINVAL;
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return r;
}

/* LOCATION resolved against BASE (a redirect or an upload URL may be
 * relative). */
static int url_resolve(const char *base, const char *location, char *out, size_t cap)
{
	CURLU *u = curl_url();
	char *s = NULL;
	int r = -EINVAL;
	if (u && curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_URL, location, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK)
		r = snprintf(out, cap, "%s", s) < (int)cap ? 0 : -EINVAL;
	curl_free(s);
	curl_url_cleanup(u);
	return r;
}

static bool same_origin(const char *url, const char *origin)
{
	char o[300];
	return url_origin(url, o, sizeof(o)) == 0 && !strcmp(o, origin);
}

/* ---- credentials as docker and skopeo keep them ---- */

static bool auth_key_matches(const char *key, const char *registry)
{
	if (!strncasecmp(key, "https://", 8))
		key += 8;
	else if (!strncasecmp(key, "http://", 7))
		key += 7;
	size_t n = strcspn(key, "/");
	return n == strlen(registry) && !strncasecmp(key, registry, n);
}

/* The auth file: ${REGISTRY_AUTH_FILE}, else ${DOCKER_CONFIG}/config.json,
 * else ~/.docker/config.json.  A missing file is no credentials; one that
 * is there but unreadable or not JSON is an error (silently pulling
 * anonymously would hide the mistake). */
static int load_credentials(struct oci_auth *a, struct stella_err *e)
{
	const char *env = getenv("REGISTRY_AUTH_FILE"), *dc = getenv("DOCKER_CONFIG"), *home = getenv("HOME");
	if (env && *env)
		snprintf(a->cred_file, sizeof(a->cred_file), "%s", env);
	else if (dc && *dc)
		snprintf(a->cred_file, sizeof(a->cred_file), "%s/config.json", dc);
	else if (home && *home)
		snprintf(a->cred_file, sizeof(a->cred_file), "%s/.docker/config.json", home);
	else
		return 0;
	char *buf = NULL;
	size_t len = 0;
	int r = read_file(a->cred_file, 1u << 20, &buf, &len);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return stella_fail_errno(e, -EIO, "credentials %s", a->cred_file);
	struct json_opts jo = { .max_depth = 16 };
	struct json_doc *doc = NULL;
	const struct json *root, *auths;
	struct stella_err je = { 0 };
	r = json_parse(buf, len, &jo, &doc, &root, &je);
	free(buf);
	if (r < 0)
		return stella_fail(e, -EIO, "credentials %s: %s", a->cred_file, je.msg);
	auths = root->type == JSON_OBJECT ? json_get(root, "auths") : NULL;
	r = 0;
	for (const struct json *v = auths && auths->type == JSON_OBJECT ? auths->u.first : NULL; v; v = v->next) {
		if (!auth_key_matches(v->key, a->registry) || v->type != JSON_OBJECT)
			continue;
		const struct json *au = json_get(v, "auth");
		if (!au || au->type != JSON_STRING || au->len == 0)
			continue;
		uint8_t dec[1024];
		ssize_t n = base64_decode(au->u.s, au->len, dec, sizeof(dec));
		if (n < 0 || !memchr(dec, ':', (size_t)n)) {
			r = stella_fail(e, -EIO, "credentials %s: the auth of %s is not base64 of user:password",
					a->cred_file, v->key);
			break;
		}
		a->basic = strndup(au->u.s, au->len);
		r = a->basic ? 0 : -ENOMEM;
		break;
	}
	json_doc_free(doc);
	return r;
}

/* ---- one HTTP exchange ---- */

struct http_req {
	const char *method;         /* GET HEAD POST PUT PATCH */
	const char *url;
	const char *accept;
	const char *content_type;
	const char *range;          /* "START-END" */
	const char *content_range;
	const char *auth;           /* the Authorization value, or NULL */
	const void *body;           /* in memory ... */
	size_t body_len;
	int fd;                     /* ... or streamed from fd (>= 0) */
	uint64_t fd_off, fd_len;
	size_t max_body;            /* keep at most this much of the answer */
	bool long_transfer;         /* an upload: bounded by progress, not time */
	int64_t deadline_ms;        /* absolute (now_ms), 0: timeout_ms from now */
	const atomic_bool *cancel;  /* ends the request when it becomes true */
};

struct http_resp {
	long status;
	char *body;
	size_t len;
	bool body_too_big;
	char location[2048];
	char digest[80];
	char www_auth[REMOTE_CHALLENGE_MAX];
	bool www_auth_cut;          /* it was longer: not to be acted on */
	char content_type[128];
	char content_range[128];
	int64_t content_length;
	/* internal */
	size_t max_body;
	uint64_t sent;
	const struct http_req *req;
};

static void resp_reset(struct http_resp *r)
{
	free(r->body);
	r->body = NULL;
	r->len = 0;
	r->body_too_big = false;
	r->status = 0;
	r->location[0] = r->digest[0] = r->www_auth[0] = r->content_type[0] = r->content_range[0] = '\0';
	r->www_auth_cut = false;
	r->content_length = -1;
}

static void resp_free(struct http_resp *r)
{
	free(r->body);
	r->body = NULL;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ctx)
{
	struct http_resp *r = ctx;
	size_t len = sz * n;
	if (r->len + len > r->max_body) {
		r->body_too_big = true;
		return r->max_body ? 0 : len;   /* 0 aborts: a body we asked for, too big */
	}
	char *nb = realloc(r->body, r->len + len + 1);
	if (!nb)
		return 0;
	memcpy(nb + r->len, p, len);
	r->body = nb;
	r->len += len;
	r->body[r->len] = '\0';
	return len;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t n)
{
	while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
		n--;
	while (n && (*v == ' ' || *v == '\t'))
		v++, n--;
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, v, n);
	dst[n] = '\0';
}

static size_t on_header(char *p, size_t sz, size_t n, void *ctx)
{
	struct http_resp *r = ctx;
	size_t len = sz * n;
	if (len >= 5 && !strncmp(p, "HTTP/", 5)) {
		/* a new response (after a 100 Continue): forget the last one's */
		r->location[0] = r->digest[0] = r->www_auth[0] = r->content_type[0] = r->content_range[0] = '\0';
		r->www_auth_cut = false;
		r->content_length = -1;
		return len;
	}
	const char *colon = memchr(p, ':', len);
	if (!colon)
		return len;
	size_t kn = (size_t)(colon - p);
	const char *v = colon + 1;
	size_t vn = len - kn - 1;
	static const struct { const char *name; size_t off, cap; } hs[] = {
		{ "location", offsetof(struct http_resp, location), sizeof(((struct http_resp *)0)->location) },
		{ "docker-content-digest", offsetof(struct http_resp, digest), sizeof(((struct http_resp *)0)->digest) },
		{ "www-authenticate", offsetof(struct http_resp, www_auth), sizeof(((struct http_resp *)0)->www_auth) },
		{ "content-type", offsetof(struct http_resp, content_type), sizeof(((struct http_resp *)0)->content_type) },
		{ "content-range", offsetof(struct http_resp, content_range), sizeof(((struct http_resp *)0)->content_range) },
	};
	for (size_t i = 0; i < ARRAY_SIZE(hs); i++)
		if (kn == strlen(hs[i].name) && !strncasecmp(p, hs[i].name, kn)) {
			char *dst = (char *)r + hs[i].off;
			/* several challenges: keep the first */
			if (!dst[0]) {
				copy_value(dst, hs[i].cap, v, vn);
				if (hs[i].off == offsetof(struct http_resp, www_auth))
					r->www_auth_cut = vn >= hs[i].cap;
			}
		}
	if (kn == 14 && !strncasecmp(p, "content-length", 14)) {
		char tmp[32];
		uint64_t cl;
		copy_value(tmp, sizeof(tmp), v, vn);
		if (parse_u64(tmp, &cl) == 0)
			r->content_length = (int64_t)cl;
	}
	return len;
}

static size_t on_read(char *p, size_t sz, size_t n, void *ctx)
{
	struct http_resp *r = ctx;
	const struct http_req *q = r->req;
	size_t want = sz * n;
	if (q->fd >= 0) {
		uint64_t left = q->fd_len - r->sent;
		if (want > left)
			want = (size_t)left;
		if (!want)
			return 0;
		ssize_t got = pread(q->fd, p, want, (off_t)(q->fd_off + r->sent));
		if (got <= 0)
			return CURL_READFUNC_ABORT;  /* the file shrank under us */
		r->sent += (uint64_t)got;
		return (size_t)got;
	}
	uint64_t left = q->body_len - r->sent;
	if (want > left)
		want = (size_t)left;
	memcpy(p, (const char *)q->body + r->sent, want);
	r->sent += want;
	return want;
}

static void set_tls(CURL *c, const struct oci_auth *a)
{
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	/* libcurl does not read SSL_CERT_FILE itself; docker and skopeo do */
	const char *env = getenv("SSL_CERT_FILE");
	if (a->cacert[0])
		curl_easy_setopt(c, CURLOPT_CAINFO, a->cacert);
	else if (env && *env)
		curl_easy_setopt(c, CURLOPT_CAINFO, env);
	/* the registry's API asks for the client certificate the blob reads
	 * (core/http.c) present */
	if (a->client_cert[0])
		curl_easy_setopt(c, CURLOPT_SSLCERT, a->client_cert);
	if (a->client_key[0])
		curl_easy_setopt(c, CURLOPT_SSLKEY, a->client_key);
	if (a->proxy[0])
		curl_easy_setopt(c, CURLOPT_PROXY, a->proxy);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	(void)dt; (void)dn; (void)ut; (void)un;
	const atomic_bool *cancel = arg;
	return atomic_load(cancel) ? 1 : 0;
}

/* A timeout in whole seconds, as the user gave it (timeout=, --timeout). */
static long secs(long ms)
{
	return (ms + 999) / 1000;
}

/* One request, no redirect followed, no retry: status and headers in R.
 * -EIO with the transport's reason when there is no answer. */
static int http_once(CURL *c, const struct oci_auth *a, const struct http_req *q, struct http_resp *r,
		     CURLcode *cc, struct stella_err *e)
{
	bool shared = false; /* the client's deadline, not timeout= afresh, bounds this request */
	long ms = a->timeout_ms;
	resp_reset(r);
	r->max_body = q->max_body;
	r->sent = 0;
	r->req = q;
	curl_easy_reset(c);
	set_tls(c, a);
	curl_easy_setopt(c, CURLOPT_URL, q->url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, OCI_CONNECT_TIMEOUT_MS);
	if (q->long_transfer) {
		curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, secs(a->timeout_ms));
	} else {
		if (q->deadline_ms) {
			int64_t left = q->deadline_ms - now_ms();
			if (left <= 0)
				return stella_fail(e, -ETIMEDOUT, "%s: not asked: the registry's answers so far took "
						   "the whole %ld s timeout", q->url, secs(a->timeout_ms));
			if (left < ms) {
				ms = (long)left;
				shared = true;
			}
		}
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, ms);
		if (ms < OCI_CONNECT_TIMEOUT_MS)
			curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, ms);
	}
	if (q->cancel) {
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
		curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)q->cancel);
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	}
	curl_easy_setopt(c, CURLOPT_USERAGENT, "stellafs/" STELLA_VERSION);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
	struct curl_slist *h = NULL;
	char line[8400];   /* registries' JWTs run to kilobytes */
#define ADD(fmt, ...) (snprintf(line, sizeof(line), fmt, __VA_ARGS__), h = curl_slist_append(h, line))
	if (q->accept)
		ADD("Accept: %s", q->accept);
	if (q->auth && q->auth[0])
		ADD("Authorization: %s", q->auth);
	if (q->range)
		ADD("Range: bytes=%s", q->range);
	if (q->content_range)
		ADD("Content-Range: %s", q->content_range);
	if (q->content_type)
		ADD("Content-Type: %s", q->content_type);
	h = curl_slist_append(h, "Expect:");   /* no 100-continue round trip */
#undef ADD
	bool has_body = q->fd >= 0 || q->body;
	uint64_t blen = q->fd >= 0 ? q->fd_len : q->body_len;
	if (!strcmp(q->method, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	} else if (!strcmp(q->method, "GET")) {
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	} else if (!strcmp(q->method, "POST") && !has_body) {
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
	} else {
		curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)blen);
		curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(c, CURLOPT_READDATA, r);
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	char errbuf[CURL_ERROR_SIZE] = "";
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	*cc = curl_easy_perform(c);
	curl_slist_free_all(h);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
	/* an error status's body is only ever read for its message: cut, it
	 * still has its status */
	if (*cc == CURLE_WRITE_ERROR && r->body_too_big && r->status >= 300)
		return 0;
	if (*cc == CURLE_WRITE_ERROR && r->body_too_big)
		return stella_fail(e, -EIO, "%s: answer larger than %zu bytes", q->url, q->max_body);
	/* libcurl's own words would give this request's share of the time
	 * ("after 567 milliseconds"), not the bound the user set.  A connect
	 * timeout shorter than that share keeps them: it is its own bound. */
	curl_off_t connected = 0;
	curl_easy_getinfo(c, CURLINFO_CONNECT_TIME_T, &connected);
	if (*cc == CURLE_OPERATION_TIMEDOUT && !q->long_transfer && (connected > 0 || ms <= OCI_CONNECT_TIMEOUT_MS))
		return stella_fail(e, -ETIMEDOUT, shared ? "%s: no answer within the %ld s timeout, which the "
						  "registry's every step shares" : "%s: no answer within the %ld s timeout",
				   q->url, secs(a->timeout_ms));
	if (*cc != CURLE_OK)
		return stella_fail(e, *cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO, "%s: %s", q->url,
				   errbuf[0] ? errbuf : curl_easy_strerror(*cc));
	return 0;
}

/* ---- the bearer-token challenge ---- */

/* Parse `Bearer realm="...",service="...",scope="..."` (or `Basic ...`).
 * Values are quoted strings with \-escapes, or tokens. */
static int parse_challenge_(const char *h, enum auth_scheme *scheme, char **realm, char **service, char **scope)
{
	*realm = *service = *scope = NULL;
	size_t sn = strcspn(h, " \t");
	if (sn == 6 && !strncasecmp(h, "Bearer", 6))
		*scheme = AUTH_BEARER;
	else if (sn == 5 && !strncasecmp(h, "Basic", 5))
		*scheme = AUTH_BASIC;
	else
		return -EINVAL;
	const char *p = h + sn;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (!*p)
			break;
		const char *k = p;
		while (*p && *p != '=' && *p != ',' && *p != ' ')
			p++;
		size_t kn = (size_t)(p - k);
		if (*p != '=')
			return -EINVAL;
		p++;
		char val[REMOTE_CHALLENGE_MAX];   /* no value is longer than the header */
		size_t vn = 0;
		if (*p == '"') {
			for (p++; *p && *p != '"'; p++) {
				if (*p == '\\' && p[1])
					p++;
				if (vn + 1 >= sizeof(val))
					return -EINVAL;
				val[vn++] = *p;
			}
			if (*p != '"')
				return -EINVAL;
			p++;
		} else {
			while (*p && *p != ',' && *p != ' ') {
				if (vn + 1 >= sizeof(val))
					return -EINVAL;
				val[vn++] = *p++;
			}
		}
		val[vn] = '\0';
		char **dst = kn == 5 && !strncasecmp(k, "realm", 5)     ? realm
			     : kn == 7 && !strncasecmp(k, "service", 7) ? service
			     : kn == 5 && !strncasecmp(k, "scope", 5)   ? scope
									: NULL;
		if (dst && !*dst && !(*dst = strdup(val)))
			return -ENOMEM;
	}
	return 0;
}

/* The same, owning nothing on failure. */
static int parse_challenge(const char *h, enum auth_scheme *scheme, char **realm, char **service, char **scope)
{
	int r = parse_challenge_(h, scheme, realm, service, scope);
	if (r < 0) {
		free(*realm), free(*service), free(*scope);
		*realm = *service = *scope = NULL;
	}
	return r;
}

/* The token endpoint may live elsewhere (it is the registry's own choice,
 * in its challenge); the user's password goes there only over https, or
 * to a loopback realm. */
static bool realm_may_get_password(const char *realm)
{
	char o[300];
	if (url_origin(realm, o, sizeof(o)) < 0)
		return false;
	if (!strncmp(o, "https://", 8))
		return true;
	/* o is "http://HOST:PORT" or "http://[V6]:PORT": the host by its value */
	char host[256];
	const char *h = o + 7, *end = *h == '[' ? strchr(h, ']') : strrchr(h, ':');
	if (*h == '[')
		h++;
	if (!end || end < h || (size_t)(end - h) >= sizeof(host))
		return false;
	memcpy(host, h, (size_t)(end - h));
	host[end - h] = '\0';
	return oci_host_is_loopback(host);
}

/* What one token fetch asks with (copies: the lock is not held while it
 * runs) and what it gets. */
struct token_ask {
	char *realm, *service, *scope;
	int64_t deadline_ms;
	const atomic_bool *cancel;
	char *token;                /* out */
	int64_t life;               /* out, seconds */
	time_t asked;               /* out */
};

/* GET realm?service=..&scope=.. (basic credentials if we have any): a
 * fresh token.  Without a->lock (a->basic, registry, cred_file never
 * change). */
static int fetch_token_net(struct oci_auth *a, struct token_ask *t, struct stella_err *e)
{
	CURL *c = curl_easy_init();
	if (!c)
		return -ENOMEM;
	char *sv = curl_easy_escape(c, t->service ? t->service : "", 0);
	char *sc = curl_easy_escape(c, t->scope ? t->scope : "", 0);
	char url[4096], authv[1100] = "";
	int r;
	snprintf(url, sizeof(url), "%s%sservice=%s%s%s", t->realm, strchr(t->realm, '?') ? "&" : "?", sv ? sv : "",
		 t->scope ? "&scope=" : "", t->scope ? sc : "");
	curl_free(sv);
	curl_free(sc);
	if (a->basic && realm_may_get_password(t->realm))
		snprintf(authv, sizeof(authv), "Basic %s", a->basic);
	struct http_req q = { .method = "GET", .url = url, .auth = authv, .fd = -1, .max_body = OCI_SMALL_BODY,
				.deadline_ms = t->deadline_ms, .cancel = t->cancel };
	struct http_resp resp = { 0 };
	CURLcode cc;
	/* the token's life counts from before it was asked for: never later
	 * than the service counts it */
	t->asked = time(NULL);
	r = http_once(c, a, &q, &resp, &cc, e);
	curl_easy_cleanup(c);
	if (r < 0)
		goto out;
	if (resp.status == 401 || resp.status == 403) {
		if (authv[0])
			r = stella_fail(e, -EACCES, "%s: the token service %s refused the credentials from %s (HTTP %ld)",
					a->registry, t->realm, a->cred_file, resp.status);
		else
			r = stella_fail(e, -EACCES, "%s: the token service %s refused anonymous access (HTTP %ld)%s",
					a->registry, t->realm, resp.status,
					a->basic ? "; the credentials are not sent to a plain-http realm" : "");
		goto out;
	}
	if (resp.status != 200) {
		r = stella_fail(e, -EIO, "%s: the token service %s answered HTTP %ld", a->registry, t->realm,
				resp.status);
		goto out;
	}
	struct json_opts jo = { .max_depth = 8 };
	struct json_doc *doc = NULL;
	const struct json *root, *tok = NULL, *exp = NULL;
	if (json_parse(resp.body ? resp.body : "", resp.len, &jo, &doc, &root, NULL) == 0 &&
	    root->type == JSON_OBJECT) {
		tok = json_get(root, "token");
		if (!tok || tok->type != JSON_STRING || !tok->len)
			tok = json_get(root, "access_token");
		exp = json_get(root, "expires_in");
	}
	if (!tok || tok->type != JSON_STRING || !tok->len || tok->len > REMOTE_AUTHORIZATION_MAX - 16 || memchr(tok->u.s, '\n', tok->len) ||
	    memchr(tok->u.s, '\r', tok->len)) {
		json_doc_free(doc);
		r = stella_fail(e, -EACCES, "%s: the token service %s answered no token", a->registry, t->realm);
		goto out;
	}
	t->token = strndup(tok->u.s, tok->len);
	/* docker's default lifetime when the service does not say */
	t->life = exp && exp->type == JSON_INT && exp->u.i > 0 ? exp->u.i : 60;
	json_doc_free(doc);
	r = t->token ? 0 : -ENOMEM;
out:
	resp_free(&resp);
	return r;
}

/* Wait, a->lock held, for the fetch under way to end; 0 when it ended
 * (its outcome in a->fetch_rc), -ETIMEDOUT or -ECANCELED. */
static int wait_fetch(struct oci_auth *a, int64_t deadline, const atomic_bool *cancel, struct stella_err *e)
{
	while (a->fetching) {
		if (cancel && atomic_load(cancel))
			return stella_fail(e, -ECANCELED, "%s: cancelled", a->registry);
		int64_t now = now_ms();
		if (now >= deadline)
			return stella_fail(e, -ETIMEDOUT, "%s: timed out waiting for a token from %s", a->registry,
					   a->realm ? a->realm : "the token service");
		/* at most a second at a time: cancel is a flag, not a signal */
		int64_t until = deadline < now + 1000 ? deadline : now + 1000;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		int64_t ns = (int64_t)ts.tv_nsec + (until - now) * 1000000;
		ts.tv_sec += ns / 1000000000;
		ts.tv_nsec = ns % 1000000000;
		pthread_cond_timedwait(&a->cv, &a->lock, &ts);
	}
	return 0;
}

/* A fresh token; called with a->lock held, which is let go while the
 * token service is asked.  One fetch at a time: a caller that finds one
 * under way takes its outcome instead of asking again.  DEADLINE 0: the
 * client's timeout from now. */
static int fetch_token(struct oci_auth *a, int64_t deadline, const atomic_bool *cancel, struct stella_err *e)
{
	if (!deadline)
		deadline = now_ms() + a->timeout_ms;
	if (a->fetching) {
		int r = wait_fetch(a, deadline, cancel, e);
		if (r < 0)
			return r;
		if (a->fetch_rc < 0 && e)
			*e = a->fetch_e;
		return a->fetch_rc;
	}
	struct token_ask t = { .deadline_ms = deadline, .cancel = cancel };
	if (!(t.realm = strdup(a->realm ? a->realm : "")) || (a->service && !(t.service = strdup(a->service))) ||
	    (a->scope && !(t.scope = strdup(a->scope)))) {
		free(t.realm), free(t.service), free(t.scope);
		return -ENOMEM;
	}
	a->fetching = true;
	pthread_mutex_unlock(&a->lock);
	struct stella_err fe = { 0 };
	int r = fetch_token_net(a, &t, &fe);
	pthread_mutex_lock(&a->lock);
	if (r == 0) {
		free(a->token);
		a->token = t.token;
		a->token_expiry = t.asked + (time_t)t.life;
		/* renew a little early, unless the life is too short to */
		a->token_margin = t.life > 10 ? 5 : 0;
	}
	a->fetching = false;
	a->fetches++;
	a->fetch_rc = r;
	a->fetch_e = fe;
	pthread_cond_broadcast(&a->cv);
	free(t.realm), free(t.service), free(t.scope);
	if (r < 0 && e)
		*e = fe;
	return r;
}

/* Take in a challenge; a->lock held.  PREV_SENT: what the failed request
 * carried ("" nothing). */
static int take_challenge(struct oci_auth *a, const char *hdr, const char *prev_sent, int64_t deadline,
			  const atomic_bool *cancel, struct stella_err *e)
{
	enum auth_scheme s;
	char *realm, *service, *scope;
	if (!hdr || !hdr[0] || parse_challenge(hdr, &s, &realm, &service, &scope) < 0)
		return stella_fail(e, -EACCES, "%s: HTTP 401 without a usable challenge%s%.200s%s", a->registry,
				   hdr && hdr[0] ? " ('" : "", hdr ? hdr : "", hdr && hdr[0] ? "')" : "");
	if (s == AUTH_BASIC) {
		free(realm), free(service), free(scope);
		if (!a->basic)
			return stella_fail(e, -EACCES, "%s: the registry asks for credentials; none for it in %s",
					   a->registry, a->cred_file[0] ? a->cred_file : "~/.docker/config.json");
		if (!strncmp(prev_sent, "Basic ", 6))
			return stella_fail(e, -EACCES, "%s: the registry refused the credentials from %s", a->registry,
					   a->cred_file);
		a->scheme = AUTH_BASIC;
		return 0;
	}
	if (!realm || strncasecmp(realm, "http", 4)) {
		free(realm), free(service), free(scope);
		return stella_fail(e, -EACCES, "%s: HTTP 401 with a bearer challenge without a realm", a->registry);
	}
	free(a->realm), free(a->service);
	a->realm = realm;
	a->service = service;
	if (scope) {
		free(a->scope);
		a->scope = scope;
	}
	a->scheme = AUTH_BEARER;
	/* a fresh token in any case: the one sent was refused (expired,
	 * revoked, or for another scope); the caller retries once */
	return fetch_token(a, deadline, cancel, e);
}

/* The Authorization value for the registry's origin; a->lock held. */
static int authorization(struct oci_auth *a, char *buf, size_t len, int64_t deadline, const atomic_bool *cancel,
			 struct stella_err *e)
{
	buf[0] = '\0';
	if (a->scheme == AUTH_BASIC && a->basic) {
		snprintf(buf, len, "Basic %s", a->basic);
	} else if (a->scheme == AUTH_BEARER) {
		/* expired (or about to): a new one before the request, not a 401 after */
		if (!a->token || time(NULL) + a->token_margin >= a->token_expiry) {
			int r = fetch_token(a, deadline, cancel, e);
			if (r < 0)
				return r;
		}
		if (strlen(a->token) + 8 >= len)
			return stella_fail(e, -EACCES, "%s: token too long", a->registry);
		snprintf(buf, len, "Bearer %s", a->token);
	}
	return 0;
}

/* ---- remote_auth_ops for the blob endpoint (remote.c) ---- */

static int ops_authorize(void *ctx, char *buf, size_t len, int64_t deadline_ms, const atomic_bool *cancel,
			 struct stella_err *e)
{
	struct oci_auth *a = ctx;
	pthread_mutex_lock(&a->lock);
	int r = authorization(a, buf, len, deadline_ms, cancel, e);
	pthread_mutex_unlock(&a->lock);
	return r;
}

static int ops_challenge(void *ctx, const char *www_authenticate, int64_t deadline_ms, const atomic_bool *cancel,
			 struct stella_err *e)
{
	struct oci_auth *a = ctx;
	pthread_mutex_lock(&a->lock);
	/* what was sent, as take_challenge judges it: only the scheme counts */
	const char *prev = a->scheme == AUTH_BASIC && a->basic ? "Basic " : "";
	int r = take_challenge(a, www_authenticate, prev, deadline_ms, cancel, e);
	pthread_mutex_unlock(&a->lock);
	return r;
}

static void ops_free(void *ctx)
{
	auth_free(ctx);
}

static const struct remote_auth_ops oci_auth_ops = {
	.authorize = ops_authorize,
	.challenge = ops_challenge,
	.free = ops_free,
};

static struct oci_auth *auth_copy(const struct oci_auth *a)
{
	struct oci_auth *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	memcpy(b->origin, a->origin, sizeof(b->origin));
	memcpy(b->registry, a->registry, sizeof(b->registry));
	memcpy(b->cred_file, a->cred_file, sizeof(b->cred_file));
	memcpy(b->cacert, a->cacert, sizeof(b->cacert));
	memcpy(b->client_cert, a->client_cert, sizeof(b->client_cert));
	memcpy(b->client_key, a->client_key, sizeof(b->client_key));
	memcpy(b->proxy, a->proxy, sizeof(b->proxy));
	b->scheme = a->scheme;
	b->token_expiry = a->token_expiry;
	b->token_margin = a->token_margin;
	b->timeout_ms = a->timeout_ms;
	pthread_mutex_init(&b->lock, NULL);
	cv_init(&b->cv);
#define DUP(f) if (a->f && !(b->f = strdup(a->f))) goto fail
	DUP(basic);
	DUP(realm);
	DUP(service);
	DUP(scope);
	DUP(token);
#undef DUP
	return b;
fail:
	auth_free(b);
	return NULL;
}

/* ---- requests to the registry ---- */

/* Q to the registry (or, after redirects, wherever they lead): the
 * registry's credentials on its own origin only; a 401 there answered once
 * per challenge; redirects followed for GET and HEAD. */
/* The client's deadline and cancel on a request that has none of its own. */
static void bound(const struct oci_client *c, struct http_req *q)
{
	if (!q->deadline_ms && !q->long_transfer)
		q->deadline_ms = c->deadline_ms;
	if (!q->cancel)
		q->cancel = c->cancel;
}

static int request(struct oci_client *c, struct http_req q, struct http_resp *r, struct stella_err *e)
{
	char url[2048], authv[REMOTE_AUTHORIZATION_MAX], sent[REMOTE_AUTHORIZATION_MAX];
	snprintf(url, sizeof(url), "%s", q.url);
	bound(c, &q);
	for (int hops = 0, challenges = 0;;) {
		bool own = same_origin(url, c->auth->origin);
		authv[0] = '\0';
		if (own) {
			pthread_mutex_lock(&c->auth->lock);
			int ar = authorization(c->auth, authv, sizeof(authv), q.deadline_ms, q.cancel, e);
			pthread_mutex_unlock(&c->auth->lock);
			if (ar < 0)
				return ar;
		}
		q.url = url;
		q.auth = authv;
		CURLcode cc;
		int rc = http_once(c->curl, c->auth, &q, r, &cc, e);
		if (rc < 0)
			return rc;
		if (r->status == 401 && own && r->www_auth_cut)
			return stella_fail(e, -EACCES, "%s: HTTP 401 with a WWW-Authenticate longer than %d bytes",
					   c->ref.registry, REMOTE_CHALLENGE_MAX - 1);
		if (r->status == 401 && own && challenges++ < 2) {
			memcpy(sent, authv, sizeof(sent));
			pthread_mutex_lock(&c->auth->lock);
			rc = take_challenge(c->auth, r->www_auth, sent, q.deadline_ms, q.cancel, e);
			pthread_mutex_unlock(&c->auth->lock);
			if (rc < 0)
				return rc;
			continue;
		}
		if (r->status == 401)
			return stella_fail(e, -EACCES, "%s: the registry refused %s (HTTP 401)", c->ref.registry,
					   authv[0] ? "our credentials" : "anonymous access");
		bool redirect = r->status == 301 || r->status == 302 || r->status == 303 || r->status == 307 ||
				r->status == 308;
		if (!redirect || (strcmp(q.method, "GET") && strcmp(q.method, "HEAD")))
			return 0;
		if (++hops > OCI_MAX_REDIRECTS)
			return stella_fail(e, -EIO, "%s: more than %d redirects", q.url, OCI_MAX_REDIRECTS);
		char next[2048];
		if (!r->location[0] || url_resolve(url, r->location, next, sizeof(next)) < 0 ||
		    (strncasecmp(next, "http://", 7) && strncasecmp(next, "https://", 8)))
			return stella_fail(e, -EIO, "%s: HTTP %ld with a bad Location", url, r->status);
		memcpy(url, next, sizeof(url));
	}
}

/* "HTTP 404 (MANIFEST_UNKNOWN: manifest unknown)": the registry's own
 * error, when it sent one in the distribution format. */
static const char *status_text(const struct http_resp *r, char *buf, size_t cap)
{
	int n = snprintf(buf, cap, "HTTP %ld", r->status);
	struct json_opts jo = { .max_depth = 8 };
	struct json_doc *doc = NULL;
	const struct json *root, *errs;
	if (r->body && json_parse(r->body, r->len, &jo, &doc, &root, NULL) == 0 && root->type == JSON_OBJECT &&
	    (errs = json_get(root, "errors")) && errs->type == JSON_ARRAY && errs->u.first &&
	    errs->u.first->type == JSON_OBJECT) {
		const struct json *code = json_get(errs->u.first, "code"), *msg = json_get(errs->u.first, "message");
		if (code && code->type == JSON_STRING && msg && msg->type == JSON_STRING && n > 0 && (size_t)n < cap)
			snprintf(buf + n, cap - (size_t)n, " (%.60s: %.120s)", code->u.s, msg->u.s);
	}
	json_doc_free(doc);
	return buf;
}

static int unexpected(struct oci_client *c, const char *what, const struct http_resp *r, struct stella_err *e)
{
	char st[256];
	int rc = r->status == 404 ? -ENOENT : r->status == 403 ? -EACCES : -EIO;
	return stella_fail(e, rc, "%s/%s: %s: %s", c->ref.registry, c->ref.repo, what, status_text(r, st, sizeof(st)));
}

/* ---- the session ---- */

static int ping(struct oci_client *c, const char *scheme, CURLcode *cc, struct stella_err *e)
{
	snprintf(c->base, sizeof(c->base), "%s://%s", scheme, c->ref.registry);
	if (url_origin(c->base, c->auth->origin, sizeof(c->auth->origin)) < 0)
		return stella_fail(e, -EINVAL, "%s: not a usable registry address", c->ref.registry);
	char url[400];
	snprintf(url, sizeof(url), "%s/v2/", c->base);
	struct http_req q = { .method = "GET", .url = url, .fd = -1, .max_body = OCI_SMALL_BODY };
	struct http_resp r = { 0 };
	bound(c, &q);
	int rc = http_once(c->curl, c->auth, &q, &r, cc, e);
	if (rc == 0 && r.status == 401) {
		/* Learn the scheme now, so that the first real request already
		 * carries credentials (and remote.c's range reads meet no 401):
		 * for a bearer challenge the scope is this repository's. */
		enum auth_scheme s;
		char *realm, *service, *scope;
		if (parse_challenge(r.www_auth, &s, &realm, &service, &scope) == 0) {
			free(scope);
			if (s == AUTH_BASIC && c->auth->basic) {
				c->auth->scheme = AUTH_BASIC;
			} else if (s == AUTH_BEARER && realm) {
				c->auth->scheme = AUTH_BEARER;
				c->auth->realm = realm;
				c->auth->service = service;
				realm = service = NULL;
			}
			free(realm), free(service);
		}
	} else if (rc == 0 && r.status != 200) {
		char st[256];
		rc = stella_fail(e, -EIO, "%s: not a registry: GET /v2/ answered %s", c->ref.registry,
				 status_text(&r, st, sizeof(st)));
	}
	resp_free(&r);
	return rc;
}

int oci_client_new(const struct oci_ref *ref, const struct remote_opts *o, bool push, struct oci_client **out,
		   struct stella_err *e)
{
	struct stella_err le = { 0 };
	int r = curl_api_check(&le);
	if (r < 0)
		return stella_fail(e, r, "%s: %s", ref->registry, le.msg);
	struct oci_client *c = calloc(1, sizeof(*c));
	if (!c || !(c->auth = calloc(1, sizeof(*c->auth))) || !(c->curl = curl_easy_init())) {
		oci_client_free(c);
		return -ENOMEM;
	}
	pthread_mutex_init(&c->auth->lock, NULL);
	cv_init(&c->auth->cv);
	c->ref = *ref;
	struct oci_auth *a = c->auth;
	snprintf(a->registry, sizeof(a->registry), "%s", ref->registry);
	if (o && o->cacert)
		snprintf(a->cacert, sizeof(a->cacert), "%s", o->cacert);
	if (o && o->client_cert)
		snprintf(a->client_cert, sizeof(a->client_cert), "%s", o->client_cert);
	if (o && o->client_key)
		snprintf(a->client_key, sizeof(a->client_key), "%s", o->client_key);
	if (o && o->proxy)
		snprintf(a->proxy, sizeof(a->proxy), "%s", o->proxy);
	a->timeout_ms = o && o->timeout_ms ? (long)o->timeout_ms : (long)REMOTE_TIMEOUT_DEFAULT_MS;
	if (!push)
		c->deadline_ms = now_ms() + a->timeout_ms;
	c->cancel = o ? o->cancel : NULL;
	char scope[400];
	snprintf(scope, sizeof(scope), "repository:%s:%s", ref->repo, push ? "pull,push" : "pull");
	r = (a->scope = strdup(scope)) ? load_credentials(a, e) : -ENOMEM;
	CURLcode cc = CURLE_OK;
	struct stella_err pe = { 0 };
	if (r == 0)
		r = ping(c, "https", &cc, &pe);
	/* A loopback registry that does not speak TLS: plain http, as docker
	 * and skopeo allow there (a certificate that fails verification is
	 * not a reason: that stays an error). */
	if (r < 0 && ref->loopback && (cc == CURLE_SSL_CONNECT_ERROR || cc == CURLE_RECV_ERROR ||
				       cc == CURLE_GOT_NOTHING)) {
		pe = (struct stella_err){ 0 };
		r = ping(c, "http", &cc, &pe);
	}
	if (r < 0) {
		/* name the registry first: the URL is an implementation detail */
		if (e && !e->code)
			stella_fail(e, r, "%s: %s%s", ref->registry, r == -EIO || r == -ETIMEDOUT ? "OCI registry unreachable: " : "",
				    pe.msg);
		oci_client_free(c);
		return r;
	}
	*out = c;
	return 0;
}

void oci_client_free(struct oci_client *c)
{
	if (!c)
		return;
	auth_free(c->auth);
	if (c->curl)
		curl_easy_cleanup(c->curl);
	free(c);
}

/* ---- pulling ---- */

static int get_manifest(struct oci_client *c, struct http_resp *r, char digest[72], struct stella_err *e)
{
	char url[700];
	snprintf(url, sizeof(url), "%s/v2/%s/manifests/%s", c->base, c->ref.repo, ociref_reference(&c->ref));
	/* The other manifest kinds are asked for too, so that a tag on an
	 * image gets "not a kit" rather than a registry's 404. */
	struct http_req q = { .method = "GET", .url = url, .fd = -1, .max_body = OCI_MANIFEST_MAX,
		.accept = OCI_MANIFEST_TYPE ", application/vnd.oci.image.index.v1+json, "
			  "application/vnd.docker.distribution.manifest.v2+json, "
			  "application/vnd.docker.distribution.manifest.list.v2+json" };
	int rc = request(c, q, r, e);
	if (rc < 0)
		return rc;
	if (r->status != 200)
		return unexpected(c, ociref_reference(&c->ref), r, e);
	sha256_hex_digest(r->body ? r->body : "", r->len, digest);
	if (c->ref.digest[0] && strcmp(digest, c->ref.digest))
		return stella_fail(e, -EUCLEAN, "oci://%s/%s: manifest digest mismatch: asked for %s, the registry sent %s",
				   c->ref.registry, c->ref.repo, c->ref.digest, digest);
	if (r->digest[0] && !strncmp(r->digest, "sha256:", 7) && strcmp(r->digest, digest))
		return stella_fail(e, -EUCLEAN, "oci://%s/%s:%s: manifest digest mismatch: the registry says %s, "
				   "its bytes are %s", c->ref.registry, c->ref.repo, ociref_reference(&c->ref),
				   r->digest, digest);
	return 0;
}

int oci_manifest_digest(struct oci_client *c, char digest[7 + 64 + 1], struct stella_err *e)
{
	struct http_resp r = { 0 };
	int rc = get_manifest(c, &r, digest, e);
	resp_free(&r);
	return rc;
}

/* The blob's size as its server states it, from a one-byte range request
 * (not HEAD: a presigned storage URL is signed for GET only). */
static int blob_size(struct oci_client *c, const char *url, uint64_t *size, struct stella_err *e)
{
	/* at most the one byte asked for: a server that ignores Range and
	 * answers 200 with the whole blob is cut off after its headers */
	struct http_req q = { .method = "GET", .url = url, .fd = -1, .range = "0-0", .max_body = 1 };
	struct http_resp r = { 0 };
	struct stella_err re = { 0 };
	int rc = request(c, q, &r, &re);
	if (rc < 0 && r.body_too_big && r.status == 200)
		rc = 0;   /* its Content-Length is enough here (remote.c refuses it later) */
	else if (rc < 0 && e && !e->code)
		*e = re;
	if (rc < 0)
		goto out;
	const char *slash = strchr(r.content_range, '/');
	if (r.status == 206 && slash && parse_u64(slash + 1, size) == 0)
		goto out;
	if (r.status == 200 && r.content_length >= 0) {
		*size = (uint64_t)r.content_length;
		goto out;
	}
	rc = r.status == 206 || r.status == 200
		     ? stella_fail(e, -EIO, "%s: blob: no size in the answer", c->ref.registry)
		     : unexpected(c, "kit layer blob", &r, e);
out:
	resp_free(&r);
	return rc;
}

int oci_resolve(struct oci_client *c, struct oci_resolved *res, struct stella_err *e)
{
	struct http_resp r = { 0 };
	memset(res, 0, sizeof(*res));
	int rc = get_manifest(c, &r, res->digest, e);
	if (rc == 0 && (rc = oci_manifest_parse(r.body ? r.body : "", r.len, &res->m, e)) < 0 && e)
		stella_err_hint(e, rc, -EBADMSG, ociref_reference(&c->ref));
	resp_free(&r);
	if (rc < 0)
		return rc;
	snprintf(res->blob_url, sizeof(res->blob_url), "%s/v2/%s/blobs/%s", c->base, c->ref.repo,
		 res->m.layer.digest);
	uint64_t size;
	if ((rc = blob_size(c, res->blob_url, &size, e)) < 0)
		return rc;
	if (size != res->m.layer.size)
		return stella_fail(e, -EUCLEAN, "oci://%s/%s: the kit layer %s is %llu bytes, its descriptor says %llu",
				   c->ref.registry, c->ref.repo, res->m.layer.digest, (unsigned long long)size,
				   (unsigned long long)res->m.layer.size);
	return 0;
}

int oci_endpoint(struct oci_client *c, const struct oci_resolved *res, const char *label,
		 struct remote_endpoint *ep, struct stella_err *e)
{
	memset(ep, 0, sizeof(*ep));
	struct oci_auth *a = auth_copy(c->auth);
	char *url = strdup(res->blob_url), *lab = strdup(label);
	if (!a || !url || !lab) {
		auth_free(a);
		free(url);
		free(lab);
		return stella_fail(e, -ENOMEM, "out of memory");
	}
	ep->url = url;
	ep->label = lab;
	ep->auth = &oci_auth_ops;
	ep->auth_ctx = a;
	ep->size = res->m.layer.size;
	return 0;
}

void oci_endpoint_release(struct remote_endpoint *ep)
{
	free((char *)ep->url);
	free((char *)ep->label);
	ep->url = ep->label = NULL;
}

/* ---- pushing ---- */

int oci_blob_exists(struct oci_client *c, const char *digest, bool *exists, struct stella_err *e)
{
	char url[700];
	snprintf(url, sizeof(url), "%s/v2/%s/blobs/%s", c->base, c->ref.repo, digest);
	struct http_req q = { .method = "HEAD", .url = url, .fd = -1 };
	struct http_resp r = { 0 };
	int rc = request(c, q, &r, e);
	if (rc == 0) {
		if (r.status == 200)
			*exists = true;
		else if (r.status == 404)
			*exists = false;
		else
			rc = unexpected(c, "HEAD blob", &r, e);
	}
	resp_free(&r);
	return rc;
}

/* POST .../blobs/uploads/: where to send the bytes. */
static int upload_start(struct oci_client *c, char *loc, size_t cap, struct stella_err *e)
{
	char url[700];
	snprintf(url, sizeof(url), "%s/v2/%s/blobs/uploads/", c->base, c->ref.repo);
	struct http_req q = { .method = "POST", .url = url, .fd = -1, .max_body = OCI_SMALL_BODY };
	struct http_resp r = { 0 };
	int rc = request(c, q, &r, e);
	if (rc == 0 && r.status != 202)
		rc = unexpected(c, "starting an upload", &r, e);
	if (rc == 0 && (!r.location[0] || url_resolve(url, r.location, loc, cap) < 0))
		rc = stella_fail(e, -EIO, "%s: upload: no usable Location", c->ref.registry);
	resp_free(&r);
	return rc;
}

/* LOC with ?digest=D (or &digest=D). */
static int with_digest(const char *loc, const char *digest, char *out, size_t cap)
{
	return snprintf(out, cap, "%s%sdigest=%s", loc, strchr(loc, '?') ? "&" : "?", digest) < (int)cap ? 0 : -EINVAL;
}

static int upload_send(struct oci_client *c, struct http_req q, long want, char *loc, size_t cap,
		       const char *what, struct stella_err *e)
{
	struct http_resp r = { 0 };
	q.max_body = OCI_SMALL_BODY;
	q.long_transfer = true;
	int rc = request(c, q, &r, e);
	if (rc == 0 && r.status != want)
		rc = unexpected(c, what, &r, e);
	if (rc == 0 && loc && r.location[0] && url_resolve(q.url, r.location, loc, cap) < 0)
		rc = stella_fail(e, -EIO, "%s: upload: no usable Location", c->ref.registry);
	resp_free(&r);
	return rc;
}

int oci_blob_upload_fd(struct oci_client *c, const char *digest, int fd, uint64_t size, uint64_t chunk,
		       struct stella_err *e)
{
	char loc[2048], put[2200];
	int rc = upload_start(c, loc, sizeof(loc), e);
	if (rc < 0)
		return rc;
	if (chunk == 0 || size <= chunk) {
		if (with_digest(loc, digest, put, sizeof(put)) < 0)
			return stella_fail(e, -EIO, "%s: upload URL too long", c->ref.registry);
		struct http_req q = { .method = "PUT", .url = put, .fd = fd, .fd_off = 0, .fd_len = size,
				      .content_type = "application/octet-stream" };
		return upload_send(c, q, 201, NULL, 0, "uploading the kit", e);
	}
	for (uint64_t off = 0; off < size; off += chunk) {
		uint64_t n = MIN(chunk, size - off);
		char cr[64];
		snprintf(cr, sizeof(cr), "%llu-%llu", (unsigned long long)off, (unsigned long long)(off + n - 1));
		char cur[2048];
		memcpy(cur, loc, sizeof(cur));
		struct http_req q = { .method = "PATCH", .url = cur, .fd = fd, .fd_off = off, .fd_len = n,
				      .content_type = "application/octet-stream", .content_range = cr };
		if ((rc = upload_send(c, q, 202, loc, sizeof(loc), "uploading a chunk of the kit", e)) < 0)
			return rc;
	}
	if (with_digest(loc, digest, put, sizeof(put)) < 0)
		return stella_fail(e, -EIO, "%s: upload URL too long", c->ref.registry);
	struct http_req q = { .method = "PUT", .url = put, .fd = -1, .body = "", .body_len = 0,
			      .content_type = "application/octet-stream" };
	return upload_send(c, q, 201, NULL, 0, "finishing the kit's upload", e);
}

int oci_blob_upload_mem(struct oci_client *c, const char *digest, const void *buf, size_t len,
			struct stella_err *e)
{
	char loc[2048], put[2200];
	int rc = upload_start(c, loc, sizeof(loc), e);
	if (rc < 0)
		return rc;
	if (with_digest(loc, digest, put, sizeof(put)) < 0)
		return stella_fail(e, -EIO, "%s: upload URL too long", c->ref.registry);
	struct http_req q = { .method = "PUT", .url = put, .fd = -1, .body = buf, .body_len = len,
			      .content_type = "application/octet-stream" };
	return upload_send(c, q, 201, NULL, 0, "uploading a blob", e);
}

int oci_manifest_put(struct oci_client *c, const char *body, size_t len, struct stella_err *e)
{
	char url[700];
	snprintf(url, sizeof(url), "%s/v2/%s/manifests/%s", c->base, c->ref.repo, ociref_reference(&c->ref));
	struct http_req q = { .method = "PUT", .url = url, .fd = -1, .body = body, .body_len = len,
			      .content_type = OCI_MANIFEST_TYPE };
	return upload_send(c, q, 201, NULL, 0, "putting the manifest", e);
}

/* ---- location.c's oci:// ---- */

int oci_location_endpoint(const char *source, const struct remote_opts *o, struct remote_endpoint *ep,
			  struct stella_err *e)
{
	struct oci_ref ref;
	int r = ociref_parse(source, &ref, e);
	if (r < 0)
		return r;
	struct oci_client *c = NULL;
	struct oci_resolved res;
	if ((r = oci_client_new(&ref, o, false, &c, e)) == 0 && (r = oci_resolve(c, &res, e)) == 0)
		r = oci_endpoint(c, &res, source, ep, e);
	/* which manifest a tag named when it was opened: the log keeps it */
	if (r == 0)
		stella_log(LOG_INFO, "%s: manifest %s, kit layer %s (%llu bytes)", source, res.digest,
			   res.m.layer.digest, (unsigned long long)res.m.layer.size);
	oci_client_free(c);
	return r;
}

int oci_location_probe(const char *source, const struct remote_opts *o, const char *validator, char out[256],
		       struct stella_err *e)
{
	struct oci_ref ref;
	int r = ociref_parse(source, &ref, e);
	if (r < 0)
		return r;
	struct oci_client *c = NULL;
	char digest[7 + 64 + 1];
	if ((r = oci_client_new(&ref, o, false, &c, e)) == 0)
		r = oci_manifest_digest(c, digest, e);
	oci_client_free(c);
	if (r < 0)
		return r;
	snprintf(out, 256, "%s", digest);
	return strcmp(digest, validator ? validator : "") != 0;
}
