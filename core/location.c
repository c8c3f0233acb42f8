/* Where a kit is (location.h): a local path, an http(s):// URL, an oci://
 * reference. */
#include "location.h"

#include <string.h>
#include <strings.h>

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

/* oci:// references: resolved to blob endpoints by core/oci.c (the
 * registry work); until that lands, refused in one line. */
static int oci_open(const char *source, const char *const *mirrors, size_t n,
		    const struct remote_opts *o, struct bytes **out, struct stella_err *e)
{
	(void)mirrors; (void)n; (void)o; (void)out;
	return stella_fail(e, -EPROTONOSUPPORT, "%s: oci:// references are not supported by this build", source);
}

static int oci_probe(const char *source, const struct remote_opts *o, const char *validator,
		     char out[256], struct stella_err *e)
{
	(void)o; (void)validator; (void)out;
	return stella_fail(e, -EPROTONOSUPPORT, "%s: oci:// references are not supported by this build", source);
}

static int http_open(const char *source, const char *const *mirrors, size_t n,
		     const struct remote_opts *o, struct bytes **out, struct stella_err *e)
{
	if (n + 1 > REMOTE_MAX_ENDPOINTS)
		return stella_fail(e, -EINVAL, "%s: at most %d mirrors", source, REMOTE_MAX_ENDPOINTS - 1);
	struct remote_endpoint eps[REMOTE_MAX_ENDPOINTS] = { { 0 } };
	eps[0].url = eps[0].label = source;
	for (size_t i = 0; i < n; i++) {
		if (!is_http(mirrors[i]))
			return stella_fail(e, -EINVAL, "mirror %s: not an http:// or https:// URL", mirrors[i]);
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
	return stella_fail(e, -EINVAL, "%s: follow= needs an http://, https:// or oci:// location", source);
}
