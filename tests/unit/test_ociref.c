/* oci:// references: the distribution spec's grammar, and nothing else. */
#include "check.h"
#include "ociref.h"

static int ok(const char *s)
{
	struct oci_ref r;
	return ociref_parse(s, &r, NULL) == 0;
}

int main(void)
{
	struct oci_ref r;
	struct stella_err e = { 0 };
	CHECK(ociref_parse("oci://registry.example:5000/stella/kits:2025.01", &r, &e) == 0);
	CHECK(!strcmp(r.registry, "registry.example:5000") && !strcmp(r.host, "registry.example"));
	CHECK(r.port == 5000 && !strcmp(r.repo, "stella/kits") && !strcmp(r.tag, "2025.01"));
	CHECK(!r.digest[0] && !r.loopback && !strcmp(ociref_reference(&r), "2025.01"));

	const char *d = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
	char buf[256];
	snprintf(buf, sizeof(buf), "OCI://127.0.0.1:5000/a/b-c/d__e/f.g@%s", d);
	CHECK(ociref_parse(buf, &r, NULL) == 0);
	CHECK(r.loopback && !strcmp(r.digest, d) && !r.tag[0] && !strcmp(r.repo, "a/b-c/d__e/f.g"));
	CHECK(ociref_parse("oci://[::1]:8443/kits:latest", &r, NULL) == 0);
	CHECK(r.loopback && !strcmp(r.host, "::1") && r.port == 8443 && !strcmp(r.registry, "[::1]:8443"));
	CHECK(ociref_parse("oci://localhost/kits:latest", &r, NULL) == 0 && r.loopback && r.port == 0);
	CHECK(ociref_parse("oci://127.9.9.9/kits:x", &r, NULL) == 0 && r.loopback);
	CHECK(ociref_parse("oci://128.0.0.1/kits:x", &r, NULL) == 0 && !r.loopback);
	CHECK(ok("oci://r/a--b:_t"));

	/* a host name that fits registry[] but not host[]: refused, not copied
	 * over the port (review finding: 261 characters parsed with a port of
	 * host bytes) */
	char longhost[300] = "oci://";
	for (int i = 0; i < 4; i++) {   /* four components of 63, the most one may have */
		if (i)
			strcat(longhost, ".");
		strcat(longhost, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	}
	strcat(longhost, ".bb/a:t");
	CHECK(strlen(longhost) - strlen("oci://") - strlen("/a:t") > 256);
	CHECK(!ok(longhost));
	/* loopback by value, never by the spelling of a name */
	CHECK(oci_host_is_loopback("127.0.0.1") && oci_host_is_loopback("::1") && oci_host_is_loopback("localhost"));
	CHECK(!oci_host_is_loopback("127.evil.example") && !oci_host_is_loopback("localhost.evil.example"));

	CHECK(!ok("http://r/a:t"));
	CHECK(!ok("oci://r"));
	CHECK(!ok("oci://r/a"));                 /* no tag, no digest */
	CHECK(!ok("oci:///a:t"));
	CHECK(!ok("oci://r:0/a:t"));
	CHECK(!ok("oci://r:65536/a:t"));
	CHECK(!ok("oci://r:/a:t"));
	CHECK(!ok("oci://-r/a:t"));
	CHECK(!ok("oci://r_x/a:t"));
	CHECK(!ok("oci://[::1/a:t"));
	CHECK(!ok("oci://[zz]/a:t"));
	CHECK(!ok("oci://r/A:t"));               /* uppercase repository */
	CHECK(!ok("oci://r/a/../b:t"));
	CHECK(!ok("oci://r/a//b:t"));
	CHECK(!ok("oci://r/a/:t"));
	CHECK(!ok("oci://r/a.:t"));
	CHECK(!ok("oci://r/a___b:t"));
	CHECK(!ok("oci://r/a%2fb:t"));
	CHECK(!ok("oci://r/a:"));
	CHECK(!ok("oci://r/a:.t"));
	CHECK(!ok("oci://r/a:t?x"));
	CHECK(!ok("oci://r/a:t/b"));
	CHECK(!ok("oci://r/a@sha256:abc"));
	CHECK(!ok("oci://r/a@sha512:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"));
	snprintf(buf, sizeof(buf), "oci://r/a:t@%s", d);
	CHECK(ociref_parse(buf, &r, &e) < 0 && strstr(e.msg, "not both"));
	snprintf(buf, sizeof(buf), "oci://r/a@%s", d);
	for (char *p = buf; *p; p++)
		if (*p == 'f')
			*p = 'F';
	CHECK(!ok(buf));                         /* uppercase hex */
	char tag[200] = "oci://r/a:";
	memset(tag + 10, 't', 129);
	tag[139] = 0;
	CHECK(!ok(tag));
	tag[138] = 0;
	CHECK(ok(tag));
	return CHECK_DONE();
}
