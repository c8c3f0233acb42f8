#include "kitwrite.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <yajl/yajl_gen.h>
#include <zstd.h>

#include "hasher.h"
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

/* Walk dir (relative name `rel`, "" for the top), adding every entry. */
static int walk(struct tree *t, int dirfd, const char *rel, unsigned depth, struct stella_err *e)
{
	if (depth > STELLA_DEPTH_MAX)
		return stella_fail(e, -EBADMSG, "%s/%s: deeper than %u levels", t->src, rel, STELLA_DEPTH_MAX);
	int fd = dup(dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		return stella_fail_errno(e, -err, "%s%s%s", t->src, *rel ? "/" : "", rel);
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	int r = 0;
	struct dirent *de;
	for (;;) {
		/* NULL is the end or an error: only errno tells, and a directory
		 * that could not be read whole must not make a kit without its
		 * files. */
		errno = 0;
		if (!(de = readdir(d))) {
			if (errno)
				r = stella_fail_errno(e, -errno, "%s%s%s: reading the directory", t->src, *rel ? "/" : "", rel);
			break;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			char **nn = realloc(names, cap * sizeof(*nn));
			if (!nn) {
				r = -ENOMEM;
				goto out;
			}
			names = nn;
		}
		if (!(names[n] = strdup(de->d_name))) {
			r = -ENOMEM;
			goto out;
		}
		n++;
	}
	if (r < 0)
		goto out;
	if (n)
		qsort(names, n, sizeof(*names), cmp_cstr);
	if (n == 0 && *rel)
		t->a[t->n - 1].size = 1; /* mark: empty directory (see below) */

	for (size_t i = 0; i < n && r == 0; i++) {
		size_t nl = strlen(rel) + strlen(names[i]) + 2;
		_cleanup_(freep) char *name = malloc(nl);
		if (!name) {
			r = -ENOMEM;
			break;
		}
		snprintf(name, nl, "%s%s%s", rel, *rel ? "/" : "", names[i]);
		const char *why;
		if (path_check(name, strlen(name), &why) < 0) {
			r = stella_fail(e, -EBADMSG, "%s/%s: unsafe name: %s", t->src, name, why);
			break;
		}
		if (!*rel && !strcmp(names[i], "manifest")) {
			r = stella_fail(e, -EBADMSG, "%s/manifest: unsafe name: manifest/ is reserved for the kit's own members",
					t->src);
			break;
		}
		struct stat st;
		if (fstatat(dirfd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
			r = stella_fail_errno(e, -errno, "%s/%s", t->src, name);
			break;
		}
		if ((st.st_mode & 07777) > 0777 && !S_ISLNK(st.st_mode)) {
			r = stella_fail(e, -EBADMSG, "%s/%s: mode %04o: setuid, setgid and sticky bits are refused in kits",
					t->src, name, st.st_mode & 07777);
			break;
		}
		if (S_ISREG(st.st_mode)) {
			if ((r = tree_add(t, name, ARTIFACT_FILE)) < 0)
				break;
			t->a[t->n - 1].size = (uint64_t)st.st_size;
			t->a[t->n - 1].mode = st.st_mode & 0777;
		} else if (S_ISLNK(st.st_mode)) {
			char target[STELLA_NAME_MAX + 1];
			ssize_t tl = readlinkat(dirfd, names[i], target, sizeof(target));
			if (tl < 0) {
				r = stella_fail_errno(e, -errno, "%s/%s", t->src, name);
				break;
			}
			if ((size_t)tl > STELLA_NAME_MAX) {
				r = stella_fail(e, -EBADMSG, "%s/%s: symlink target too long", t->src, name);
				break;
			}
			target[tl] = 0;
			if ((r = tree_add(t, name, ARTIFACT_SYMLINK)) < 0)
				break;
			t->a[t->n - 1].mode = 0777;
			if (!(t->a[t->n - 1].target = strdup(target)))
				r = -ENOMEM;
		} else if (S_ISDIR(st.st_mode)) {
			if ((r = tree_add(t, name, ARTIFACT_DIR)) < 0)
				break;
			t->a[t->n - 1].mode = st.st_mode & 0777;
			int sub = openat(dirfd, names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0) {
				r = stella_fail_errno(e, -errno, "%s/%s", t->src, name);
				break;
			}
			r = walk(t, sub, name, depth + 1, e);
			close(sub);
		} else {
			const char *what = S_ISFIFO(st.st_mode) ? "fifo" : S_ISSOCK(st.st_mode) ? "socket" :
					   S_ISCHR(st.st_mode) ? "character device" : "block device";
			r = stella_fail(e, -EBADMSG, "%s/%s: unsupported type (%s): kits hold files, directories and symlinks",
					t->src, name, what);
		}
	}
	if (r == -E2BIG)
		r = stella_fail(e, -EBADMSG, "%s: more than %u entries", t->src, STELLA_ARTIFACTS_MAX);
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
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
			/* pread_full says -EIO for a short read too: only a file now
			 * shorter than it was when listed has shrunk. */
			struct stat st;
			if (r == -EIO && fstat(fd, &st) == 0 && (uint64_t)st.st_size < a->size)
				return stella_fail(e, -EAGAIN, "%s/%s: file shrank while packing", t->src, a->name);
			return stella_fail_errno(e, r, "%s/%s: read", t->src, a->name);
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
	for (size_t i = 0; i < sp->n; i++)
		if (!memcmp(sp->e[i].fsverity, a->fsverity, 32))
			return 0; /* identical content: one tree serves both */
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

/* zstd kits are written as a sequence of frames, one per ZSTD_FRAME bytes
 * of tar stream: a frame boundary is where a reader can start decoding, so
 * the mount's seek points (source.c) can be that close.  A single frame, as
 * libarchive writes it, would make every random read decode from the start
 * of the kit.  `zstd -d` reads the frames as one stream. */
#define ZSTD_FRAME (4u << 20)

struct out {
	int fd;
	EVP_MD_CTX *sha;
	uint64_t size;
	int err;
	ZSTD_CCtx *zc;          /* zstd kits: we compress, libarchive writes plain tar */
	uint8_t *zbuf;
	size_t zcap;
	size_t frame_in;        /* tar bytes in the current frame */
};

static int raw_write(struct out *o, const void *buf, size_t len)
{
	int r = write_full(o->fd, buf, len);
	if (r < 0)
		return o->err = r;
	if (!EVP_DigestUpdate(o->sha, buf, len))
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

static int zstd_write(struct out *o, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		size_t take = MIN(len, ZSTD_FRAME - o->frame_in);
		ZSTD_inBuffer in = { buf, take, 0 };
		int r = zstd_push(o, &in, ZSTD_e_continue);
		if (r < 0)
			return r;
		o->frame_in += take;
		buf += take;
		len -= take;
		if (o->frame_in == ZSTD_FRAME) {
			ZSTD_inBuffer none = { NULL, 0, 0 };
			if ((r = zstd_push(o, &none, ZSTD_e_end)) < 0)
				return r;
			o->frame_in = 0;
		}
	}
	return 0;
}

static int zstd_finish(struct out *o)
{
	ZSTD_inBuffer none = { NULL, 0, 0 };
	return o->frame_in || o->size == 0 ? zstd_push(o, &none, ZSTD_e_end) : 0;
}

static la_ssize_t out_write(struct archive *a, void *data, const void *buf, size_t len)
{
	struct out *o = data;
	/* after a failure, nothing more: the temporary is going away */
	int r = o->err ? o->err : o->zc ? zstd_write(o, buf, len) : raw_write(o, buf, len);
	if (r < 0) {
		archive_set_error(a, -r, "%s", strerror(-r));
		return -1;
	}
	return (la_ssize_t)len;
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
			     const struct artifact *a, uint8_t *buf, int64_t mtime, struct stella_err *e)
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
	for (uint64_t off = 0; off < a->size && r == 0;) {
		size_t want = (size_t)MIN(a->size - off, (uint64_t)HASHER_CHUNK);
		if ((r = pread_full(fd, buf, want, off)) < 0) {
			struct stat st;
			if (r == -EIO && fstat(fd, &st) == 0 && (uint64_t)st.st_size < a->size)
				r = stella_fail(e, -EAGAIN, "%s/%s: file shrank while packing", t->src, a->name);
			else
				r = stella_fail_errno(e, r, "%s/%s: read", t->src, a->name);
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

static bool same_artifact(const struct artifact *x, const struct artifact *y)
{
	if (x->type != y->type || x->mode != y->mode)
		return false;
	if (x->type == ARTIFACT_FILE)
		return x->size == y->size && !memcmp(x->sha256, y->sha256, 32) &&
		       !memcmp(x->fsverity, y->fsverity, 32);
	if (x->type == ARTIFACT_SYMLINK)
		return !strcmp(x->target, y->target);
	return true;
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

int kit_write(const struct kitwrite_opts *o, struct kitwrite_result *res, struct stella_err *e)
{
	struct tree t = { .src = o->src_dir, .src_fd = -1 };
	struct spool sp = { 0 };
	struct hasher *h = NULL;
	struct archive *ar = NULL;
	struct out out = { .fd = -1 };
	struct manifest *m = o->manifest;
	char *json = NULL, *tmp = NULL, *sigtext = NULL;
	uint8_t *buf = NULL, *index = NULL;
	uint64_t *spool_off = NULL;
	int r;

	memset(res, 0, sizeof(*res));
	t.src_fd = open(o->src_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (t.src_fd < 0) {
		/* A SRC_DIR that is missing or no directory is the caller's
		 * argument (exit 2), but the message says what is wrong with it,
		 * not "Invalid argument". */
		int err = errno;
		if (err == ENOENT || err == ENOTDIR)
			r = stella_fail(e, -EINVAL, "%s: %s", o->src_dir, strerror(err));
		else
			r = stella_fail_errno(e, -err, "%s", o->src_dir);
		goto out;
	}
	if ((r = walk(&t, t.src_fd, "", 1, e)) < 0)
		goto out;
	drop_implied_dirs(&t);

	/* Pass 1: digests and trees. */
	if (!(sp.f = tmpfile())) {
		r = stella_fail_errno(e, -errno, "temporary tree file");
		goto out;
	}
	if ((r = hasher_new(&h, 0)) < 0)
		goto out;
	uint64_t total = 0, done = 0;
	for (size_t i = 0; i < t.n; i++)
		if (t.a[i].type == ARTIFACT_FILE)
			total += t.a[i].size;
	for (size_t i = 0; i < t.n; i++) {
		if (t.a[i].type != ARTIFACT_FILE)
			continue;
		if ((r = hash_file(&t, h, &t.a[i], &sp, o, &done, total, e)) < 0)
			goto out;
		res->files++;
		res->bytes += t.a[i].size;
	}
	hasher_free(h);
	h = NULL;

	/* The manifest: identity from the caller, artifacts from the tree. */
	for (size_t i = 0; i < t.n; i++)
		for (size_t c = 0; c < m->ncomponents; c++) {
			size_t pl = strlen(m->components[c].path);
			if (!strncmp(t.a[i].name, m->components[c].path, pl) &&
			    (t.a[i].name[pl] == '/' || t.a[i].name[pl] == 0))
				t.a[i].captured_at = m->components[c].captured_at;
		}
	m->artifacts = t.a;
	m->nartifacts = t.n;
	t.a = NULL;
	t.n = t.cap = 0;
	struct stella_err me = { 0 };
	if ((r = manifest_validate(m, &me)) < 0) {
		r = stella_fail(e, r, "%s: %s", o->src_dir, stella_err_text(&me, r));
		goto out;
	}
	size_t jlen;
	if ((r = manifest_write(m, &json, &jlen)) < 0)
		goto out;
	if ((r = sha256_once(json, jlen, res->manifest_sha256)) < 0) {
		r = stella_fail_errno(e, r, "%s: manifest: SHA-256", o->src_dir);
		goto out;
	}
	/* What we sign must be what every reader accepts: read it back with the
	 * reader's own rules (components, identifiers, times: all of them). */
	struct manifest *check = NULL;
	memset(&me, 0, sizeof(me));
	if ((r = manifest_parse(json, jlen, &check, &me)) < 0) {
		r = stella_fail(e, r, "%s: the kit would be refused: %s", o->src_dir, stella_err_text(&me, r));
		goto out;
	}
	manifest_free(check);

	/* Signatures: one line per key, in the order the keys were given. */
	size_t slen = 0;
	for (size_t k = 0; k < o->nkeys; k++) {
		char *line = NULL;
		if ((r = sig_sign(o->keys[k], (const uint8_t *)json, jlen, &line, e)) < 0)
			goto out;
		size_t ll = strlen(line);
		char *ns = realloc(sigtext, slen + ll + 2);
		if (!ns) {
			free(line);
			r = -ENOMEM;
			goto out;
		}
		sigtext = ns;
		memcpy(sigtext + slen, line, ll);
		sigtext[slen + ll] = '\n';
		slen += ll + 1;
		free(line);
	}

	/* merkle.bin: index sorted by digest, trees copied from the spool. */
	if (sp.n) {
		if (!(spool_off = malloc(sp.n * sizeof(*spool_off)))) {
			r = -ENOMEM;
			goto out;
		}
		qsort(sp.e, sp.n, sizeof(*sp.e), cmp_entry);
		for (size_t i = 0; i < sp.n; i++)
			spool_off[i] = sp.e[i].offset;
	}
	uint64_t msize = merklefile_layout(sp.e, sp.n);
	size_t ilen = MERKLEFILE_HEADER + sp.n * MERKLEFILE_ENTRY;
	if (!(index = malloc(ilen)) || !(buf = malloc(HASHER_CHUNK))) {
		r = -ENOMEM;
		goto out;
	}
	merklefile_encode_index(sp.e, sp.n, index);
	if (fflush(sp.f) != 0) {
		r = stella_fail_errno(e, -errno, "temporary tree file");
		goto out;
	}

	/* Pass 2: the archive, into a temporary beside OUT_KIT, renamed into
	 * place only when complete: a failed pack leaves no half kit. */
	size_t tl = strlen(o->out_path) + 16;
	if (!(tmp = malloc(tl))) {
		r = -ENOMEM;
		goto out;
	}
	snprintf(tmp, tl, "%s.tmpXXXXXX", o->out_path);
	out.fd = mkostemp(tmp, O_CLOEXEC);
	if (out.fd < 0) {
		r = stella_fail_errno(e, -errno, "%s", o->out_path);
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (fchmod(out.fd, 0644) < 0) {
		r = stella_fail_errno(e, -errno, "%s", o->out_path);
		goto out;
	}
	if (!(out.sha = EVP_MD_CTX_new()) || !EVP_DigestInit_ex2(out.sha, EVP_sha256(), NULL) ||
	    !(ar = archive_write_new())) {
		r = -ENOMEM;
		goto out;
	}
	archive_write_set_format_pax_restricted(ar);
	/* GNU tar's record size: the tar stream ends padded to it with zeros.
	 * A compressed kit must end where its compressed stream ends, so there
	 * the padding goes inside the stream, not after it. */
	archive_write_set_bytes_per_block(ar, 10240);
	if (o->compression != KIT_COMPRESS_NONE)
		archive_write_set_bytes_in_last_block(ar, 1);
	if (o->compression == KIT_COMPRESS_GZIP) {
		archive_write_add_filter_gzip(ar);
		/* No name, no time in the gzip header: reproducible bytes. */
		archive_write_set_filter_option(ar, "gzip", "timestamp", NULL);
	} else if (o->compression == KIT_COMPRESS_ZSTD) {
		out.zcap = ZSTD_CStreamOutSize();
		if (!(out.zc = ZSTD_createCCtx()) || !(out.zbuf = malloc(out.zcap))) {
			r = -ENOMEM;
			goto out;
		}
		/* fixed parameters: the same input gives the same bytes */
		ZSTD_CCtx_setParameter(out.zc, ZSTD_c_compressionLevel, 3);
		ZSTD_CCtx_setParameter(out.zc, ZSTD_c_checksumFlag, 1);
	}
	if (archive_write_open(ar, &out, NULL, out_write, NULL) != ARCHIVE_OK) {
		r = archive_error(ar, &out, -EIO, o->out_path, "archive", e);
		goto out;
	}
	int64_t mtime = m->created_at;
	if ((r = add_buffer(ar, KIT_MANIFEST_NAME, json, jlen, mtime)) < 0 ||
	    (r = add_buffer(ar, KIT_SIG_NAME, sigtext, slen, mtime)) < 0) {
		r = archive_error(ar, &out, r, o->out_path, "manifest", e);
		goto out;
	}
	if (sp.n) {
		if ((r = add_header(ar, KIT_MERKLE_NAME, ARTIFACT_FILE, 0644, msize, NULL, mtime)) < 0 ||
		    archive_write_data(ar, index, ilen) != (la_ssize_t)ilen) {
			r = archive_error(ar, &out, r, o->out_path, KIT_MERKLE_NAME, e);
			goto out;
		}
		for (size_t i = 0; i < sp.n; i++)
			for (uint64_t off = 0; off < sp.e[i].size;) {
				size_t want = (size_t)MIN(sp.e[i].size - off, (uint64_t)HASHER_CHUNK);
				if ((r = pread_full(fileno(sp.f), buf, want, spool_off[i] + off)) < 0) {
					r = stella_fail_errno(e, r, "temporary tree file");
					goto out;
				}
				if (archive_write_data(ar, buf, want) != (la_ssize_t)want) {
					r = archive_error(ar, &out, -EIO, o->out_path, KIT_MERKLE_NAME, e);
					goto out;
				}
				off += want;
			}
	}
	for (size_t i = 0; i < m->nartifacts; i++) {
		const struct artifact *a = &m->artifacts[i];
		if (o->base) {
			const struct artifact *b = manifest_find(o->base, a->name);
			if (b && same_artifact(a, b)) {
				res->from_base++;
				continue;
			}
		}
		res->carried++;
		if (a->type == ARTIFACT_FILE)
			r = write_member_file(ar, &out, o->out_path, &t, a, buf, mtime, e);
		else if ((r = add_header(ar, a->name, a->type, a->mode, 0, a->target, mtime)) < 0)
			r = archive_error(ar, &out, r, o->out_path, a->name, e);
		if (r < 0)
			goto out;
	}
	if (archive_write_close(ar) != ARCHIVE_OK || (out.zc && zstd_finish(&out) < 0)) {
		r = archive_error(ar, &out, -EIO, o->out_path, "archive end", e);
		goto out;
	}
	if (fsync(out.fd) < 0) {
		r = stella_fail_errno(e, -errno, "%s", o->out_path);
		goto out;
	}
	if (!EVP_DigestFinal_ex(out.sha, res->kit_sha256, NULL)) {
		r = stella_fail(e, -ENOMEM, "%s: hashing failed in OpenSSL", o->out_path);
		goto out;
	}
	res->kit_size = out.size;
	/* The sidecars first, from the complete temporary, and the kit last:
	 * OUT_KIT appears only with all three beside it.  A failure on the way
	 * removes the sidecars already placed: an older kit at OUT_KIT then
	 * stays without sidecars, rather than with ones that do not describe
	 * it. */
	unsigned placed = 0;
	if ((r = write_sidecars(o, m, out.fd, res, &placed, e)) == 0 && rename(tmp, o->out_path) < 0)
		r = stella_fail_errno(e, -errno, "%s", o->out_path);
	if (r < 0) {
		remove_sidecars(o->out_path, placed);
		goto out;
	}
	free(tmp);
	tmp = NULL;
out:
	if (ar) {
		/* libarchive 3.6 frees its output block only when the archive is
		 * closed, and archive_write_free() of an archive in the FATAL state
		 * (a write failed) does not close it: close it first (out_write
		 * refuses what closing would still write). */
		if (r < 0) {
			if (!out.err)
				out.err = -EIO;
			archive_write_close(ar);
		}
		archive_write_free(ar);
	}
	if (out.fd >= 0)
		close(out.fd);
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	EVP_MD_CTX_free(out.sha);
	ZSTD_freeCCtx(out.zc);
	free(out.zbuf);
	hasher_free(h);
	if (sp.f)
		fclose(sp.f);
	free(sp.e);
	free(spool_off);
	free(index);
	free(buf);
	free(json);
	free(sigtext);
	for (size_t i = 0; i < t.n; i++) {
		free(t.a[i].name);
		free(t.a[i].target);
	}
	free(t.a);
	if (t.src_fd >= 0)
		close(t.src_fd);
	return r;
}
