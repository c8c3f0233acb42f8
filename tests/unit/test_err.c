/* err.c: the first failure's message wins, strerror is appended by the
 * _errno form, messages are one printable line, hints are added only for
 * their errno, exit codes follow the table in err.h, a NULL err is allowed. */
#include <stdlib.h>

#include "check.h"
#include "err.h"

int main(void)
{
	struct stella_err e = { 0 };
	CHECK(stella_fail(&e, -EBADMSG, "kit %s: bad", "a") == -EBADMSG);
	CHECK(stella_fail(&e, -EIO, "outer") == -EIO); /* returns rc, keeps the first */
	CHECK(e.code == -EBADMSG);
	CHECK_STR(e.msg, "kit a: bad");
	CHECK(stella_fail(NULL, -EIO, "nobody listens") == -EIO);

	struct stella_err f = { 0 };
	CHECK(stella_fail_errno(&f, -ENOENT, "%s", "/x") == -ENOENT);
	CHECK_STR(f.msg, "/x: No such file or directory");

	struct stella_err g = { 0 };
	stella_fail(&g, -EINVAL, "two\nlines\tand a \x01 bell");
	CHECK_STR(g.msg, "two lines and a ? bell");

	struct stella_err h = { 0 };
	stella_fail(&h, -EKEYEXPIRED, "expired");
	stella_err_hint(&h, -EKEYEXPIRED, -EBADMSG, "not this one");
	CHECK_STR(h.msg, "expired");
	stella_err_hint(&h, -EKEYEXPIRED, -EKEYEXPIRED, "--allow-expired");
	CHECK_STR(h.msg, "expired (--allow-expired)");

	CHECK(stella_exit_code(0) == 0);
	CHECK(stella_exit_code(-EINVAL) == 2);
	CHECK(stella_exit_code(-EBADMSG) == 3);
	CHECK(stella_exit_code(-EUCLEAN) == 4);
	CHECK(stella_exit_code(-EKEYREJECTED) == 5);
	CHECK(stella_exit_code(-EKEYEXPIRED) == 6);
	CHECK(stella_exit_code(-ESTALE) == 7);
	CHECK(stella_exit_code(-EIO) == 1);
	CHECK(stella_exit_code(-ENOMEM) == 1);

	struct stella_err none = { 0 };
	CHECK_STR(stella_err_text(&none, -EIO), "Input/output error");
	CHECK_STR(stella_err_text(&e, -EIO), "kit a: bad");
	CHECK_STR(stella_err_text(NULL, -ENOENT), "No such file or directory");
	return CHECK_DONE();
}
