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
	"  ~ NAME   changed: content, size, mode, type or symlink target\n"
	"and nothing for unchanged ones.  Signatures and content are not checked\n"
	"(use verify).\n";

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
	size_t i = 0, j = 0;
	/* Both artifact lists are sorted by name: one merge walk. */
	while (i < x->nartifacts || j < y->nartifacts) {
		int cmp = i == x->nartifacts ? 1 : j == y->nartifacts ? -1 :
			  path_cmp(x->artifacts[i].name, y->artifacts[j].name);
		if (cmp < 0) {
			printf("- %s\n", text_name(x->artifacts[i++].name));
		} else if (cmp > 0) {
			printf("+ %s\n", text_name(y->artifacts[j++].name));
		} else {
			if (!same(&x->artifacts[i], &y->artifacts[j]))
				printf("~ %s\n", text_name(y->artifacts[j].name));
			i++;
			j++;
		}
	}
	kitverify_result_free(&a);
	kitverify_result_free(&b);
	return 0;
}
