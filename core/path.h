/* Artifact names: the rules of docs/kit-format.md, section 3, in one
 * place, for the manifest, the kit reader and the packer alike. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* 0 when name is a safe relative name; otherwise -EBADMSG and *why says what
 * is wrong ("absolute", "empty component", ...). */
int path_check(const char *name, size_t len, const char **why);

/* Length of the parent part of name ("a/b/c" -> 3, "a" -> 0). */
size_t path_parent_len(const char *name);

/* Bytewise order of names, as kits sort them. */
int path_cmp(const char *a, const char *b);
