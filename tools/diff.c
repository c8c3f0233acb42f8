#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "kitverify.h"
#include "path.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " diff OLD_KIT NEW_KIT\n"
	"\n"
	"Compare two kits' manifests.  One line per artifact that differs:\n"
	"  + NAME   added in NEW_KIT\n"
	"  - NAME   removed\n"
	"  ~ NAME   changed: content, size, mode, type or symlink target (details follow)\n"
	"then a summary line.  Signatures and content are not checked (use verify).\n";

static void describe_change(const struct artifact *o, const struct artifact *n)
{
	char buf[256] = "";
	size_t len = 0;
#define ADD(...) len += (size_t)snprintf(buf + len, sizeof(buf) - len, __VA_ARGS__)
	if (o->type != n->type) {
		ADD(" type %s -> %s", artifact_type_name(o->type), artifact_type_name(n->type));
	} else if (o->type == ARTIFACT_SYMLINK) {
		ADD(" target %.80s -> %.80s", o->target, n->target);
	} else {
		if (o->type == ARTIFACT_FILE && o->size != n->size)
			ADD(" size %llu -> %llu", (unsigned long long)o->size, (unsigned long long)n->size);
		else if (o->type == ARTIFACT_FILE && memcmp(o->sha256, n->sha256, 32))
			ADD(" content");
		if (o->mode != n->mode && len < sizeof(buf))
			ADD(" mode %04o -> %04o", o->mode, n->mode);
	}
#undef ADD
	printf("~ %s (%s)\n", n->name, buf + 1);
}

static bool same(const struct artifact *o, const struct artifact *n)
{
	if (o->type != n->type || (o->type != ARTIFACT_SYMLINK && o->mode != n->mode))
		return false;
	if (o->type == ARTIFACT_FILE)
		return o->size == n->size && !memcmp(o->sha256, n->sha256, 32);
	if (o->type == ARTIFACT_SYMLINK)
		return !strcmp(o->target, n->target);
	return true;
}

int cmd_diff(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(help, stdout);
			return 0;
		}
		return usage_error("diff", "unknown option '%s'", argv[optind - 1]);
	}
	if (argc - optind != 2)
		return usage_error("diff", "expected OLD_KIT and NEW_KIT");
	struct stella_err e = { 0 };
	struct kitverify_opts o = { 0 };
	struct kitverify_result a, b;
	int r = kit_verify(argv[optind], &o, &a, &e);
	if (r < 0)
		return report(&e, r);
	if ((r = kit_verify(argv[optind + 1], &o, &b, &e)) < 0) {
		kitverify_result_free(&a);
		return report(&e, r);
	}
	const struct manifest *x = a.manifest, *y = b.manifest;
	size_t i = 0, j = 0, added = 0, removed = 0, changed = 0;
	/* Both artifact lists are sorted by name: one merge walk. */
	while (i < x->nartifacts || j < y->nartifacts) {
		int cmp = i == x->nartifacts ? 1 : j == y->nartifacts ? -1 :
			  path_cmp(x->artifacts[i].name, y->artifacts[j].name);
		if (cmp < 0) {
			printf("- %s\n", x->artifacts[i++].name);
			removed++;
		} else if (cmp > 0) {
			printf("+ %s\n", y->artifacts[j++].name);
			added++;
		} else {
			if (!same(&x->artifacts[i], &y->artifacts[j])) {
				describe_change(&x->artifacts[i], &y->artifacts[j]);
				changed++;
			}
			i++;
			j++;
		}
	}
	printf("%s %s -> %s %s: %zu added, %zu removed, %zu changed\n", x->kit_id, x->version, y->kit_id,
	       y->version, added, removed, changed);
	kitverify_result_free(&a);
	kitverify_result_free(&b);
	return 0;
}
