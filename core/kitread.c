#include "kitread.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "path.h"
#include "util.h"

#define READ_BLOCK (1u << 20)

struct kitread {
	char *path;
	int fd;
	uint64_t file_size;
	struct archive *a;
	uint8_t *buf;              /* our read buffer, handed to libarchive */
	enum kit_compression compression;
	bool eof;
};

const char *kit_compression_name(enum kit_compression c)
{
	switch (c) {
	case KIT_COMPRESS_GZIP: return "gzip";
	case KIT_COMPRESS_ZSTD: return "zstd";
	default: return "none";
	}
}

static ssize_t read_cb(struct archive *a, void *data, const void **out)
{
	struct kitread *kr = data;
	for (;;) {
		ssize_t n = read(kr->fd, kr->buf, READ_BLOCK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			archive_set_error(a, errno, "read: %s", strerror(errno));
		*out = kr->buf;
		return n;
	}
}

/* libarchive's messages carry no location; ours say which kit. */
static int archive_fail(struct kitread *kr, const char *what, struct stella_err *e)
{
	const char *msg = archive_error_string(kr->a);
	int err = archive_errno(kr->a);
	if (err == ENOMEM)
		return stella_fail(e, -ENOMEM, "%s: out of memory", kr->path);
	/* I/O errors from the medium are runtime failures, not a bad kit. */
	if (err == EIO || err == ENXIO || err == ENODEV)
		return stella_fail(e, -err, "%s: %s: %s", kr->path, what, msg ? msg : strerror(err));
	char low[256];
	snprintf(low, sizeof(low), "%s", msg ? msg : "unreadable archive");
	bool trunc = strcasestr(low, "truncat") || strcasestr(low, "premature") ||
		     strcasestr(low, "unexpected end");
	return stella_fail(e, -EBADMSG, "%s: %s: %s%s", kr->path, what, trunc ? "truncated archive: " : "",
			   low);
}

int kitread_open(const char *path, struct kitread **out, struct stella_err *e)
{
	struct kitread *kr = calloc(1, sizeof(*kr));
	int r;
	if (!kr)
		return -ENOMEM;
	kr->fd = -1;
	if (!(kr->path = strdup(path)) || !(kr->buf = malloc(READ_BLOCK))) {
		r = -ENOMEM;
		goto fail;
	}
	kr->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (kr->fd < 0) {
		r = stella_fail_errno(e, -errno, "%s", path);
		goto fail;
	}
	struct stat st;
	if (fstat(kr->fd, &st) < 0) {
		r = stella_fail_errno(e, -errno, "%s", path);
		goto fail;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		r = stella_fail(e, -EINVAL, "%s: not a kit file", path);
		goto fail;
	}
	kr->file_size = (uint64_t)st.st_size;
	posix_fadvise(kr->fd, 0, 0, POSIX_FADV_SEQUENTIAL);

	if (!(kr->a = archive_read_new())) {
		r = -ENOMEM;
		goto fail;
	}
	archive_read_support_filter_gzip(kr->a);
	archive_read_support_filter_zstd(kr->a);
	archive_read_support_format_tar(kr->a);
	/* Without this, libarchive stops at the first end-of-archive marker and
	 * never looks at what follows; with it, anything but zero padding after
	 * the end shows up as a header error or an extra member, both refused. */
	archive_read_set_format_option(kr->a, "tar", "read_concatenated_archives", "1");
	if (archive_read_open(kr->a, kr, NULL, read_cb, NULL) != ARCHIVE_OK) {
		r = archive_fail(kr, "not a kit archive", e);
		goto fail;
	}
	/* The filter is known once the first header has been read; see next(). */
	*out = kr;
	return 0;
fail:
	kitread_close(kr);
	return r;
}

void kitread_close(struct kitread *kr)
{
	if (!kr)
		return;
	if (kr->a)
		archive_read_free(kr->a);
	if (kr->fd >= 0)
		close(kr->fd);
	free(kr->buf);
	free(kr->path);
	free(kr);
}

const char *kitread_path(const struct kitread *kr) { return kr->path; }
enum kit_compression kitread_compression(const struct kitread *kr) { return kr->compression; }
uint64_t kitread_file_size(const struct kitread *kr) { return kr->file_size; }

static int check_end(struct kitread *kr, struct stella_err *e)
{
	/* For compressed kits the decompressor must have consumed the whole
	 * file: bytes after the compressed stream are trailing garbage too. */
	if (kr->compression != KIT_COMPRESS_NONE) {
		int64_t used = archive_filter_bytes(kr->a, -1);
		if (used >= 0 && (uint64_t)used < kr->file_size)
			return stella_fail(e, -EBADMSG, "%s: trailing garbage: %llu bytes after the end of the %s stream",
					   kr->path, (unsigned long long)(kr->file_size - (uint64_t)used),
					   kit_compression_name(kr->compression));
	}
	return 0;
}

int kitread_next(struct kitread *kr, struct kit_member *m, struct stella_err *e)
{
	if (kr->eof)
		return 0;
	struct archive_entry *ent;
	int r = archive_read_next_header(kr->a, &ent);
	if (r == ARCHIVE_EOF) {
		kr->eof = true;
		return check_end(kr, e);
	}
	if (r == ARCHIVE_FATAL || r == ARCHIVE_RETRY) {
		/* A header error after the end marker is data after the end. */
		const char *msg = archive_error_string(kr->a);
		if (msg && strstr(msg, "Damaged tar archive"))
			return stella_fail(e, -EBADMSG, "%s: trailing garbage or damaged header at byte %lld of the tar stream",
					   kr->path, (long long)archive_read_header_position(kr->a));
		return archive_fail(kr, "reading member header", e);
	}
	/* ARCHIVE_WARN: libarchive could not convert a name's charset, or saw a
	 * header field it ignores.  Both change what the name means. */
	if (r == ARCHIVE_WARN)
		return archive_fail(kr, "member header", e);

	switch (archive_filter_code(kr->a, 0)) {
	case ARCHIVE_FILTER_GZIP: kr->compression = KIT_COMPRESS_GZIP; break;
	case ARCHIVE_FILTER_ZSTD: kr->compression = KIT_COMPRESS_ZSTD; break;
	default: kr->compression = KIT_COMPRESS_NONE; break;
	}

	const char *name = archive_entry_pathname(ent);
	if (!name)
		return stella_fail(e, -EBADMSG, "%s: member with an unreadable name", kr->path);
	m->name = name;
	/* GNU tar and python's tarfile write directories with a trailing '/'. */
	size_t len = strlen(name);
	const char *why = NULL;
	if (archive_entry_hardlink(ent))
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": hard link not allowed", kr->path, name);
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
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": unsafe name: %s", kr->path, name, why);
	switch (ft) {
	case AE_IFREG: m->type = ARTIFACT_FILE; break;
	case AE_IFDIR: m->type = ARTIFACT_DIR; break;
	case AE_IFLNK: m->type = ARTIFACT_SYMLINK; break;
	default: {
		const char *t = ft == AE_IFCHR ? "character device" : ft == AE_IFBLK ? "block device" :
				ft == AE_IFIFO ? "fifo" : ft == AE_IFSOCK ? "socket" : "unknown";
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": unsupported type (%s)", kr->path, name, t);
	}
	}
	if (archive_entry_size(ent) < 0)
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": negative size", kr->path, name);
	m->size = m->type == ARTIFACT_FILE ? (uint64_t)archive_entry_size(ent) : 0;
	m->mode = archive_entry_perm(ent) & 07777;
	m->target = m->type == ARTIFACT_SYMLINK ? archive_entry_symlink(ent) : NULL;
	if (m->type == ARTIFACT_SYMLINK && !m->target)
		return stella_fail(e, -EBADMSG, "%s: member \"%.300s\": symlink without target", kr->path, name);
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

int kitread_slurp(struct kitread *kr, const struct kit_member *m, size_t max, char **out,
		  struct stella_err *e)
{
	if (m->size > max)
		return stella_fail(e, -EBADMSG, "%s: member \"%s\" too large (%llu bytes, limit %zu)", kr->path,
				   m->name, (unsigned long long)m->size, max);
	char *buf = malloc(m->size + 1);
	if (!buf)
		return -ENOMEM;
	size_t got = 0;
	while (got < m->size) {
		ssize_t n = kitread_data(kr, buf + got, m->size - got, e);
		if (n <= 0) {
			free(buf);
			return n < 0 ? (int)n : stella_fail(e, -EBADMSG, "%s: member \"%s\": truncated archive",
							  kr->path, m->name);
		}
		got += (size_t)n;
	}
	buf[got] = 0;
	*out = buf;
	return 0;
}
