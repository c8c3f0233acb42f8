/* Fault injection for the test build (tests/fault/meson.build).
 *
 * stellakit-fault and stellafs-fault are linked from the very objects of
 * stellakit and stellafs, with `-Wl,--wrap=SYM` for every call listed below:
 * the linker sends each call our code (core/, tools/, fs/) makes to SYM to
 * __wrap_SYM here, which counts it and either fails it or passes it on to
 * __real_SYM.  Calls made inside libc, OpenSSL, libarchive, SQLite... are not
 * ours and are neither counted nor failed.  core/ has no #ifdef for this.
 *
 * Environment:
 *   STELLA_FAULT_N=N          fail the Nth counted call (1-based); unset or 0:
 *                             count only
 *   STELLA_FAULT_SHUTDOWN=K   stellafs: instead, fail the Kth call after the FUSE
 *                             loop returned (the unmount): the shutdown path,
 *                             whatever the serving before it took
 *   STELLA_FAULT_CLASSES=L    comma-separated classes to count (default all):
 *                             io, alloc, crypto, sqlite; and digest
 *                             (EVP_Digest, once per 4 KiB block hashed),
 *                             counted only when named
 *   STELLA_FAULT_REPORT=FILE  append to FILE, when the fault fires:
 *                               fire pid=P n=N op=OP caller=0xOFF
 *                             (OFF: where the failed call was made, as an
 *                             offset in the executable: addr2line -f -e
 *                             BINARY 0xOFF names it), and at exit:
 *                               exit pid=P calls=C fork=F loop=L end=E
 *                             calls: counted calls; fork: the count when the
 *                             process was forked (0: never); loop and end: the
 *                             count when the FUSE loop started and returned
 *                             (stellafs; 0: never).
 *                             A process that dies of a signal, or hangs, has
 *                             no exit line.
 *
 * A failed call fails the way the real one can: I/O calls return -1 with EIO
 * (ENOSPC for calls that allocate disk space), allocations return NULL with
 * ENOMEM, OpenSSL init and signing calls return 0, SQLite calls return
 * SQLITE_IOERR (SQLITE_NOMEM for prepare and open), and sqlite3_errcode /
 * sqlite3_errmsg tell the caller about it as SQLite would. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sqlite3.h>
#include <yajl/yajl_gen.h>
#include <zlib.h>
#include <zstd.h>

enum {
	FC_IO = 1,
	FC_ALLOC = 2,
	FC_CRYPTO = 4,
	FC_SQLITE = 8,
	FC_ALL = 15,
	FC_DIGEST = 16, /* not in "all": see the header */
};

/* Shared with fault_fuse.c (stellafs-fault), hence not static. */
extern unsigned long stella_fault_n, stella_fault_calls, stella_fault_loop_at, stella_fault_loop_end;
unsigned long stella_fault_n;        /* the call to fail (atomic: fault_fuse.c may re-arm it) */
unsigned long stella_fault_calls;    /* calls counted so far (atomic: any thread) */
unsigned long stella_fault_loop_at;  /* the count when the FUSE loop started */
unsigned long stella_fault_loop_end; /* and when it returned */

static unsigned fault_classes = FC_ALL;
static const char *report_path;
static unsigned long fork_at;

/* The SQLite connection a faked failure belongs to, and its code, until
 * the next real call on it. */
static sqlite3 *fault_db;
static int fault_db_code;

static void report(void);

static void after_fork_child(void)
{
	fork_at = __atomic_load_n(&stella_fault_calls, __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void fault_init(void)
{
	const char *s = getenv("STELLA_FAULT_N");
	if (s && *s)
		stella_fault_n = strtoul(s, NULL, 10);
	s = getenv("STELLA_FAULT_CLASSES");
	if (s && *s && strcmp(s, "all")) {
		fault_classes = 0;
		static const struct { const char *name; unsigned bit; } names[] = {
			{ "io", FC_IO }, { "alloc", FC_ALLOC }, { "crypto", FC_CRYPTO }, { "sqlite", FC_SQLITE },
			{ "digest", FC_DIGEST },
		};
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
			const char *p = strstr(s, names[i].name);
			size_t l = strlen(names[i].name);
			if (p && (p == s || p[-1] == ',') && (p[l] == 0 || p[l] == ','))
				fault_classes |= names[i].bit;
		}
	}
	report_path = getenv("STELLA_FAULT_REPORT");
	pthread_atfork(NULL, NULL, after_fork_child);
	/* atexit, not a destructor: it runs before LeakSanitizer's check, so a
	 * leak report (which exits) does not hide the line. */
	if (report_path && *report_path)
		atexit(report);
}

int __real_open64(const char *path, int flags, ...);
int __real_close(int fd);
ssize_t __real_write(int fd, const void *buf, size_t n);

static void report_line(const char *line, size_t n)
{
	if (!report_path || !*report_path)
		return;
	int fd = __real_open64(report_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd >= 0) {
		if (__real_write(fd, line, n) < 0) {
			/* nothing to do: the test sees no line */
		}
		__real_close(fd);
	}
}

static void report(void)
{
	char line[256];
	int n = snprintf(line, sizeof(line), "exit pid=%d calls=%lu fork=%lu loop=%lu end=%lu\n", (int)getpid(),
			 __atomic_load_n(&stella_fault_calls, __ATOMIC_RELAXED), fork_at, stella_fault_loop_at,
			 stella_fault_loop_end);
	report_line(line, (size_t)n);
}

/* Count one call of class cls; true when this is the one to fail.  The
 * caller's address says where (the return address into our code). */
static bool inject(unsigned cls, const char *op, void *caller)
{
	if (!(cls & fault_classes))
		return false;
	unsigned long n = __atomic_add_fetch(&stella_fault_calls, 1, __ATOMIC_RELAXED);
	unsigned long want = __atomic_load_n(&stella_fault_n, __ATOMIC_RELAXED);
	if (!want || n != want)
		return false;
	/* Written now: a process that then crashes or hangs still says which
	 * call failed, and where. */
	uintptr_t at = (uintptr_t)caller - 1; /* inside the call instruction */
	Dl_info info;
	if (dladdr((void *)at, &info) && info.dli_fbase)
		at -= (uintptr_t)info.dli_fbase;
	char line[256];
	int len = snprintf(line, sizeof(line), "fire pid=%d n=%lu op=%s caller=0x%lx\n", (int)getpid(), n, op,
			   (unsigned long)at);
	report_line(line, (size_t)len);
	return true;
}

#define FAIL(cls, op) inject(cls, op, __builtin_return_address(0))

/* ---- I/O ---- */

ssize_t __real_read(int fd, void *buf, size_t n);
ssize_t __wrap_read(int fd, void *buf, size_t n);
ssize_t __wrap_read(int fd, void *buf, size_t n)
{
	if (FAIL(FC_IO, "read"))
		return errno = EIO, -1;
	return __real_read(fd, buf, n);
}

ssize_t __real_pread64(int fd, void *buf, size_t n, off_t off);
ssize_t __wrap_pread64(int fd, void *buf, size_t n, off_t off);
ssize_t __wrap_pread64(int fd, void *buf, size_t n, off_t off)
{
	if (FAIL(FC_IO, "pread"))
		return errno = EIO, -1;
	return __real_pread64(fd, buf, n, off);
}

ssize_t __wrap_write(int fd, const void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
	if (FAIL(FC_IO, "write"))
		return errno = ENOSPC, -1;
	return __real_write(fd, buf, n);
}

size_t __real_fwrite(const void *p, size_t size, size_t n, FILE *f);
size_t __wrap_fwrite(const void *p, size_t size, size_t n, FILE *f);
size_t __wrap_fwrite(const void *p, size_t size, size_t n, FILE *f)
{
	if (FAIL(FC_IO, "fwrite")) {
		errno = ENOSPC;
		return 0;
	}
	return __real_fwrite(p, size, n, f);
}

int __real_fflush(FILE *f);
int __wrap_fflush(FILE *f);
int __wrap_fflush(FILE *f)
{
	if (FAIL(FC_IO, "fflush"))
		return errno = EIO, EOF;
	return __real_fflush(f);
}

int __real_fsync(int fd);
int __wrap_fsync(int fd);
int __wrap_fsync(int fd)
{
	if (FAIL(FC_IO, "fsync"))
		return errno = EIO, -1;
	return __real_fsync(fd);
}

int __real_syncfs(int fd);
int __wrap_syncfs(int fd);
int __wrap_syncfs(int fd)
{
	if (FAIL(FC_IO, "syncfs"))
		return errno = EIO, -1;
	return __real_syncfs(fd);
}

int __real_close(int fd);
int __wrap_close(int fd);
int __wrap_close(int fd)
{
	/* Linux releases the descriptor whatever close returns. */
	int r = __real_close(fd);
	if (FAIL(FC_IO, "close"))
		return errno = EIO, -1;
	return r;
}

int __real_rename(const char *a, const char *b);
int __wrap_rename(const char *a, const char *b);
int __wrap_rename(const char *a, const char *b)
{
	if (FAIL(FC_IO, "rename"))
		return errno = EIO, -1;
	return __real_rename(a, b);
}

int __real_renameat(int da, const char *a, int db, const char *b);
int __wrap_renameat(int da, const char *a, int db, const char *b);
int __wrap_renameat(int da, const char *a, int db, const char *b)
{
	if (FAIL(FC_IO, "renameat"))
		return errno = EIO, -1;
	return __real_renameat(da, a, db, b);
}

static bool creates(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

int __wrap_open64(const char *path, int flags, ...);
int __wrap_open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (creates(flags)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, unsigned);
		va_end(ap);
	}
	if (FAIL(FC_IO, "open"))
		return errno = creates(flags) ? ENOSPC : EIO, -1;
	return __real_open64(path, flags, mode);
}

int __real_openat64(int dirfd, const char *path, int flags, ...);
int __wrap_openat64(int dirfd, const char *path, int flags, ...);
int __wrap_openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (creates(flags)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, unsigned);
		va_end(ap);
	}
	if (FAIL(FC_IO, "openat"))
		return errno = creates(flags) ? ENOSPC : EIO, -1;
	return __real_openat64(dirfd, path, flags, mode);
}

int __real_mkostemp64(char *tmpl, int flags);
int __wrap_mkostemp64(char *tmpl, int flags);
int __wrap_mkostemp64(char *tmpl, int flags)
{
	if (FAIL(FC_IO, "mkostemp"))
		return errno = ENOSPC, -1;
	return __real_mkostemp64(tmpl, flags);
}

FILE *__real_tmpfile64(void);
FILE *__wrap_tmpfile64(void);
FILE *__wrap_tmpfile64(void)
{
	if (FAIL(FC_IO, "tmpfile"))
		return errno = ENOSPC, NULL;
	return __real_tmpfile64();
}

char *__real_mkdtemp(char *tmpl);
char *__wrap_mkdtemp(char *tmpl);
char *__wrap_mkdtemp(char *tmpl)
{
	if (FAIL(FC_IO, "mkdtemp"))
		return errno = ENOSPC, NULL;
	return __real_mkdtemp(tmpl);
}

int __real_mkdir(const char *path, mode_t mode);
int __wrap_mkdir(const char *path, mode_t mode);
int __wrap_mkdir(const char *path, mode_t mode)
{
	if (FAIL(FC_IO, "mkdir"))
		return errno = ENOSPC, -1;
	return __real_mkdir(path, mode);
}

int __real_mkdirat(int dirfd, const char *path, mode_t mode);
int __wrap_mkdirat(int dirfd, const char *path, mode_t mode);
int __wrap_mkdirat(int dirfd, const char *path, mode_t mode)
{
	if (FAIL(FC_IO, "mkdirat"))
		return errno = ENOSPC, -1;
	return __real_mkdirat(dirfd, path, mode);
}

DIR *__real_opendir(const char *path);
DIR *__wrap_opendir(const char *path);
DIR *__wrap_opendir(const char *path)
{
	if (FAIL(FC_IO, "opendir"))
		return errno = EIO, NULL;
	return __real_opendir(path);
}

struct dirent64 *__real_readdir64(DIR *d);
struct dirent64 *__wrap_readdir64(DIR *d);
struct dirent64 *__wrap_readdir64(DIR *d)
{
	if (FAIL(FC_IO, "readdir"))
		return errno = EIO, NULL;
	return __real_readdir64(d);
}

/* ---- allocation ---- */

void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_malloc(size_t n)
{
	if (FAIL(FC_ALLOC, "malloc"))
		return errno = ENOMEM, NULL;
	return __real_malloc(n);
}

void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size)
{
	if (FAIL(FC_ALLOC, "calloc"))
		return errno = ENOMEM, NULL;
	return __real_calloc(n, size);
}

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n)
{
	if (FAIL(FC_ALLOC, "realloc"))
		return errno = ENOMEM, NULL;
	return __real_realloc(p, n);
}

char *__real_strdup(const char *s);
char *__wrap_strdup(const char *s);
char *__wrap_strdup(const char *s)
{
	if (FAIL(FC_ALLOC, "strdup"))
		return errno = ENOMEM, NULL;
	return __real_strdup(s);
}

char *__real_realpath(const char *path, char *resolved);
char *__wrap_realpath(const char *path, char *resolved);
char *__wrap_realpath(const char *path, char *resolved)
{
	if (!resolved && FAIL(FC_ALLOC, "realpath"))
		return errno = ENOMEM, NULL;
	return __real_realpath(path, resolved);
}

DIR *__real_fdopendir(int fd);
DIR *__wrap_fdopendir(int fd);
DIR *__wrap_fdopendir(int fd)
{
	if (FAIL(FC_ALLOC, "fdopendir"))
		return errno = ENOMEM, NULL;
	return __real_fdopendir(fd);
}

void *__real_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (FAIL(FC_ALLOC, "mmap"))
		return errno = ENOMEM, MAP_FAILED;
	return __real_mmap64(addr, len, prot, flags, fd, off);
}

EVP_MD_CTX *__real_EVP_MD_CTX_new(void);
EVP_MD_CTX *__wrap_EVP_MD_CTX_new(void);
EVP_MD_CTX *__wrap_EVP_MD_CTX_new(void)
{
	if (FAIL(FC_ALLOC, "EVP_MD_CTX_new"))
		return NULL;
	return __real_EVP_MD_CTX_new();
}

BIO *__real_BIO_new(const BIO_METHOD *m);
BIO *__wrap_BIO_new(const BIO_METHOD *m);
BIO *__wrap_BIO_new(const BIO_METHOD *m)
{
	if (FAIL(FC_ALLOC, "BIO_new"))
		return NULL;
	return __real_BIO_new(m);
}

BIO *__real_BIO_new_mem_buf(const void *buf, int len);
BIO *__wrap_BIO_new_mem_buf(const void *buf, int len);
BIO *__wrap_BIO_new_mem_buf(const void *buf, int len)
{
	if (FAIL(FC_ALLOC, "BIO_new_mem_buf"))
		return NULL;
	return __real_BIO_new_mem_buf(buf, len);
}

int __real_i2d_PUBKEY(const EVP_PKEY *k, unsigned char **out);
int __wrap_i2d_PUBKEY(const EVP_PKEY *k, unsigned char **out);
int __wrap_i2d_PUBKEY(const EVP_PKEY *k, unsigned char **out)
{
	if (FAIL(FC_ALLOC, "i2d_PUBKEY"))
		return -1;
	return __real_i2d_PUBKEY(k, out);
}

ZSTD_CCtx *__real_ZSTD_createCCtx(void);
ZSTD_CCtx *__wrap_ZSTD_createCCtx(void);
ZSTD_CCtx *__wrap_ZSTD_createCCtx(void)
{
	if (FAIL(FC_ALLOC, "ZSTD_createCCtx"))
		return NULL;
	return __real_ZSTD_createCCtx();
}

ZSTD_DCtx *__real_ZSTD_createDCtx(void);
ZSTD_DCtx *__wrap_ZSTD_createDCtx(void);
ZSTD_DCtx *__wrap_ZSTD_createDCtx(void)
{
	if (FAIL(FC_ALLOC, "ZSTD_createDCtx"))
		return NULL;
	return __real_ZSTD_createDCtx();
}

int __real_inflateInit2_(z_streamp z, int bits, const char *version, int size);
int __wrap_inflateInit2_(z_streamp z, int bits, const char *version, int size);
int __wrap_inflateInit2_(z_streamp z, int bits, const char *version, int size)
{
	if (FAIL(FC_ALLOC, "inflateInit2")) {
		z->msg = (char *)"insufficient memory";
		return Z_MEM_ERROR;
	}
	return __real_inflateInit2_(z, bits, version, size);
}

struct archive *__real_archive_read_new(void);
struct archive *__wrap_archive_read_new(void);
struct archive *__wrap_archive_read_new(void)
{
	if (FAIL(FC_ALLOC, "archive_read_new"))
		return NULL;
	return __real_archive_read_new();
}

struct archive *__real_archive_write_new(void);
struct archive *__wrap_archive_write_new(void);
struct archive *__wrap_archive_write_new(void)
{
	if (FAIL(FC_ALLOC, "archive_write_new"))
		return NULL;
	return __real_archive_write_new();
}

struct archive_entry *__real_archive_entry_new(void);
struct archive_entry *__wrap_archive_entry_new(void);
struct archive_entry *__wrap_archive_entry_new(void)
{
	if (FAIL(FC_ALLOC, "archive_entry_new"))
		return NULL;
	return __real_archive_entry_new();
}

yajl_gen __real_yajl_gen_alloc(const yajl_alloc_funcs *f);
yajl_gen __wrap_yajl_gen_alloc(const yajl_alloc_funcs *f);
yajl_gen __wrap_yajl_gen_alloc(const yajl_alloc_funcs *f)
{
	if (FAIL(FC_ALLOC, "yajl_gen_alloc"))
		return NULL;
	return __real_yajl_gen_alloc(f);
}

/* ---- OpenSSL: context set-up and signing ---- */

/* One-shot SHA-256 (core/merkle.c sha256_once): fails as OpenSSL does when it
 * cannot allocate its context. */
int __real_EVP_Digest(const void *d, size_t n, unsigned char *md, unsigned int *len, const EVP_MD *t, ENGINE *e);
int __wrap_EVP_Digest(const void *d, size_t n, unsigned char *md, unsigned int *len, const EVP_MD *t, ENGINE *e);
int __wrap_EVP_Digest(const void *d, size_t n, unsigned char *md, unsigned int *len, const EVP_MD *t, ENGINE *e)
{
	if (FAIL(FC_DIGEST, "EVP_Digest"))
		return 0;
	return __real_EVP_Digest(d, n, md, len, t, e);
}

int __real_EVP_DigestInit_ex2(EVP_MD_CTX *c, const EVP_MD *md, const OSSL_PARAM *p);
int __wrap_EVP_DigestInit_ex2(EVP_MD_CTX *c, const EVP_MD *md, const OSSL_PARAM *p);
int __wrap_EVP_DigestInit_ex2(EVP_MD_CTX *c, const EVP_MD *md, const OSSL_PARAM *p)
{
	if (FAIL(FC_CRYPTO, "EVP_DigestInit_ex2"))
		return 0;
	return __real_EVP_DigestInit_ex2(c, md, p);
}

int __real_EVP_DigestSignInit_ex(EVP_MD_CTX *c, EVP_PKEY_CTX **pc, const char *md, OSSL_LIB_CTX *l,
				 const char *props, EVP_PKEY *k, const OSSL_PARAM *p);
int __wrap_EVP_DigestSignInit_ex(EVP_MD_CTX *c, EVP_PKEY_CTX **pc, const char *md, OSSL_LIB_CTX *l,
				 const char *props, EVP_PKEY *k, const OSSL_PARAM *p);
int __wrap_EVP_DigestSignInit_ex(EVP_MD_CTX *c, EVP_PKEY_CTX **pc, const char *md, OSSL_LIB_CTX *l,
				 const char *props, EVP_PKEY *k, const OSSL_PARAM *p)
{
	if (FAIL(FC_CRYPTO, "EVP_DigestSignInit_ex"))
		return 0;
	return __real_EVP_DigestSignInit_ex(c, pc, md, l, props, k, p);
}

int __real_EVP_DigestVerifyInit_ex(EVP_MD_CTX *c, EVP_PKEY_CTX **pc, const char *md, OSSL_LIB_CTX *l,
				   const char *props, EVP_PKEY *k, const OSSL_PARAM *p);
int __wrap_EVP_DigestVerifyInit_ex(EVP_MD_CTX *c, EVP_PKEY_CTX **pc, const char *md, OSSL_LIB_CTX *l,
				   const char *props, EVP_PKEY *k, const OSSL_PARAM *p);
int __wrap_EVP_DigestVerifyInit_ex(EVP_MD_CTX *c, EVP_PKEY_CTX **pc, const char *md, OSSL_LIB_CTX *l,
				   const char *props, EVP_PKEY *k, const OSSL_PARAM *p)
{
	if (FAIL(FC_CRYPTO, "EVP_DigestVerifyInit_ex"))
		return 0;
	return __real_EVP_DigestVerifyInit_ex(c, pc, md, l, props, k, p);
}

int __real_EVP_DigestSign(EVP_MD_CTX *c, unsigned char *sig, size_t *n, const unsigned char *m, size_t len);
int __wrap_EVP_DigestSign(EVP_MD_CTX *c, unsigned char *sig, size_t *n, const unsigned char *m, size_t len);
int __wrap_EVP_DigestSign(EVP_MD_CTX *c, unsigned char *sig, size_t *n, const unsigned char *m, size_t len)
{
	if (FAIL(FC_CRYPTO, "EVP_DigestSign"))
		return 0;
	return __real_EVP_DigestSign(c, sig, n, m, len);
}

int __real_EVP_DigestSignFinal(EVP_MD_CTX *c, unsigned char *sig, size_t *n);
int __wrap_EVP_DigestSignFinal(EVP_MD_CTX *c, unsigned char *sig, size_t *n);
int __wrap_EVP_DigestSignFinal(EVP_MD_CTX *c, unsigned char *sig, size_t *n)
{
	if (FAIL(FC_CRYPTO, "EVP_DigestSignFinal"))
		return 0;
	return __real_EVP_DigestSignFinal(c, sig, n);
}

/* ---- SQLite ---- */

static void db_fault(sqlite3 *db, int code)
{
	__atomic_store_n(&fault_db, db, __ATOMIC_RELAXED);
	fault_db_code = code;
}

static void db_real(sqlite3 *db)
{
	sqlite3 *cur = __atomic_load_n(&fault_db, __ATOMIC_RELAXED);
	if (cur && cur == db)
		__atomic_compare_exchange_n(&fault_db, &cur, NULL, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

int __real_sqlite3_open_v2(const char *path, sqlite3 **db, int flags, const char *vfs);
int __wrap_sqlite3_open_v2(const char *path, sqlite3 **db, int flags, const char *vfs);
int __wrap_sqlite3_open_v2(const char *path, sqlite3 **db, int flags, const char *vfs)
{
	if (FAIL(FC_SQLITE, "sqlite3_open_v2")) {
		*db = NULL; /* what SQLite does when it cannot allocate the handle */
		return SQLITE_NOMEM;
	}
	return __real_sqlite3_open_v2(path, db, flags, vfs);
}

int __real_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **s, const char **tail);
int __wrap_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **s, const char **tail);
int __wrap_sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **s, const char **tail)
{
	if (FAIL(FC_SQLITE, "sqlite3_prepare_v2")) {
		*s = NULL;
		db_fault(db, SQLITE_NOMEM);
		return SQLITE_NOMEM;
	}
	db_real(db);
	return __real_sqlite3_prepare_v2(db, sql, n, s, tail);
}

int __real_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **s,
			      const char **tail);
int __wrap_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **s,
			      const char **tail);
int __wrap_sqlite3_prepare_v3(sqlite3 *db, const char *sql, int n, unsigned flags, sqlite3_stmt **s,
			      const char **tail)
{
	if (FAIL(FC_SQLITE, "sqlite3_prepare_v3")) {
		*s = NULL;
		db_fault(db, SQLITE_NOMEM);
		return SQLITE_NOMEM;
	}
	db_real(db);
	return __real_sqlite3_prepare_v3(db, sql, n, flags, s, tail);
}

int __real_sqlite3_step(sqlite3_stmt *s);
int __wrap_sqlite3_step(sqlite3_stmt *s);
int __wrap_sqlite3_step(sqlite3_stmt *s)
{
	sqlite3 *db = sqlite3_db_handle(s);
	if (FAIL(FC_SQLITE, "sqlite3_step")) {
		db_fault(db, SQLITE_IOERR);
		return SQLITE_IOERR;
	}
	db_real(db);
	return __real_sqlite3_step(s);
}

int __real_sqlite3_exec(sqlite3 *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg,
			char **err);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg,
			char **err);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg,
			char **err)
{
	if (FAIL(FC_SQLITE, "sqlite3_exec")) {
		db_fault(db, SQLITE_IOERR);
		if (err)
			*err = sqlite3_mprintf("%s", sqlite3_errstr(SQLITE_IOERR));
		return SQLITE_IOERR;
	}
	db_real(db);
	return __real_sqlite3_exec(db, sql, cb, arg, err);
}

/* Not counted: they report the faked failure as SQLite reports a real one. */
int __real_sqlite3_errcode(sqlite3 *db);
int __wrap_sqlite3_errcode(sqlite3 *db);
int __wrap_sqlite3_errcode(sqlite3 *db)
{
	if (db && __atomic_load_n(&fault_db, __ATOMIC_RELAXED) == db)
		return fault_db_code;
	return __real_sqlite3_errcode(db);
}

const char *__real_sqlite3_errmsg(sqlite3 *db);
const char *__wrap_sqlite3_errmsg(sqlite3 *db);
const char *__wrap_sqlite3_errmsg(sqlite3 *db)
{
	if (db && __atomic_load_n(&fault_db, __ATOMIC_RELAXED) == db)
		return sqlite3_errstr(fault_db_code);
	return __real_sqlite3_errmsg(db);
}
