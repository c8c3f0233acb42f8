#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#include "common.h"
#include "kitverify.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " inspect [--json] KIT\n"
	"\n"
	"Show a kit's identity, components and artifacts from its manifest.  The\n"
	"archive's first members and the manifest are checked for form; signatures\n"
	"and content are not (that is 'stellakit verify').\n"
	"\n"
	"  --json       one JSON object: the manifest's fields plus manifestSha256,\n"
	"               signatures, compression and merkle\n"
	"  -h, --help   show this help\n";

static void gs(yajl_gen g, const char *s)
{
	yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static int print_json(const struct kitverify_result *r)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g)
		return -ENOMEM;
	yajl_gen_config(g, yajl_gen_beautify, 1);
	yajl_gen_config(g, yajl_gen_indent_string, "  ");
	char hex[65];
	yajl_gen_map_open(g);
	int rc = manifest_gen_fields(g, r->manifest);
	hex_encode(r->manifest_sha256, 32, hex);
	gs(g, "manifestSha256"); gs(g, hex);
	gs(g, "signatures"); yajl_gen_integer(g, r->sig_lines);
	gs(g, "compression"); gs(g, kit_compression_name(r->compression));
	gs(g, "merkle"); yajl_gen_bool(g, r->has_merkle);
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	if (rc == 0 && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
		printf("%.*s\n", (int)len, buf);
	else
		rc = -ENOMEM;
	yajl_gen_free(g);
	return rc;
}

static void print_text(const char *path, const struct kitverify_result *r)
{
	const struct manifest *m = r->manifest;
	char t1[32], t2[32], hex[65];
	time_format(m->created_at, t1);
	time_format(m->expires_at, t2);
	hex_encode(r->manifest_sha256, 32, hex);
	uint64_t files = 0, bytes = 0;
	for (size_t i = 0; i < m->nartifacts; i++)
		if (m->artifacts[i].type == ARTIFACT_FILE) {
			files++;
			bytes += m->artifacts[i].size;
		}
	printf("Kit:          %s\n", text_name(path));
	printf("kitId:        %s\n", m->kit_id);
	printf("version:      %s\n", m->version);
	printf("sequence:     %lld\n", (long long)m->sequence);
	printf("channel:      %s\n", m->channel);
	printf("createdAt:    %s\n", t1);
	printf("expiresAt:    %s\n", t2);
	if (m->has_base) {
		char b[65];
		hex_encode(m->base_manifest_sha256, 32, b);
		printf("base:         %s (manifest sha256 %s)\n", m->base_version, b);
	}
	printf("manifest:     sha256 %s\n", hex);
	printf("signatures:   %u line(s)\n", r->sig_lines);
	printf("compression:  %s\n", kit_compression_name(r->compression));
	printf("merkle.bin:   %s\n", r->has_merkle ? "yes" : "no");
	printf("artifacts:    %zu (%llu files, %llu bytes)\n", m->nartifacts, (unsigned long long)files,
	       (unsigned long long)bytes);
	if (m->ncomponents)
		printf("\nComponents:\n");
	for (size_t i = 0; i < m->ncomponents; i++) {
		const struct component *c = &m->components[i];
		char t[32];
		time_format(c->captured_at, t);
		printf("  %-28s %-24s captured %s  warn %lldd  max %lldd", text_name(c->name), text_name(c->path), t,
		       (long long)c->warn_age_days, (long long)c->max_age_days);
		if (c->records >= 0)
			printf("  %lld records", (long long)c->records);
		printf("\n");
	}
	printf("\nArtifacts:\n");
	for (size_t i = 0; i < m->nartifacts; i++) {
		const struct artifact *a = &m->artifacts[i];
		switch (a->type) {
		case ARTIFACT_FILE:
			hex_encode(a->sha256, 32, hex);
			printf("  %04o %12llu  %s  %s\n", a->mode, (unsigned long long)a->size, hex, text_name(a->name));
			break;
		case ARTIFACT_DIR:
			printf("  %04o %12s  %-64s  %s/\n", a->mode, "dir", "", text_name(a->name));
			break;
		case ARTIFACT_SYMLINK:
			printf("  %4s %12s  %-64s  %s -> %s\n", "", "symlink", "", text_name(a->name), text_name(a->target));
			break;
		}
	}
}

int cmd_inspect(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	bool json = false;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'h': fputs(help, stdout); return 0;
		default: return usage_error("inspect", "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind != 1)
		return usage_error("inspect", "expected exactly one KIT");
	struct stella_err e = { 0 };
	struct kitverify_opts o = { 0 };
	struct kitverify_result res;
	int r = kit_verify(argv[optind], &o, &res, &e);
	if (r < 0)
		return report(&e, r);
	if (json)
		r = print_json(&res);
	else
		print_text(argv[optind], &res);
	kitverify_result_free(&res);
	return r < 0 ? report(&e, r) : 0;
}
