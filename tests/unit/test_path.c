/* The name rules of docs/kit-format.md, section 3. */
#include "check.h"
#include "path.h"

static int ok(const char *s) { return path_check(s, strlen(s), NULL) == 0; }

int main(void)
{
	CHECK(ok("a"));
	CHECK(ok("feeds/vuln-db/vuln.db"));
	CHECK(ok("données/αβγ.json"));
	CHECK(ok(".hidden/..x/x.."));
	CHECK(!ok(""));
	CHECK(!ok("/abs"));
	CHECK(!ok("a//b"));
	CHECK(!ok("a/"));
	CHECK(!ok("./a"));
	CHECK(!ok("a/./b"));
	CHECK(!ok("../x"));
	CHECK(!ok("a/../b"));
	CHECK(path_check("a\0b", 3, NULL) < 0);
	char longc[300];
	memset(longc, 'x', 255);
	longc[255] = 0;
	CHECK(ok(longc));
	memset(longc, 'x', 256);
	longc[256] = 0;
	CHECK(!ok(longc));
	const char *why = NULL;
	CHECK(path_check("a/../b", 6, &why) < 0 && why && strstr(why, ".."));
	CHECK(path_parent_len("a/b/c") == 3 && path_parent_len("a") == 0);
	CHECK(path_cmp("a.txt", "a/b") < 0); /* bytewise: '.' < '/' */
	return CHECK_DONE();
}
