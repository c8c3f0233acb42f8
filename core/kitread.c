#include "kitread.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "path.h"
#include "util.h"

#define READ_BLOCK (1u << 20)

struct kitread {
	struct source *src;
	bool own_src;
	struct archive *a;
	uint8_t *buf;              /* our read buffer, handed to libarchive */
	struct stella_err src_err; /* the source's own failure, if any */
	int src_rc;
	bool eof;
	uint64_t consumed;         /* tar-stream bytes handed to libarchive */
	uint64_t limit;            /* the most the kit may hold (kitread_set_limit) */
};

/* A stream longer than the limit is refused before it is expanded further:
 * a compressed kit could otherwise decompress to terabytes of zero blocks
 * that tar counts as padding (a decompression bomb). */
static int over_limit(struct kitread *kr, struct archive *a, uint64_t more)
{
	if (!kr->limit || kr->consumed + more <= kr->limit)
		return 0;
	kr->src_rc = stella_fail(&kr->src_err, -EBADMSG,
				 "%s: the tar stream goes on past %llu bytes, more than its manifest accounts for (padding or a decompression bomb)",
				 source_path(kr->src), (unsigned long long)kr->limit);
	archive_set_error(a, EILSEQ, "%s", kr->src_err.msg);
	return -1;
}

/* The tar header checksum (POSIX: the unsigned sum of the header's bytes,
 * its checksum field counted as blanks; some old writers summed signed
 * bytes, which libarchive accepts too). */
static bool tar_header_ok(const uint8_t *h)
{
	uint64_t want = 0;
	size_t i = 148;
	while (i < 156 && h[i] == ' ')
		i++;
	if (i == 156 || h[i] < '0' || h[i] > '7')
		return false;
	for (; i < 156 && h[i] >= '0' && h[i] <= '7'; i++)
		want = want * 8 + (uint64_t)(h[i] - '0');
	int64_t usum = 0, ssum = 0;
	for (i = 0; i < 512; i++) {
		uint8_t c = i >= 148 && i < 156 ? ' ' : h[i];
		usum += c;
		ssum += (int8_t)c;
	}
	return (int64_t)want == usum || (int64_t)want == ssum;
}

/* The stream's first block decides at once what no later byte can mend:
 * zeros (the end-of-archive marker, or no archive at all) mean there is no
 * manifest, and anything but a tar header means no tar.  Without this,
 * libarchive, told to read past end markers, would read a sparse file of
 * zeros to its end (terabytes) before saying so, holding the daemon's
 * command lock all the while.  A compressed kit's decoded head likewise. */
static int check_first_block(struct kitread *kr, struct archive *a, const uint8_t *b, size_t n)
{
	if (n < 512)
		return 0; /* shorter than a block: libarchive says truncated */
	bool zero = true;
	for (size_t i = 0; i < 512 && zero; i++)
		zero = b[i] == 0;
	if (zero)
		kr->src_rc = stella_fail(&kr->src_err, -EBADMSG,
					 "%s: not a kit archive: the tar stream starts with a block of zeros (an end-of-archive marker), so it holds no manifest",
					 source_path(kr->src));
	else if (!tar_header_ok(b))
		kr->src_rc = stella_fail(&kr->src_err, -EBADMSG,
					 "%s: not a kit archive: its first 512 bytes are not a tar header (bad checksum)",
					 source_path(kr->src));
	else
		return 0;
	archive_set_error(a, EILSEQ, "%s", kr->src_err.msg);
	return -1;
}

static ssize_t read_cb(struct archive *a, void *data, const void **out)
{
	struct kitread *kr = data;
	ssize_t n = source_stream_read(kr->src, kr->buf, READ_BLOCK, &kr->src_err);
	if (n < 0) {
		kr->src_rc = (int)n;
		archive_set_error(a, EILSEQ, "%s", stella_err_text(&kr->src_err, (int)n));
		return -1;
	}
	if (kr->consumed == 0 && check_first_block(kr, a, kr->buf, (size_t)n) < 0)
		return -1;
	if (over_limit(kr, a, (uint64_t)n) < 0)
		return -1;
	kr->consumed += (uint64_t)n;
	*out = kr->buf;
	return n;
}

void kitread_set_limit(struct kitread *kr, uint64_t max)
{
	kr->limit = max;
}

/* libarchive's messages carry no location; ours say which kit. */
static int archive_fail(struct kitread *kr, const char *what, struct stella_err *e)
{
	/* A decompression or I/O failure underneath says it best itself. */
	if (kr->src_rc)
		return stella_fail(e, kr->src_rc, "%s", stella_err_text(&kr->src_err, kr->src_rc));
	const char *msg = archive_error_string(kr->a);
	int err = archive_errno(kr->a);
	if (err == ENOMEM)
		return stella_fail(e, -ENOMEM, "%s: out of memory", source_path(kr->src));
	/* I/O errors from the medium are runtime failures, not a bad kit. */
	if (err == EIO || err == ENXIO || err == ENODEV)
		return stella_fail(e, -err, "%s: %s: %s", source_path(kr->src), what, msg ? msg : strerror(err));
	char low[256];
	snprintf(low, sizeof(low), "%s", msg ? msg : "unreadable archive");
	bool trunc = strcasestr(low, "truncat") || strcasestr(low, "premature") ||
		     strcasestr(low, "unexpected end");
	return stella_fail(e, -EBADMSG, "%s: %s: %s%s", source_path(kr->src), what, trunc ? "truncated archive: " : "",
			   low);
}

static la_int64_t skip_cb(struct archive *a, void *data, la_int64_t request)
{
	struct kitread *kr = data;
	if (over_limit(kr, a, (uint64_t)request) < 0)
		return ARCHIVE_FATAL;
	int64_t n = source_stream_skip(kr->src, (uint64_t)request, &kr->src_err);
	if (n < 0) {
		kr->src_rc = (int)n;
		archive_set_error(a, EILSEQ, "%s", stella_err_text(&kr->src_err, (int)n));
		return ARCHIVE_FATAL;
	}
	kr->consumed += (uint64_t)n;
	return n;
}

static int open_archive(struct kitread *kr, struct stella_err *e)
{
	if (!(kr->buf = malloc(READ_BLOCK)) || !(kr->a = archive_read_new()))
		return -ENOMEM;
	archive_read_support_format_tar(kr->a);
	/* Without this, libarchive stops at the first end-of-archive marker and
	 * never looks at what follows; with it, anything but zero padding after
	 * the end shows up as a header error or an extra member, both refused. */
	archive_read_set_format_option(kr->a, "tar", "read_concatenated_archives", "1");
	archive_read_set_read_callback(kr->a, read_cb);
	archive_read_set_skip_callback(kr->a, skip_cb);
	archive_read_set_callback_data(kr->a, kr);
	if (archive_read_open1(kr->a) != ARCHIVE_OK)
		return archive_fail(kr, "not a kit archive", e);
	return 0;
}

int kitread_open_source(struct source *src, struct kitread **out, struct stella_err *e)
{
	struct kitread *kr = calloc(1, sizeof(*kr));
	if (!kr)
		return -ENOMEM;
	kr->src = src;
	int r = open_archive(kr, e);
	if (r < 0) {
		kitread_close(kr);
		return r;
	}
	*out = kr;
	return 0;
}

int kitread_open(const char *path, struct kitread **out, struct stella_err *e)
{
	struct source *src;
	int r = source_open(path, &src, e);
	if (r < 0)
		return r;
	if ((r = kitread_open_source(src, out, e)) < 0) {
		source_close(src);
		return r;
	}
	(*out)->own_src = true;
	return 0;
}

void kitread_close(struct kitread *kr)
{
	if (!kr)
		return;
	if (kr->a)
		archive_read_free(kr->a);
	if (kr->own_src)
		source_close(kr->src);
	free(kr->buf);
	free(kr);
}

enum kit_compression kitread_compression(const struct kitread *kr) { return source_compression(kr->src); }
struct source *kitread_source(const struct kitread *kr) { return kr->src; }

int kitread_next(struct kitread *kr, struct kit_member *m, struct stella_err *e)
{
	if (kr->eof)
		return 0;
	struct archive_entry *ent;
	int r = archive_read_next_header(kr->a, &ent);
	if (r == ARCHIVE_EOF) {
		kr->eof = true;
		return 0;
	}
	if (r == ARCHIVE_FATAL || r == ARCHIVE_RETRY) {
		/* A header error after the end marker is data after the end. */
		const char *msg = archive_error_string(kr->a);
		if (msg && strstr(msg, "Damaged tar archive"))
			return stella_fail(e, -EBADMSG, "%s: trailing garbage or damaged header at byte %lld of the tar stream",
					   source_path(kr->src), (long long)archive_read_header_position(kr->a));
		return archive_fail(kr, "reading member header", e);
	}
	/* ARCHIVE_WARN: libarchive could not convert a name's charset, or saw a
	 * header field it ignores.  Both change what the name means. */
	if (r == ARCHIVE_WARN)
		return archive_fail(kr, "member header", e);

	const char *name = archive_entry_pathname(ent);
	if (!name)
		return stella_fail(e, -EBADMSG, "%s: member with an unreadable name", source_path(kr->src));
	m->name = name;
	/* GNU tar and python's tarfile write directories with a trailing '/'. */
	size_t len = strlen(name);
	const char *why = NULL;
	if (archive_entry_hardlink(ent))
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": hard link not allowed", source_path(kr->src), name);
	mode_t ft = archive_entry_filetype(ent);
	if (ft == AE_IFDIR && len > 1 && name[len - 1] == '/') {
		/* strip it in place: libarchive lets us rewrite the entry's name */
		char tmp[len];
		memcpy(tmp, name, len - 1);
		tmp[len - 1] = 0;
		archive_entry_copy_pathname(ent, tmp);
		m->name = name = archive_entry_pathname(ent);
		len--;
	}
	if (path_check(name, len, &why) < 0)
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": unsafe name: %s", source_path(kr->src), name, why);
	switch (ft) {
	case AE_IFREG: m->type = ARTIFACT_FILE; break;
	case AE_IFDIR: m->type = ARTIFACT_DIR; break;
	case AE_IFLNK: m->type = ARTIFACT_SYMLINK; break;
	default: {
		const char *t = ft == AE_IFCHR ? "character device" : ft == AE_IFBLK ? "block device" :
				ft == AE_IFIFO ? "fifo" : ft == AE_IFSOCK ? "socket" : "unknown";
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": unsupported type (%s)", source_path(kr->src), name, t);
	}
	}
	if (archive_entry_size(ent) < 0)
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": negative size", source_path(kr->src), name);
	m->size = m->type == ARTIFACT_FILE ? (uint64_t)archive_entry_size(ent) : 0;
	m->mode = archive_entry_perm(ent) & 07777;
	m->target = m->type == ARTIFACT_SYMLINK ? archive_entry_symlink(ent) : NULL;
	if (m->type == ARTIFACT_SYMLINK && !m->target)
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": symlink without target", source_path(kr->src), name);
	m->mtime = archive_entry_mtime(ent);
	m->data_offset = (uint64_t)archive_filter_bytes(kr->a, 0);
	return 1;
}

ssize_t kitread_data(struct kitread *kr, void *buf, size_t len, struct stella_err *e)
{
	la_ssize_t n = archive_read_data(kr->a, buf, len);
	if (n < 0)
		return archive_fail(kr, "reading member data", e);
	return n;
}

/* A large buffer about to be written whole: its pages faulted in at once,
 * in huge pages where the kernel has them, rather than one trap per 4 KiB
 * page as the copy first touches it.  On a virtual machine each trap is
 * dear: copying a 27 MB manifest cost ~200 ms of faults, ~6 ms this way
 * (a quarter of a 100,000-file first mount, docs/mount.md 2.2).  Hints
 * only: an older kernel refuses them and the copy faults as before. */
static void prefault(void *buf, size_t len)
{
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
	uintptr_t a = ((uintptr_t)buf + 4095) & ~(uintptr_t)4095, z = ((uintptr_t)buf + len) & ~(uintptr_t)4095;
	if (len < (2u << 20) || z <= a)
		return;
	(void)madvise((void *)a, z - a, MADV_HUGEPAGE);
	(void)madvise((void *)a, z - a, MADV_POPULATE_WRITE);
}

int kitread_slurp(struct kitread *kr, const struct kit_member *m, size_t max, char **out,
		  struct stella_err *e)
{
	if (m->size > max)
		return stella_fail(e, -EBADMSG, "%s: member \"%s\" too large (%llu bytes, limit %zu)", source_path(kr->src),
				   m->name, (unsigned long long)m->size, max);
	char *buf = malloc(m->size + 1);
	if (!buf)
		return -ENOMEM;
	prefault(buf, m->size);
	size_t got = 0;
	while (got < m->size) {
		ssize_t n = kitread_data(kr, buf + got, m->size - got, e);
		if (n <= 0) {
			free(buf);
			return n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: member \"%s\": truncated archive",
							  source_path(kr->src), m->name);
		}
		got += (size_t)n;
	}
	buf[got] = 0;
	*out = buf;
	return 0;
}
