/* The grammar is the distribution spec's (and docker's reference package's):
 *   registry   := domain-component ('.' domain-component)* [':' port]
 *               | '[' ipv6 ']' [':' port]
 *   repository := path-component ('/' path-component)*
 *   path-component := [a-z0-9]+ (separator [a-z0-9]+)*
 *   separator  := '.' | '_' | '__' | '-'+
 *   tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
 *   digest     := 'sha256:' 64 lowercase hex
 * Anything else is refused here rather than sent to a registry: a name is
 * also a URL path, and "..", "%2f" or a '?' must never get that far. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "ociref.h"

bool ociref_is_oci(const char *s)
{
	return s && !strncasecmp(s, "oci://", 6);
}

static bool lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
static bool alnum(char c) { return isascii((unsigned char)c) && isalnum((unsigned char)c); }

/* One domain component: alphanumerics with inner dashes. */
static bool domain_component(const char *s, size_t n)
{
	if (n == 0 || n > 63 || !alnum(s[0]) || !alnum(s[n - 1]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!alnum(s[i]) && s[i] != '-')
			return false;
	return true;
}

static bool parse_port(const char *s, size_t n, unsigned *port)
{
	if (n == 0 || n > 5)
		return false;
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		return false;
	*port = v;
	return true;
}

bool oci_host_is_loopback(const char *host)
{
	if (!strcasecmp(host, "localhost"))
		return true;
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

static int parse_registry(const char *s, size_t n, struct oci_ref *r, struct stella_err *e)
{
	const char *hs = s, *colon = NULL;
	size_t hn;
	if (n >= sizeof(r->registry))
		return stella_fail(e, -EINVAL, "registry name too long");
	if (n && s[0] == '[') {
		const char *close = memchr(s, ']', n);
		if (!close)
			return stella_fail(e, -EINVAL, "registry '%.*s': unterminated '['", (int)n, s);
		hs = s + 1;
		hn = (size_t)(close - hs);
		if (close + 1 < s + n) {
			if (close[1] != ':')
				return stella_fail(e, -EINVAL, "registry '%.*s': junk after ']'", (int)n, s);
			colon = close + 1;
		}
		char tmp[64];
		struct in6_addr a6;
		if (hn == 0 || hn >= sizeof(tmp))
			return stella_fail(e, -EINVAL, "registry '%.*s': not an IPv6 address", (int)n, s);
		memcpy(tmp, hs, hn);
		tmp[hn] = '\0';
		if (inet_pton(AF_INET6, tmp, &a6) != 1)
			return stella_fail(e, -EINVAL, "registry '%.*s': not an IPv6 address", (int)n, s);
	} else {
		colon = memchr(s, ':', n);
		hn = colon ? (size_t)(colon - s) : n;
		if (hn == 0)
			return stella_fail(e, -EINVAL, "missing registry host");
		for (size_t i = 0, start = 0; i <= hn; i++) {
			if (i == hn || s[i] == '.') {
				if (!domain_component(s + start, i - start))
					return stella_fail(e, -EINVAL, "registry '%.*s': not a host name", (int)n, s);
				start = i + 1;
			}
		}
	}
	if (hn >= sizeof(r->host))  /* the whole may fit registry[] and the host not host[] */
		return stella_fail(e, -EINVAL, "registry '%.*s': host name too long", (int)n, s);
	r->port = 0;
	if (colon && !parse_port(colon + 1, (size_t)(s + n - colon - 1), &r->port))
		return stella_fail(e, -EINVAL, "registry '%.*s': bad port", (int)n, s);
	memcpy(r->registry, s, n);
	r->registry[n] = '\0';
	memcpy(r->host, hs, hn);
	r->host[hn] = '\0';
	r->loopback = oci_host_is_loopback(r->host);
	return 0;
}

/* One path component: [a-z0-9]+ with single '.', '_', "__" or runs of
 * '-' between alphanumerics. */
static bool path_component(const char *s, size_t n)
{
	if (n == 0 || !lower_alnum(s[0]) || !lower_alnum(s[n - 1]))
		return false;
	for (size_t i = 0; i < n;) {
		if (lower_alnum(s[i])) {
			i++;
			continue;
		}
		size_t j = i;
		if (s[i] == '.')
			j = i + 1;
		else if (s[i] == '_')
			j = (i + 1 < n && s[i + 1] == '_') ? i + 2 : i + 1;
		else if (s[i] == '-')
			while (j < n && s[j] == '-')
				j++;
		else
			return false;
		if (j >= n || !lower_alnum(s[j]))
			return false;
		i = j;
	}
	return true;
}

static int parse_repo(const char *s, size_t n, struct oci_ref *r, struct stella_err *e)
{
	if (n == 0)
		return stella_fail(e, -EINVAL, "missing repository");
	if (n > OCI_REPO_MAX)
		return stella_fail(e, -EINVAL, "repository longer than %d characters", OCI_REPO_MAX);
	for (size_t i = 0, start = 0; i <= n; i++) {
		if (i == n || s[i] == '/') {
			if (!path_component(s + start, i - start))
				return stella_fail(e, -EINVAL,
						   "repository '%.*s': components are lowercase letters and digits "
						   "with '.', '_', '__' or '-' between them", (int)n, s);
			start = i + 1;
		}
	}
	memcpy(r->repo, s, n);
	r->repo[n] = '\0';
	return 0;
}

static int parse_tag(const char *s, struct oci_ref *r, struct stella_err *e)
{
	size_t n = strlen(s);
	bool ok = n >= 1 && n <= OCI_TAG_MAX && (alnum(s[0]) || s[0] == '_');
	for (size_t i = 1; ok && i < n; i++)
		ok = alnum(s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-';
	if (!ok)
		return stella_fail(e, -EINVAL, "tag '%s': 1 to %d of A-Z a-z 0-9 _ . - (not starting with . or -)",
				   s, OCI_TAG_MAX);
	memcpy(r->tag, s, n + 1);
	return 0;
}

static int parse_digest(const char *s, struct oci_ref *r, struct stella_err *e)
{
	if (strncmp(s, "sha256:", 7))
		return stella_fail(e, -EINVAL, "digest '%s': only sha256: digests are supported", s);
	bool ok = strlen(s + 7) == 64;
	for (size_t i = 7; ok && s[i]; i++)
		ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
	if (!ok)
		return stella_fail(e, -EINVAL, "digest '%s': sha256: and 64 lowercase hex digits", s);
	memcpy(r->digest, s, 7 + 64 + 1);
	return 0;
}

int ociref_parse(const char *s, struct oci_ref *r, struct stella_err *e)
{
	memset(r, 0, sizeof(*r));
	if (!ociref_is_oci(s))
		return stella_fail(e, -EINVAL, "not an oci:// reference");
	const char *p = s + 6, *slash = strchr(p, '/');
	if (!slash)
		return stella_fail(e, -EINVAL, "%s: expected oci://REGISTRY/REPOSITORY:TAG or @sha256:DIGEST", s);
	int rc = parse_registry(p, (size_t)(slash - p), r, e);
	if (rc < 0)
		return rc;
	const char *name = slash + 1, *at = strchr(name, '@');
	/* The tag's ':' is the last one after the last '/' (none may be in the
	 * repository itself). */
	const char *end = at ? at : name + strlen(name);
	size_t lastslash = 0, n = (size_t)(end - name);
	for (size_t i = 0; i < n; i++)
		if (name[i] == '/')
			lastslash = i;
	const char *colon = memchr(name + lastslash, ':', n - lastslash);
	if (colon && at)
		return stella_fail(e, -EINVAL, "%s: give a tag or a digest, not both", s);
	if (!colon && !at)
		return stella_fail(e, -EINVAL, "%s: a :TAG or @sha256:DIGEST is required", s);
	const char *repo_end = colon ? colon : at;
	if ((rc = parse_repo(name, (size_t)(repo_end - name), r, e)) < 0)
		return rc;
	return colon ? parse_tag(colon + 1, r, e) : parse_digest(at + 1, r, e);
}
