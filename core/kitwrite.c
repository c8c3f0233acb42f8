#include "kitwrite.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <yajl/yajl_gen.h>
#include <zlib.h>
#include <zstd.h>

#include "hasher.h"
#include "index.h"
#include "kitindex.h"
#include "bounds.h"
#include "merklefile.h"
#include "path.h"
#include "sig.h"
#include "util.h"

/* ---- the source tree ---- */

struct tree {
	size_t n, cap;
	struct artifact *a;
	int src_fd;
	const char *src;
};

static int tree_add(struct tree *t, const char *name, enum artifact_type type)
{
	if (t->n >= STELLA_ARTIFACTS_MAX)
		return -E2BIG;
	if (t->n == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 256;
		struct artifact *a = realloc(t->a, cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		t->a = a;
		t->cap = cap;
	}
	struct artifact *a = &t->a[t->n];
	memset(a, 0, sizeof(*a));
	if (!(a->name = strdup(name)))
		return -ENOMEM;
	a->type = type;
	t->n++;
	return 0;
}

static int cmp_cstr(const void *x, const void *y)
{
	return path_cmp(*(char *const *)x, *(char *const *)y);
}

struct names {
	char **v;
	size_t n, cap;
};

static void names_free(struct names *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
}

/* The names in directory fd (not "." and ".."), sorted bytewise; where
 * (t->src, rel) names it in messages. */
static int list_dir(struct tree *t, int dirfd, const char *rel, struct names *l, struct stella_err *e)
{
	int fd = dup(dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		return stella_fail_errno(e, -err, "%s%s%s", t->src, *rel ? "/" : "", rel);
	}
	int r = 0;
	for (;;) {
		/* NULL is the end or an error: only errno tells, and a directory
		 * that could not be read whole must not make a kit without its
		 * files. */
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno)
				r = stella_fail_errno(e, -errno, "%s%s%s: reading the directory", t->src, *rel ? "/" : "", rel);
			break;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (l->n == l->cap) {
			size_t cap = l->cap ? 2 * l->cap : 64;
			char **nv = realloc(l->v, cap * sizeof(*nv));
			if (!nv) {
				r = -ENOMEM;
				break;
			}
			l->v = nv;
			l->cap = cap;
		}
		if (!(l->v[l->n] = strdup(de->d_name))) {
			r = -ENOMEM;
			break;
		}
		l->n++;
	}
	closedir(d);
	if (r == 0 && l->n)
		qsort(l->v, l->n, sizeof(*l->v), cmp_cstr);
	return r;
}

static int walk(struct tree *t, int dirfd, const char *rel, unsigned depth, struct stella_err *e);

/* A symlink's target, checked for length. */
static int add_symlink(struct tree *t, int dirfd, const char *entry, const char *name, struct stella_err *e)
{
	char target[STELLA_NAME_MAX + 1];
	ssize_t tl = readlinkat(dirfd, entry, target, sizeof(target));
	if (tl < 0)
		return stella_fail_errno(e, -errno, "%s/%s", t->src, name);
	if ((size_t)tl > STELLA_NAME_MAX)
		return stella_fail(e, -EBADMSG, "%s/%s: symlink target too long", t->src, name);
	target[tl] = 0;
	int r = tree_add(t, name, ARTIFACT_SYMLINK);
	if (r < 0)
		return r;
	t->a[t->n - 1].mode = 0777;
	return (t->a[t->n - 1].target = strdup(target)) ? 0 : -ENOMEM;
}

/* One entry of a directory: entry is its name there, name its path in the
 * kit.  Directories are walked in turn. */
static int add_entry(struct tree *t, int dirfd, const char *entry, const char *name, bool top, unsigned depth,
		     struct stella_err *e)
{
	const char *why;
	if (path_check(name, strlen(name), &why) < 0)
		return stella_fail(e, -EBADMSG, "%s/%s: unsafe name: %s", t->src, name, why);
	if (top && !strcmp(entry, "manifest"))
		return stella_fail(e, -EBADMSG, "%s/manifest: unsafe name: manifest/ is reserved for the kit's own members",
				   t->src);
	struct stat st;
	if (fstatat(dirfd, entry, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return stella_fail_errno(e, -errno, "%s/%s", t->src, name);
	if ((st.st_mode & 07777) > 0777 && !S_ISLNK(st.st_mode))
		return stella_fail(e, -EBADMSG, "%s/%s: mode %04o: setuid, setgid and sticky bits are refused in kits",
				   t->src, name, st.st_mode & 07777);
	int r;
	if (S_ISREG(st.st_mode)) {
		if ((r = tree_add(t, name, ARTIFACT_FILE)) < 0)
			return r;
		t->a[t->n - 1].size = (uint64_t)st.st_size;
		t->a[t->n - 1].mode = st.st_mode & 0777;
		return 0;
	}
	if (S_ISLNK(st.st_mode))
		return add_symlink(t, dirfd, entry, name, e);
	if (S_ISDIR(st.st_mode)) {
		if ((r = tree_add(t, name, ARTIFACT_DIR)) < 0)
			return r;
		t->a[t->n - 1].mode = st.st_mode & 0777;
		_cleanup_(closep) int sub = openat(dirfd, entry, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			return stella_fail_errno(e, -errno, "%s/%s", t->src, name);
		return walk(t, sub, name, depth + 1, e);
	}
	const char *what = S_ISFIFO(st.st_mode) ? "fifo" : S_ISSOCK(st.st_mode) ? "socket" :
			   S_ISCHR(st.st_mode) ? "character device" : "block device";
	return stella_fail(e, -EBADMSG, "%s/%s: unsupported type (%s): kits hold files, directories and symlinks",
			   t->src, name, what);
}

/* Walk dir (relative name `rel`, "" for the top), adding every entry. */
static int walk(struct tree *t, int dirfd, const char *rel, unsigned depth, struct stella_err *e)
{
	if (depth > STELLA_DEPTH_MAX)
		return stella_fail(e, -EBADMSG, "%s/%s: deeper than %u levels", t->src, rel, STELLA_DEPTH_MAX);
	struct names l = { 0 };
	int r = list_dir(t, dirfd, rel, &l, e);
	if (r == 0 && l.n == 0 && *rel)
		t->a[t->n - 1].size = 1; /* mark: empty directory (see below) */
	for (size_t i = 0; i < l.n && r == 0; i++) {
		size_t nl = strlen(rel) + strlen(l.v[i]) + 2;
		_cleanup_(freep) char *name = malloc(nl);
		if (!name) {
			r = -ENOMEM;
			break;
		}
		snprintf(name, nl, "%s%s%s", rel, *rel ? "/" : "", l.v[i]);
		r = add_entry(t, dirfd, l.v[i], name, !*rel, depth, e);
	}
	if (r == -E2BIG)
		r = stella_fail(e, -EBADMSG, "%s: more than %u entries", t->src, STELLA_ARTIFACTS_MAX);
	names_free(&l);
	return r;
}

/* Directories are implied by the names below them; only an empty one, or
 * one whose mode is not 0755, needs its own entry.  walk() marked empty
 * directories with size 1. */
static void drop_implied_dirs(struct tree *t)
{
	size_t k = 0;
	for (size_t i = 0; i < t->n; i++) {
		struct artifact *a = &t->a[i];
		if (a->type == ARTIFACT_DIR) {
			bool keep = a->size == 1 || a->mode != 0755;
			a->size = 0;
			if (!keep) {
				free(a->name);
				continue;
			}
		}
		t->a[k++] = *a;
	}
	t->n = k;
}

/* ---- pass 1: digests, and the trees spooled to a temporary file ---- */

struct spool {
	FILE *f;
	uint64_t size;
	size_t n, cap;
	struct merklefile_entry *e;
};

static int cmp_entry(const void *x, const void *y)
{
	return memcmp(((const struct merklefile_entry *)x)->fsverity,
		      ((const struct merklefile_entry *)y)->fsverity, 32);
}

/* A read of a source file failed with r.  pread_full says -EIO for a short
 * read too: only a file now shorter than it was when listed has shrunk. */
static int read_failed(const struct tree *t, const struct artifact *a, int fd, int r, struct stella_err *e)
{
	struct stat st;
	if (r == -EIO && fstat(fd, &st) == 0 && (uint64_t)st.st_size < a->size)
		return stella_fail(e, -EAGAIN, "%s/%s: file shrank while packing", t->src, a->name);
	return stella_fail_errno(e, r, "%s/%s: read", t->src, a->name);
}

static int hash_file(struct tree *t, struct hasher *h, struct artifact *a, struct spool *sp,
		     const struct kitwrite_opts *o, uint64_t *done, uint64_t total, struct stella_err *e)
{
	_cleanup_(closep) int fd = openat(t->src_fd, a->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return stella_fail_errno(e, -errno, "%s/%s", t->src, a->name);
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	int r = hasher_begin(h, a->size);
	if (r < 0)
		return r;
	for (uint64_t off = 0; off < a->size;) {
		uint8_t *buf = hasher_buf(h);
		size_t want = (size_t)MIN(a->size - off, (uint64_t)HASHER_CHUNK);
		r = pread_full(fd, buf, want, off);
		hasher_put(h, r < 0 ? 0 : want);
		if (r < 0) {
			struct hasher_result dummy;
			hasher_end(h, &dummy);
			return read_failed(t, a, fd, r, e);
		}
		off += want;
		*done += want;
		if (o->progress)
			o->progress(o->progress_ctx, a->name, *done, total);
	}
	struct hasher_result res;
	if ((r = hasher_end(h, &res)) < 0)
		return stella_fail_errno(e, r, "%s/%s: hashing", t->src, a->name);
	memcpy(a->sha256, res.sha256, 32);
	memcpy(a->fsverity, res.fsverity, 32);
	uint64_t tsize = merkle_tree_size(&res.geom);
	if (tsize == 0)
		return 0;
	/* identical content spools its tree again; pack_merkle keeps one */
	if (sp->n == sp->cap) {
		size_t cap = sp->cap ? 2 * sp->cap : 64;
		struct merklefile_entry *ne = realloc(sp->e, cap * sizeof(*ne));
		if (!ne)
			return -ENOMEM;
		sp->e = ne;
		sp->cap = cap;
	}
	struct merklefile_entry *x = &sp->e[sp->n++];
	memset(x, 0, sizeof(*x));
	memcpy(x->fsverity, a->fsverity, 32);
	x->data_size = a->size;
	x->size = tsize;
	x->offset = sp->size; /* position in the spool until merklefile_layout */
	if (fwrite(res.tree, 1, tsize, sp->f) != tsize)
		return stella_fail_errno(e, -errno, "temporary tree file");
	sp->size += tsize;
	return 0;
}

/* ---- pass 2: the archive ---- */

/* Compressed kits are written as a sequence of independent pieces, zstd
 * frames or gzip members, one per KIT_FRAME bytes of tar stream: a piece
 * boundary is where a reader can start decoding, so the mount's seek
 * points (source.c) can be that close, and they need no 32 KiB window.  A
 * single stream, as libarchive writes it, would make every random read
 * decode from the start of the kit.  `zstd -d` and `gzip -d` read the
 * pieces as one stream.  A fresh piece also starts exactly where the first
 * artifact's header starts (the end of the head), so that the artifacts'
 * bytes do not depend on the head (docs/kit-format.md, "The carried
 * index"). */
#define KIT_FRAME (4u << 20)

/* One output: a kit file, or the spool holding the artifacts' part of it
 * until the head before them is known. */
struct out {
	int fd;
	EVP_MD_CTX *sha;        /* the kit file's digest (NULL: not hashed) */
	uint64_t size;          /* bytes written to fd */
	uint64_t tar;           /* tar stream bytes taken */
	int err;
	bool discard;           /* take tar bytes and drop them (see pack_write_head) */
	enum kit_compression comp;
	ZSTD_CCtx *zc;
	z_stream *gz;
	uint8_t *zbuf;
	size_t zcap;
	size_t frame_in;        /* tar bytes in the current piece */
	/* where each piece starts: tar offset and file offset */
	struct source_point *pts;
	size_t npts, ptcap;
};

static int raw_write(struct out *o, const void *buf, size_t len)
{
	int r = write_full(o->fd, buf, len);
	if (r < 0)
		return o->err = r;
	if (o->sha && !EVP_DigestUpdate(o->sha, buf, len))
		return o->err = -ENOMEM;
	o->size += len;
	return 0;
}

/* Compress in with mode until it is consumed (continue) or the frame is
 * complete (end). */
static int zstd_push(struct out *o, ZSTD_inBuffer *in, ZSTD_EndDirective mode)
{
	for (;;) {
		ZSTD_outBuffer ob = { o->zbuf, o->zcap, 0 };
		size_t left = ZSTD_compressStream2(o->zc, &ob, in, mode);
		if (ZSTD_isError(left))
			return o->err = -EIO;
		if (ob.pos && raw_write(o, o->zbuf, ob.pos) < 0)
			return o->err;
		if (mode == ZSTD_e_end ? left == 0 : in->pos == in->size)
			return 0;
	}
}

/* Deflate in (finish: and end the member with its trailer). */
static int gz_push(struct out *o, const uint8_t *buf, size_t len, bool finish)
{
	z_stream *z = o->gz;
	z->next_in = (Bytef *)buf;
	z->avail_in = (uInt)len;
	for (;;) {
		z->next_out = o->zbuf;
		z->avail_out = (uInt)o->zcap;
		int zr = deflate(z, finish ? Z_FINISH : Z_NO_FLUSH);
		if (zr == Z_STREAM_ERROR)
			return o->err = -EIO;
		size_t got = o->zcap - z->avail_out;
		if (got && raw_write(o, o->zbuf, got) < 0)
			return o->err;
		if (finish ? zr == Z_STREAM_END : z->avail_in == 0 && z->avail_out != 0)
			break;
	}
	if (finish && deflateReset(z) != Z_OK)
		return o->err = -EIO;
	return 0;
}

static int point_note(struct out *o)
{
	if (o->npts == o->ptcap) {
		size_t cap = o->ptcap ? 2 * o->ptcap : 64;
		struct source_point *p = realloc(o->pts, cap * sizeof(*p));
		if (!p)
			return o->err = -ENOMEM;
		o->pts = p;
		o->ptcap = cap;
	}
	o->pts[o->npts++] = (struct source_point){ .out = o->tar, .in = o->size };
	return 0;
}

/* End the current piece, if it holds anything: the next byte starts a
 * fresh one. */
static int piece_end(struct out *o)
{
	if (o->comp == KIT_COMPRESS_NONE || o->frame_in == 0)
		return 0;
	int r;
	if (o->zc) {
		ZSTD_inBuffer none = { NULL, 0, 0 };
		r = zstd_push(o, &none, ZSTD_e_end);
	} else {
		r = gz_push(o, NULL, 0, true);
	}
	o->frame_in = 0;
	return r;
}

static int piece_write(struct out *o, const uint8_t *buf, size_t len)
{
	if (o->comp == KIT_COMPRESS_NONE) {
		o->tar += len;
		return raw_write(o, buf, len);
	}
	while (len > 0) {
		if (o->frame_in == 0 && point_note(o) < 0)
			return o->err;
		size_t take = MIN(len, KIT_FRAME - o->frame_in);
		int r;
		if (o->zc) {
			ZSTD_inBuffer in = { buf, take, 0 };
			r = zstd_push(o, &in, ZSTD_e_continue);
		} else {
			r = gz_push(o, buf, take, false);
		}
		if (r < 0)
			return r;
		o->frame_in += take;
		o->tar += take;
		buf += take;
		len -= take;
		if (o->frame_in == KIT_FRAME && (r = piece_end(o)) < 0)
			return r;
	}
	return 0;
}

static la_ssize_t out_write(struct archive *a, void *data, const void *buf, size_t len)
{
	struct out *o = data;
	/* after a failure, nothing more: the temporary is going away */
	int r = o->err ? o->err : o->discard ? 0 : piece_write(o, buf, len);
	if (r < 0) {
		archive_set_error(a, -r, "%s", strerror(-r));
		return -1;
	}
	return (la_ssize_t)len;
}

static int out_init(struct out *o, int fd, enum kit_compression comp, bool hashed)
{
	o->fd = fd;
	o->comp = comp;
	if (hashed && (!(o->sha = EVP_MD_CTX_new()) || !EVP_DigestInit_ex2(o->sha, EVP_sha256(), NULL)))
		return -ENOMEM;
	if (comp == KIT_COMPRESS_NONE)
		return 0;
	o->zcap = comp == KIT_COMPRESS_ZSTD ? ZSTD_CStreamOutSize() : 1u << 16;
	if (!(o->zbuf = malloc(o->zcap)))
		return -ENOMEM;
	if (comp == KIT_COMPRESS_ZSTD) {
		if (!(o->zc = ZSTD_createCCtx()))
			return -ENOMEM;
		/* fixed parameters: the same input gives the same bytes */
		ZSTD_CCtx_setParameter(o->zc, ZSTD_c_compressionLevel, 3);
		ZSTD_CCtx_setParameter(o->zc, ZSTD_c_checksumFlag, 1);
		return 0;
	}
	if (!(o->gz = calloc(1, sizeof(*o->gz))))
		return -ENOMEM;
	/* windowBits 31: a gzip wrapper, zlib's default header: no name, no
	 * time, OS Unix: reproducible bytes */
	if (deflateInit2(o->gz, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
		free(o->gz);
		o->gz = NULL;
		return -ENOMEM;
	}
	return 0;
}

static void out_free(struct out *o)
{
	if (o->fd >= 0)
		close(o->fd);
	o->fd = -1;
	EVP_MD_CTX_free(o->sha);
	ZSTD_freeCCtx(o->zc);
	if (o->gz) {
		deflateEnd(o->gz);
		free(o->gz);
	}
	free(o->zbuf);
	free(o->pts);
}

static int add_header(struct archive *ar, const char *name, enum artifact_type type, uint32_t mode,
		      uint64_t size, const char *target, int64_t mtime)
{
	struct archive_entry *ent = archive_entry_new();
	if (!ent)
		return -ENOMEM;
	archive_entry_set_pathname(ent, name);
	archive_entry_set_filetype(ent, type == ARTIFACT_DIR ? AE_IFDIR : type == ARTIFACT_SYMLINK ? AE_IFLNK : AE_IFREG);
	archive_entry_set_perm(ent, mode);
	archive_entry_set_size(ent, (la_int64_t)size);
	if (target)
		archive_entry_set_symlink(ent, target);
	archive_entry_set_mtime(ent, mtime, 0);
	archive_entry_set_uid(ent, 0);
	archive_entry_set_gid(ent, 0);
	archive_entry_set_uname(ent, "root");
	archive_entry_set_gname(ent, "root");
	int r = archive_write_header(ar, ent);
	archive_entry_free(ent);
	return r == ARCHIVE_OK ? 0 : -EIO;
}

static int add_buffer(struct archive *ar, const char *name, const void *buf, size_t len, int64_t mtime)
{
	int r = add_header(ar, name, ARTIFACT_FILE, 0644, len, NULL, mtime);
	if (r == 0 && len && archive_write_data(ar, buf, len) != (la_ssize_t)len)
		r = -EIO;
	return r;
}

/* The failure of an archive call (add_header, add_buffer, archive_write_*):
 * r is what the call returned (-ENOMEM: no entry could be allocated). */
static int archive_error(struct archive *ar, struct out *o, int r, const char *path, const char *what,
			 struct stella_err *e)
{
	if (r == -ENOMEM)
		return stella_fail_errno(e, -ENOMEM, "%s: writing %s", path, what);
	if (o->err)
		return stella_fail_errno(e, o->err, "%s: writing %s", path, what);
	return stella_fail(e, -EIO, "%s: writing %s: %s", path, what,
			   archive_error_string(ar) ? archive_error_string(ar) : "archive error");
}

static int write_member_file(struct archive *ar, struct out *out, const char *out_path, struct tree *t,
			     const struct artifact *a, uint8_t *buf, int64_t mtime, uint64_t *data_off,
			     struct stella_err *e)
{
	_cleanup_(closep) int fd = openat(t->src_fd, a->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return stella_fail_errno(e, -errno, "%s/%s", t->src, a->name);
	/* Hash again while copying: a file that changed after pass 1 would give
	 * a kit that contradicts its own manifest. */
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (!ctx)
		return stella_fail_errno(e, -ENOMEM, "%s/%s: hashing", t->src, a->name);
	if (!EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(ctx);
		return stella_fail(e, -ENOMEM, "%s/%s: hashing failed in OpenSSL", t->src, a->name);
	}
	int r = add_header(ar, a->name, ARTIFACT_FILE, a->mode, a->size, NULL, mtime);
	bool archive_failed = r < 0;
	*data_off = out->tar; /* unbuffered: the header is all in out */
	for (uint64_t off = 0; off < a->size && r == 0;) {
		size_t want = (size_t)MIN(a->size - off, (uint64_t)HASHER_CHUNK);
		if ((r = pread_full(fd, buf, want, off)) < 0) {
			r = read_failed(t, a, fd, r, e);
			break;
		}
		if (!EVP_DigestUpdate(ctx, buf, want))
			r = stella_fail(e, -ENOMEM, "%s/%s: hashing failed in OpenSSL", t->src, a->name);
		else if (archive_write_data(ar, buf, want) != (la_ssize_t)want)
			archive_failed = true, r = -EIO;
		off += want;
	}
	uint8_t sha[32];
	if (r == 0 && !EVP_DigestFinal_ex(ctx, sha, NULL))
		r = stella_fail(e, -ENOMEM, "%s/%s: hashing failed in OpenSSL", t->src, a->name);
	EVP_MD_CTX_free(ctx);
	if (r == 0 && memcmp(sha, a->sha256, 32))
		r = stella_fail(e, -EAGAIN, "%s/%s: file changed while packing", t->src, a->name);
	if (archive_failed)
		return archive_error(ar, out, r, out_path, a->name, e);
	return r;
}

/* ---- sidecars ---- */

static int write_metadata(const char *path, const struct manifest *m, const struct kitwrite_result *res)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g)
		return -ENOMEM;
	yajl_gen_config(g, yajl_gen_beautify, 1);
	yajl_gen_config(g, yajl_gen_indent_string, "  ");
	char t1[32], t2[32], h1[65], h2[65];
	time_format(m->created_at, t1);
	time_format(m->expires_at, t2);
	hex_encode(res->kit_sha256, 32, h1);
	hex_encode(res->manifest_sha256, 32, h2);
	const char *keys[] = { "kitId", "version", "sequence", "channel", "createdAt", "expiresAt",
			       "size", "sha256", "manifestSha256" };
	const char *vals[] = { m->kit_id, m->version, NULL, m->channel, t1, t2, NULL, h1, h2 };
	yajl_gen_map_open(g);
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		yajl_gen_string(g, (const unsigned char *)keys[i], strlen(keys[i]));
		if (vals[i])
			yajl_gen_string(g, (const unsigned char *)vals[i], strlen(vals[i]));
		else
			yajl_gen_integer(g, i == 2 ? m->sequence : (long long)res->kit_size);
	}
	yajl_gen_map_close(g);
	const unsigned char *buf;
	size_t len;
	yajl_gen_get_buf(g, &buf, &len);
	size_t n = strlen(path) + 16;
	char *p = malloc(n);
	int r = -ENOMEM;
	if (p) {
		snprintf(p, n, "%s.metadata.json", path);
		char *s = malloc(len + 1);
		if (s) {
			memcpy(s, buf, len);
			s[len] = '\n';
			r = write_file_atomic(p, s, len + 1, 0644);
			free(s);
		}
		free(p);
	}
	yajl_gen_free(g);
	return r;
}

enum { SIDECAR_SHA256 = 1, SIDECAR_METADATA = 2, SIDECAR_SIG = 4 };
static const struct { unsigned bit; const char *suffix; } sidecars[] = {
	{ SIDECAR_SHA256, ".sha256" }, { SIDECAR_METADATA, ".metadata.json" }, { SIDECAR_SIG, ".sig" },
};

/* The sidecars of the kit whose complete bytes are in fd (the temporary,
 * not yet renamed to out_path); *placed says which were put in place. */
static int write_sidecars(const struct kitwrite_opts *o, const struct manifest *m, int fd,
			  const struct kitwrite_result *res, unsigned *placed, struct stella_err *e)
{
	const char *base = strrchr(o->out_path, '/');
	base = base ? base + 1 : o->out_path;
	size_t n = strlen(o->out_path) + 16;
	_cleanup_(freep) char *p = malloc(n);
	_cleanup_(freep) char *line = malloc(strlen(base) + 80);
	if (!p || !line)
		return stella_fail_errno(e, -ENOMEM, "%s: sidecar files", o->out_path);
	char hex[65];
	hex_encode(res->kit_sha256, 32, hex);
	sprintf(line, "%s  %s\n", hex, base);
	snprintf(p, n, "%s.sha256", o->out_path);
	int r = write_file_atomic(p, line, strlen(line), 0644);
	if (r < 0)
		return stella_fail_errno(e, r, "%s", p);
	*placed |= SIDECAR_SHA256;
	if ((r = write_metadata(o->out_path, m, res)) < 0)
		return stella_fail_errno(e, r, "%s.metadata.json", o->out_path);
	*placed |= SIDECAR_METADATA;

	/* The transfer signature covers the whole kit. */
	_cleanup_(freep) char *sig = NULL;
	if ((r = sig_sign_file(o->keys[0], fd, res->kit_size, &sig, e)) < 0)
		return r;
	size_t sl = strlen(sig);
	_cleanup_(freep) char *sigl = malloc(sl + 2);
	if (!sigl)
		return stella_fail_errno(e, -ENOMEM, "%s.sig", o->out_path);
	memcpy(sigl, sig, sl);
	sigl[sl] = '\n';
	snprintf(p, n, "%s.sig", o->out_path);
	if ((r = write_file_atomic(p, sigl, sl + 1, 0644)) < 0)
		return stella_fail_errno(e, r, "%s", p);
	*placed |= SIDECAR_SIG;
	return 0;
}

static void remove_sidecars(const char *out_path, unsigned placed)
{
	char p[4200];
	for (size_t i = 0; i < ARRAY_SIZE(sidecars); i++)
		if (placed & sidecars[i].bit) {
			snprintf(p, sizeof(p), "%s%s", out_path, sidecars[i].suffix);
			unlink(p);
		}
}

/* ---- kit_write: the phases over one owning struct ---- */

/* Everything one pack holds; pack_free() is its one cleanup path. */
struct pack {
	const struct kitwrite_opts *o;
	struct kitwrite_result *res;
	struct stella_err *e;
	struct manifest *m;        /* o->manifest, whose artifacts we fill in */
	struct tree t;             /* the source tree (its artifacts move to m) */
	struct spool sp;           /* pass 1's trees */
	int json_fd;               /* the canonical manifest, in a temporary file ... */
	uint64_t jlen;
	char *sigtext;             /* ... and its signature lines */
	size_t slen;
	uint8_t *mindex;           /* merkle.bin's index, sorted by digest */
	size_t milen;
	uint64_t msize;            /* merkle.bin's whole size */
	uint64_t *spool_off;       /* each sorted entry's tree in the spool */
	uint8_t *buf;              /* HASHER_CHUNK bytes of copy buffer */
	char *tmp;                 /* the temporary beside OUT_KIT, until renamed */
	struct archive *ar;        /* the archive being written (head or body) */
	struct out out;            /* the kit file */
	/* The body: the artifacts and the archive's end, written first, to a
	 * temporary file beside OUT_KIT, with each member's data offset
	 * relative to the body's start; copied after the head once the head
	 * (which carries the index of those offsets) is written. */
	struct out body;
	uint64_t *data_off;        /* per artifact: data offset in the body's tar stream */
	char *index_tmp;           /* the carried index being built (a file beside OUT_KIT) */
	int index_fd;              /* the built index, opened for copying */
};

/* Read the source tree: names, types, sizes, modes, symlink targets. */
static int pack_scan(struct pack *p)
{
	const char *src = p->o->src_dir;
	p->t.src_fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->t.src_fd < 0) {
		/* A SRC_DIR that is missing or no directory is the caller's
		 * argument (exit 2), but the message says what is wrong with it,
		 * not "Invalid argument". */
		int err = errno;
		if (err == ENOENT || err == ENOTDIR)
			return stella_fail(p->e, -EINVAL, "%s: %s", src, strerror(err));
		return stella_fail_errno(p->e, -err, "%s", src);
	}
	int r = walk(&p->t, p->t.src_fd, "", 1, p->e);
	if (r == 0)
		drop_implied_dirs(&p->t);
	return r;
}

/* Pass 1: every file's digests, its tree spooled to a temporary file. */
static int pack_hash(struct pack *p)
{
	struct tree *t = &p->t;
	if (!(p->sp.f = tmpfile()))
		return stella_fail_errno(p->e, -errno, "temporary tree file");
	_cleanup_(hasher_freep) struct hasher *h = NULL;
	int r = hasher_new(&h, 0);
	if (r < 0)
		return r;
	uint64_t total = 0, done = 0;
	for (size_t i = 0; i < t->n; i++)
		if (t->a[i].type == ARTIFACT_FILE)
			total += t->a[i].size;
	for (size_t i = 0; i < t->n; i++) {
		if (t->a[i].type != ARTIFACT_FILE)
			continue;
		if ((r = hash_file(t, h, &t->a[i], &p->sp, p->o, &done, total, p->e)) < 0)
			return r;
		p->res->files++;
		p->res->bytes += t->a[i].size;
	}
	return 0;
}

/* The manifest's artifacts: from the tree, with the components' capture
 * times, checked with the reader's rules (and sorted). */
static int pack_artifacts(struct pack *p)
{
	struct manifest *m = p->m;
	struct tree *t = &p->t;
	for (size_t i = 0; i < t->n; i++)
		for (size_t c = 0; c < m->ncomponents; c++) {
			size_t pl = strlen(m->components[c].path);
			if (!strncmp(t->a[i].name, m->components[c].path, pl) &&
			    (t->a[i].name[pl] == '/' || t->a[i].name[pl] == 0))
				t->a[i].captured_at = m->components[c].captured_at;
		}
	m->artifacts = t->a;
	m->nartifacts = t->n;
	t->a = NULL;
	t->n = t->cap = 0;
	struct stella_err me = { 0 };
	int r = manifest_validate(m, &me);
	if (r < 0)
		return stella_fail(p->e, r, "%s: %s", p->o->src_dir, stella_err_text(&me, r));
	return 0;
}

/* The manifest written canonically, streamed to a temporary file (the
 * manifest of a million files is 270 MB: it is never held in memory), and
 * what a reader would refuse refused here. */
static int temp_beside(struct pack *p, const char *what, char **path, int *fd);

static int pack_manifest(struct pack *p)
{
	char *path = NULL;
	int r = temp_beside(p, "manifest", &path, &p->json_fd);
	if (r < 0)
		return r;
	unlink(path);
	free(path);
	if ((r = manifest_write_fd(p->m, p->json_fd, p->res->manifest_sha256, &p->jlen)) < 0)
		return stella_fail_errno(p->e, r, "%s: writing the manifest", p->o->out_path);
	if (p->jlen > STELLA_MANIFEST_MAX)
		return stella_fail(p->e, -EBADMSG, "%s: the kit would be refused: manifest: too large (%llu bytes, limit %u)",
				   p->o->src_dir, (unsigned long long)p->jlen, STELLA_MANIFEST_MAX);
	/* What we sign must be what every reader accepts.  The artifacts
	 * passed manifest_validate, the reader's own rules; the rest
	 * (components, identifiers, times) is read back with manifest_parse,
	 * written as the identity the same code writes. */
	char *json = NULL;
	size_t jlen;
	if ((r = manifest_write_identity(p->m, &json, &jlen)) < 0)
		return r;
	struct manifest *check = NULL;
	struct stella_err me = { 0 };
	r = manifest_parse(json, jlen, &check, &me);
	free(json);
	if (r < 0)
		return stella_fail(p->e, r, "%s: the kit would be refused: %s", p->o->src_dir, stella_err_text(&me, r));
	manifest_free(check);
	return 0;
}

/* Signatures: one line per key, in the order the keys were given. */
static int pack_sign(struct pack *p)
{
	for (size_t k = 0; k < p->o->nkeys; k++) {
		_cleanup_(freep) char *line = NULL;
		/* from the file: Ed25519 maps it (it needs the message in one
		 * piece), the others stream it */
		int r = sig_sign_file(p->o->keys[k], p->json_fd, p->jlen, &line, p->e);
		if (r < 0)
			return r;
		size_t ll = strlen(line);
		char *ns = realloc(p->sigtext, p->slen + ll + 2);
		if (!ns)
			return -ENOMEM;
		p->sigtext = ns;
		memcpy(p->sigtext + p->slen, line, ll);
		p->sigtext[p->slen + ll] = '\n';
		p->slen += ll + 1;
	}
	return 0;
}

/* merkle.bin's layout: the index sorted by digest, each tree remembered at
 * its place in the spool. */
static int pack_merkle(struct pack *p)
{
	struct spool *sp = &p->sp;
	if (sp->n) {
		qsort(sp->e, sp->n, sizeof(*sp->e), cmp_entry);
		/* identical content has one tree: keep its first copy */
		size_t k = 0;
		for (size_t i = 0; i < sp->n; i++)
			if (k == 0 || memcmp(sp->e[k - 1].fsverity, sp->e[i].fsverity, 32))
				sp->e[k++] = sp->e[i];
		sp->n = k;
		if (!(p->spool_off = malloc(sp->n * sizeof(*p->spool_off))))
			return -ENOMEM;
		for (size_t i = 0; i < sp->n; i++)
			p->spool_off[i] = sp->e[i].offset;
	}
	p->msize = merklefile_layout(sp->e, sp->n);
	p->milen = MERKLEFILE_HEADER + sp->n * MERKLEFILE_ENTRY;
	if (!(p->mindex = malloc(p->milen)) || !(p->buf = malloc(HASHER_CHUNK)))
		return -ENOMEM;
	merklefile_encode_index(sp->e, sp->n, p->mindex);
	if (fflush(sp->f) != 0)
		return stella_fail_errno(p->e, -errno, "temporary tree file");
	return 0;
}

/* A temporary file beside OUT_KIT (on the same file system: the kit's own
 * temporary, renamed into place, or a spool for part of it). */
static int temp_beside(struct pack *p, const char *what, char **path, int *fd)
{
	const char *out = p->o->out_path;
	size_t tl = strlen(out) + 24;
	if (!(*path = malloc(tl)))
		return -ENOMEM;
	snprintf(*path, tl, "%s.%sXXXXXX", out, what);
	*fd = mkostemp(*path, O_CLOEXEC);
	if (*fd < 0) {
		int r = stella_fail_errno(p->e, -errno, "%s", out);
		free(*path);
		*path = NULL;
		return r;
	}
	return 0;
}

/* A libarchive writer into o: POSIX tar, unbuffered, so that every byte
 * of a member is in o when the call that wrote it returns (the offsets the
 * index records, and the head's exact end, are read from o->tar). */
static int archive_open_on(struct pack *p, struct out *o)
{
	if (!(p->ar = archive_write_new()))
		return -ENOMEM;
	archive_write_set_format_pax_restricted(p->ar);
	archive_write_set_bytes_per_block(p->ar, 0);
	if (archive_write_open(p->ar, o, NULL, out_write, NULL) != ARCHIVE_OK)
		return archive_error(p->ar, o, -EIO, p->o->out_path, "archive", p->e);
	return 0;
}

static int archive_done(struct pack *p, struct out *o, const char *what)
{
	int r = 0;
	if (archive_write_close(p->ar) != ARCHIVE_OK)
		r = archive_error(p->ar, o, -EIO, p->o->out_path, what, p->e);
	archive_write_free(p->ar);
	p->ar = NULL;
	return r;
}

/* The body: the artifacts, in manifest order, and the archive's end (two
 * zero blocks); a delta kit leaves out what its base already carries,
 * identical. */
static int pack_write_body(struct pack *p)
{
	const struct manifest *m = p->m;
	int64_t mtime = m->created_at;
	int fd, r;
	char *path = NULL;
	if ((r = temp_beside(p, "body", &path, &fd)) < 0)
		return r;
	unlink(path); /* nobody else needs to see it */
	free(path);
	if ((r = out_init(&p->body, fd, p->o->compression, false)) < 0)
		return r;
	if (!(p->data_off = calloc(m->nartifacts + 1, sizeof(*p->data_off))))
		return -ENOMEM;
	if ((r = archive_open_on(p, &p->body)) < 0)
		return r;
	for (size_t i = 0; i < m->nartifacts; i++) {
		const struct artifact *a = &m->artifacts[i];
		if (p->o->base) {
			const struct artifact *b = manifest_find(p->o->base, a->name);
			if (b && artifact_same(a, b)) {
				p->res->from_base++;
				continue;
			}
		}
		p->res->carried++;
		if (a->type == ARTIFACT_FILE) {
			r = write_member_file(p->ar, &p->body, p->o->out_path, &p->t, a, p->buf, mtime, &p->data_off[i],
					      p->e);
		} else {
			if ((r = add_header(p->ar, a->name, a->type, a->mode, 0, a->target, mtime)) < 0)
				r = archive_error(p->ar, &p->body, r, p->o->out_path, a->name, p->e);
			p->data_off[i] = p->body.tar;
		}
		if (r < 0)
			return r;
	}
	if ((r = archive_done(p, &p->body, "archive end")) < 0)
		return r;
	if (piece_end(&p->body) < 0)
		return stella_fail_errno(p->e, p->body.err, "%s: writing the archive end", p->o->out_path);
	return 0;
}

/* The carried index (kit format 1.1): the tree the mount serves, every
 * file's data offset relative to the body's start and its tree's offset
 * inside merkle.bin, the body's seek points (relative too), built in one
 * transaction into a file beside OUT_KIT.  The same rows, in the same
 * order, always give the same bytes (index.c: fixed page size, no
 * journal): packing stays reproducible. */
static int pack_index(struct pack *p)
{
	struct manifest *m = p->m;
	int fd, r;
	if ((r = temp_beside(p, "index", &p->index_tmp, &fd)) < 0)
		return r;
	close(fd);
	struct index *ix = NULL;
	if ((r = index_create(p->index_tmp, &ix, p->e)) < 0)
		return r;
	struct merklefile_index mi = { .n = p->sp.n, .e = p->sp.e };
	for (size_t i = 0; i < m->nartifacts && r == 0; i++) {
		const struct artifact *a = &m->artifacts[i];
		int64_t tree_off = -1;
		if (a->type == ARTIFACT_FILE) {
			const struct merklefile_entry *x = merklefile_find(&mi, a->fsverity);
			if (x)
				tree_off = (int64_t)x->offset;
		}
		r = index_add(ix, a, p->data_off[i], tree_off, p->e);
	}
	char num[32];
	if (r == 0 && p->body.npts)
		r = index_add_points(ix, p->body.pts, p->body.npts, p->body.tar, p->e);
	if (r == 0)
		r = index_set_meta(ix, "format", KITINDEX_FORMAT, strlen(KITINDEX_FORMAT), p->e);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)p->body.tar);
	if (r == 0)
		r = index_set_meta(ix, "bodySize", num, strlen(num), p->e);
	snprintf(num, sizeof(num), "%llu", (unsigned long long)(p->sp.n ? p->msize : 0));
	if (r == 0)
		r = index_set_meta(ix, "merkleSize", num, strlen(num), p->e);
	if (r == 0)
		r = index_finish(ix, p->e);
	index_close(ix);
	if (r < 0)
		return r;
	if ((p->index_fd = open(p->index_tmp, O_RDONLY | O_CLOEXEC)) < 0)
		return stella_fail_errno(p->e, -errno, "%s", p->index_tmp);
	struct stat st;
	if (fstat(p->index_fd, &st) < 0)
		return stella_fail_errno(p->e, -errno, "%s", p->index_tmp);
	if ((uint64_t)st.st_size > STELLA_INDEX_MAX)
		return stella_fail(p->e, -EBADMSG, "%s: the kit would be refused: its index is %llu bytes, more than %u",
				   p->o->src_dir, (unsigned long long)st.st_size, STELLA_INDEX_MAX);
	if ((r = sha256_fd(p->index_fd, p->m->index_sha256)) < 0)
		return stella_fail_errno(p->e, r, "%s", p->index_tmp);
	m->index_size = (uint64_t)st.st_size;
	m->has_index = true;
	return 0;
}

/* The archive, into a temporary beside OUT_KIT that is renamed into place
 * only when complete: a failed pack leaves no half kit. */
static int pack_open_out(struct pack *p)
{
	int fd, r;
	if ((r = temp_beside(p, "tmp", &p->tmp, &fd)) < 0)
		return r;
	p->out.fd = fd;
	if (fchmod(fd, 0644) < 0)
		return stella_fail_errno(p->e, -errno, "%s", p->o->out_path);
	if ((r = out_init(&p->out, fd, p->o->compression, true)) < 0)
		return r;
	return archive_open_on(p, &p->out);
}

/* The member NAME with the LEN bytes of fd from its start. */
static int add_fd_member(struct pack *p, const char *name, int fd, uint64_t len)
{
	int r = add_header(p->ar, name, ARTIFACT_FILE, 0644, len, NULL, p->m->created_at);
	if (r < 0)
		return archive_error(p->ar, &p->out, r, p->o->out_path, name, p->e);
	for (uint64_t off = 0; off < len;) {
		size_t want = (size_t)MIN(len - off, (uint64_t)HASHER_CHUNK);
		if ((r = pread_full(fd, p->buf, want, off)) < 0)
			return stella_fail_errno(p->e, r, "%s: reading it back", name);
		if (archive_write_data(p->ar, p->buf, want) != (la_ssize_t)want)
			return archive_error(p->ar, &p->out, -EIO, p->o->out_path, name, p->e);
		off += want;
	}
	return 0;
}

/* The head: manifest, signatures, the index, merkle.bin.  It ends where
 * the body's first header goes: its last piece is ended there, and the
 * archive's end, which libarchive writes when closed, is dropped (the
 * body has its own). */
static int pack_write_head(struct pack *p)
{
	struct archive *ar = p->ar;
	const char *path = p->o->out_path;
	int64_t mtime = p->m->created_at;
	int r;
	if ((r = add_fd_member(p, KIT_MANIFEST_NAME, p->json_fd, p->jlen)) < 0)
		return r;
	if ((r = add_buffer(ar, KIT_SIG_NAME, p->sigtext, p->slen, mtime)) < 0)
		return archive_error(ar, &p->out, r, path, "manifest", p->e);
	if (p->m->has_index && (r = add_fd_member(p, KIT_INDEX_NAME, p->index_fd, p->m->index_size)) < 0)
		return r;
	if (p->sp.n) {
		if ((r = add_header(ar, KIT_MERKLE_NAME, ARTIFACT_FILE, 0644, p->msize, NULL, mtime)) < 0 ||
		    archive_write_data(ar, p->mindex, p->milen) != (la_ssize_t)p->milen)
			return archive_error(ar, &p->out, r, path, KIT_MERKLE_NAME, p->e);
		for (size_t i = 0; i < p->sp.n; i++)
			for (uint64_t off = 0; off < p->sp.e[i].size;) {
				size_t want = (size_t)MIN(p->sp.e[i].size - off, (uint64_t)HASHER_CHUNK);
				if ((r = pread_full(fileno(p->sp.f), p->buf, want, p->spool_off[i] + off)) < 0)
					return stella_fail_errno(p->e, r, "temporary tree file");
				if (archive_write_data(ar, p->buf, want) != (la_ssize_t)want)
					return archive_error(ar, &p->out, -EIO, path, KIT_MERKLE_NAME, p->e);
				off += want;
			}
	}
	/* the last member's padding, then nothing more from this archive */
	if (archive_write_finish_entry(ar) != ARCHIVE_OK)
		return archive_error(ar, &p->out, -EIO, path, "manifest", p->e);
	p->out.discard = true;
	if ((r = archive_done(p, &p->out, "head")) < 0)
		return r;
	p->out.discard = false;
	if (piece_end(&p->out) < 0)
		return stella_fail_errno(p->e, p->out.err, "%s: writing the head", path);
	return 0;
}

/* The body after the head, byte for byte, then (uncompressed kits) the
 * zero padding GNU tar ends an archive with: a whole number of 10 KiB
 * records. */
static int pack_copy_body(struct pack *p)
{
	struct out *o = &p->out;
	for (uint64_t off = 0; off < p->body.size;) {
		size_t want = (size_t)MIN(p->body.size - off, (uint64_t)HASHER_CHUNK);
		int r = pread_full(p->body.fd, p->buf, want, off);
		if (r < 0)
			return stella_fail_errno(p->e, r, "%s: temporary body file", p->o->out_path);
		if (raw_write(o, p->buf, want) < 0)
			return stella_fail_errno(p->e, o->err, "%s", p->o->out_path);
		off += want;
	}
	if (p->o->compression == KIT_COMPRESS_NONE && o->size % 10240) {
		size_t pad = 10240 - (size_t)(o->size % 10240);
		memset(p->buf, 0, pad);
		if (raw_write(o, p->buf, pad) < 0)
			return stella_fail_errno(p->e, o->err, "%s", p->o->out_path);
	}
	return 0;
}

/* Make the kit durable, then put the sidecars and the kit in place: the
 * sidecars first, from the complete temporary, and the kit last, so that
 * OUT_KIT appears only with all three beside it.  A failure on the way
 * removes the sidecars already placed: an older kit at OUT_KIT then stays
 * without sidecars, rather than with ones that do not describe it. */
static int pack_finish(struct pack *p)
{
	const char *path = p->o->out_path;
	if (fsync(p->out.fd) < 0)
		return stella_fail_errno(p->e, -errno, "%s", path);
	if (!EVP_DigestFinal_ex(p->out.sha, p->res->kit_sha256, NULL))
		return stella_fail(p->e, -ENOMEM, "%s: hashing failed in OpenSSL", path);
	p->res->kit_size = p->out.size;
	unsigned placed = 0;
	int r = write_sidecars(p->o, p->m, p->out.fd, p->res, &placed, p->e);
	if (r == 0 && rename(p->tmp, path) < 0)
		r = stella_fail_errno(p->e, -errno, "%s", path);
	if (r < 0) {
		remove_sidecars(path, placed);
		return r;
	}
	free(p->tmp);
	p->tmp = NULL;
	return 0;
}

static void pack_free(struct pack *p, int r)
{
	if (p->ar) {
		/* libarchive 3.6 frees its output block only when the archive is
		 * closed, and archive_write_free() of an archive in the FATAL state
		 * (a write failed) does not close it: close it first (out_write
		 * refuses what closing would still write). */
		if (r < 0) {
			if (!p->out.err)
				p->out.err = -EIO;
			if (!p->body.err)
				p->body.err = -EIO;
			archive_write_close(p->ar);
		}
		archive_write_free(p->ar);
	}
	out_free(&p->out);
	out_free(&p->body);
	if (p->tmp) {
		unlink(p->tmp);
		free(p->tmp);
	}
	if (p->index_fd >= 0)
		close(p->index_fd);
	if (p->index_tmp) {
		unlink(p->index_tmp);
		free(p->index_tmp);
	}
	free(p->data_off);
	if (p->sp.f)
		fclose(p->sp.f);
	free(p->sp.e);
	free(p->spool_off);
	free(p->mindex);
	free(p->buf);
	if (p->json_fd >= 0)
		close(p->json_fd);
	free(p->sigtext);
	for (size_t i = 0; i < p->t.n; i++) {
		free(p->t.a[i].name);
		free(p->t.a[i].target);
	}
	free(p->t.a);
	if (p->t.src_fd >= 0)
		close(p->t.src_fd);
}

int kit_write(const struct kitwrite_opts *o, struct kitwrite_result *res, struct stella_err *e)
{
	struct pack p = {
		.o = o, .res = res, .e = e, .m = o->manifest,
		.t = { .src = o->src_dir, .src_fd = -1 },
		.out = { .fd = -1 }, .body = { .fd = -1 }, .index_fd = -1, .json_fd = -1,
	};
	memset(res, 0, sizeof(*res));
	o->manifest->has_index = false;
	int r = pack_scan(&p);
	if (r == 0)
		r = pack_hash(&p);
	if (r == 0)
		r = pack_artifacts(&p);
	if (r == 0)
		r = pack_merkle(&p);
	if (r == 0)
		r = pack_write_body(&p);
	/* A delta kit does not carry an index: it is never mounted alone, and
	 * its import walks it. */
	if (r == 0 && !o->no_index && !o->base)
		r = pack_index(&p);
	if (r == 0)
		r = pack_manifest(&p);
	if (r == 0)
		r = pack_sign(&p);
	if (r == 0)
		r = pack_open_out(&p);
	if (r == 0)
		r = pack_write_head(&p);
	if (r == 0)
		r = pack_copy_body(&p);
	if (r == 0)
		r = pack_finish(&p);
	pack_free(&p, r);
	return r;
}
