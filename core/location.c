/* Where a kit is (location.h): a local path, an http(s):// URL, an oci://
 * reference. */
#include "location.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#include "http.h"
#include "oci.h"

/* LOC as messages show it: without user:password@ (docs/remote.md).  In
 * a buffer of this thread's, good until its next call. */
static const char *shown(const char *loc)
{
	static __thread char buf[1024];
	char *r = http_redact(loc);
	snprintf(buf, sizeof(buf), "%s", r ? r : "(location)");
	free(r);
	return buf;
}

static bool has_scheme(const char *s, const char *scheme)
{
	size_t n = strlen(scheme);
	return strncasecmp(s, scheme, n) == 0;
}

static bool is_http(const char *s)
{
	return has_scheme(s, "http://") || has_scheme(s, "https://");
}

static bool is_oci(const char *s)
{
	return has_scheme(s, "oci://");
}

bool location_is_remote(const char *s)
{
	return s && (is_http(s) || is_oci(s));
}

const char *location_mirror_refusal(const char *source, const char *mirror)
{
	if (is_http(mirror)) {
		const char *host = mirror + (has_scheme(mirror, "https://") ? 8 : 7);
		return *host && *host != '/' && !strpbrk(mirror, " \t\n\r") ? NULL : "a URL without a host";
	}
	if (!is_oci(mirror))
		return "not an http://, https:// or oci:// location";
	if (source && !is_oci(source))
		return "an oci:// mirror stands only beside an oci:// SOURCE";
	return NULL;
}

/* oci:// references: core/oci.c resolves each to its kit layer's blob (the
 * manifest fetched and checked) and hands back an endpoint whose auth ops
 * carry the registry's credentials; remote_open then reads the blob like
 * any URL.  A mirror may be another registry or a plain URL of the same
 * kit.  A location that cannot be reached now is left out while another
 * can be (the point of mirrors); one that answers something that is not
 * this kit (not a kit, a digest or size that disagrees) stops the open:
 * that is an error to say, not to route around. */
static bool oci_hard_failure(int r)
{
	return r == -EBADMSG || r == -EUCLEAN || r == -EINVAL;
}

/* SSL_CERT_FILE when no cacert= was given: the registry client honours
 * it (as docker and skopeo do); the blob reads must trust the same. */
static struct remote_opts oci_opts(const struct remote_opts *o)
{
	struct remote_opts ro = o ? *o : (struct remote_opts){ 0 };
	const char *env = getenv("SSL_CERT_FILE");
	if (!ro.cacert && env && *env)
		ro.cacert = env;
	return ro;
}

static int oci_open(const char *source, const char *const *mirrors, size_t n,
		    const struct remote_opts *o, struct bytes **out, struct stella_err *e)
{
	if (n + 1 > REMOTE_MAX_ENDPOINTS)
		return stella_fail(e, -EINVAL, "%s: at most %d mirrors", shown(source), REMOTE_MAX_ENDPOINTS - 1);
	struct remote_opts ro = oci_opts(o);
	struct remote_endpoint eps[REMOTE_MAX_ENDPOINTS] = { { 0 } };
	bool owned[REMOTE_MAX_ENDPOINTS] = { false };
	size_t k = 0;
	int first = 0, r = 0;
	struct stella_err first_e = { 0 };
	/* Said only if another location serves: otherwise the first is the
	 * error, said once, at the edge. */
	struct stella_err left[REMOTE_MAX_ENDPOINTS];
	size_t nleft = 0;
	for (size_t i = 0; i <= n; i++) {
		const char *loc = i == 0 ? source : mirrors[i - 1];
		if (i > 0 && is_http(loc)) {
			eps[k].url = eps[k].label = loc;
			k++;
			continue;
		}
		if (!is_oci(loc)) {
			r = stella_fail(e, -EINVAL, "mirror %s: not an oci://, http:// or https:// location", shown(loc));
			break;
		}
		struct stella_err le = { 0 };
		int lr = oci_location_endpoint(loc, &ro, &eps[k], &le);
		if (lr == 0) {
			owned[k++] = true;
			continue;
		}
		if (oci_hard_failure(lr) || lr == -ENOMEM) {
			*e = le;
			r = lr;
			break;
		}
		if (!first) {
			first = lr;
			first_e = le;
		}
		left[nleft++] = le;
	}
	if (r == 0 && k == 0) {
		*e = first_e;
		r = first;
	}
	for (size_t i = 0; r == 0 && i < nleft; i++)
		stella_log(LOG_NOTICE, "%s", left[i].msg);
	if (r == 0)
		r = remote_open(eps, k, &ro, out, e);
	else
		for (size_t i = 0; i < k; i++)
			if (owned[i] && eps[i].auth)
				eps[i].auth->free(eps[i].auth_ctx);
	for (size_t i = 0; i < k; i++)
		if (owned[i])
			oci_endpoint_release(&eps[i]);
	return r;
}

/* follow=: the validator is the manifest digest the tag names now. */
static int oci_probe(const char *source, const struct remote_opts *o, const char *validator,
		     char out[256], struct stella_err *e)
{
	struct remote_opts ro = oci_opts(o);
	return oci_location_probe(source, &ro, validator, out, e);
}

static int http_open(const char *source, const char *const *mirrors, size_t n,
		     const struct remote_opts *o, struct bytes **out, struct stella_err *e)
{
	if (n + 1 > REMOTE_MAX_ENDPOINTS)
		return stella_fail(e, -EINVAL, "%s: at most %d mirrors", shown(source), REMOTE_MAX_ENDPOINTS - 1);
	struct remote_endpoint eps[REMOTE_MAX_ENDPOINTS] = { { 0 } };
	eps[0].url = eps[0].label = source;
	for (size_t i = 0; i < n; i++) {
		const char *why = location_mirror_refusal(source, mirrors[i]);
		if (why)
			return stella_fail(e, -EINVAL, "mirror %s: %s", shown(mirrors[i]), why);
		eps[i + 1].url = eps[i + 1].label = mirrors[i];
	}
	return remote_open(eps, n + 1, o, out, e);
}

int location_open(const char *source, const char *const *mirrors, size_t n,
		  const struct remote_opts *o, struct bytes **out, struct stella_err *e)
{
	if (is_http(source))
		return http_open(source, mirrors, n, o, out, e);
	if (is_oci(source))
		return oci_open(source, mirrors, n, o, out, e);
	if (n > 0)
		return stella_fail(e, -EINVAL, "%s: mirrors are for a kit on a web server or registry, not a local file",
				   source);
	return bytes_open_path(source, out, e);
}

int location_probe(const char *source, const struct remote_opts *o, const char *validator,
		   char out[256], struct stella_err *e)
{
	if (is_http(source))
		return remote_probe(source, o, validator, out, e);
	if (is_oci(source))
		return oci_probe(source, o, validator, out, e);
	return stella_fail(e, -EINVAL, "%s: follow= needs an http://, https:// or oci:// location", shown(source));
}
