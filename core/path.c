#include "path.h"

#include <errno.h>
#include <string.h>

#include "bounds.h"

int path_check(const char *name, size_t len, const char **why)
{
	const char *w = NULL;
	if (len == 0)
		w = "empty name";
	else if (memchr(name, 0, len))
		w = "NUL byte in name";
	else if (len > STELLA_NAME_MAX)
		w = "name too long";
	else if (name[0] == '/')
		w = "absolute name";
	if (w)
		goto bad;
	unsigned depth = 0;
	for (size_t i = 0; i <= len;) {
		size_t j = i;
		while (j < len && name[j] != '/')
			j++;
		size_t n = j - i;
		if (n == 0)
			w = "empty component";
		else if (n == 1 && name[i] == '.')
			w = "'.' component";
		else if (n == 2 && name[i] == '.' && name[i + 1] == '.')
			w = "'..' component";
		else if (n > STELLA_COMPONENT_MAX)
			w = "component longer than 255 bytes";
		else if (++depth > STELLA_DEPTH_MAX)
			w = "too many components";
		if (w)
			goto bad;
		i = j + 1;
	}
	return 0;
bad:
	if (why)
		*why = w;
	return -EBADMSG;
}

size_t path_parent_len(const char *name)
{
	const char *s = strrchr(name, '/');
	return s ? (size_t)(s - name) : 0;
}

int path_cmp(const char *a, const char *b)
{
	return strcmp(a, b); /* strcmp compares as unsigned char: bytewise */
}
