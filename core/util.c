#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <time.h>
#include <sys/stat.h>

int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int read_file(const char *path, size_t max, char **out, size_t *len)
{
	/* A regular file only, and anything else refused without being waited
	 * on: opening a FIFO for reading blocks until a writer comes (a FIFO
	 * named like a trust key hung mounts).  Checked before the open, and
	 * again on what was opened. */
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	_cleanup_(closep) int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if ((uint64_t)st.st_size > max)
		return -EFBIG;
	size_t n = (size_t)st.st_size;
	char *buf = malloc(n + 1);
	if (!buf)
		return -ENOMEM;
	int r = pread_full(fd, buf, n, 0);
	if (r < 0) {
		free(buf);
		return r;
	}
	buf[n] = 0;
	*out = buf;
	if (len)
		*len = n;
	return 0;
}

int write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode)
{
	size_t n = strlen(path) + 16;
	_cleanup_(freep) char *tmp = malloc(n);
	if (!tmp)
		return -ENOMEM;
	snprintf(tmp, n, "%s.tmpXXXXXX", path);
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = write_full(fd, buf, len);
	if (r == 0 && fchmod(fd, mode) < 0)
		r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

void hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = 0;
}

/* A table, not comparisons: digests are random, so a branch per digit
 * mispredicts about half the time (a 100 000-file manifest has 13 million
 * digits to decode). 16 marks a non-digit. */
#define H16 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16
static const uint8_t hexval[256] = {
	H16, H16, H16,
	0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 16, 16, 16, 16, 16,
	16, 10, 11, 12, 13, 14, 15, 16, 16, 16, 16, 16, 16, 16, 16, 16, H16,
	16, 10, 11, 12, 13, 14, 15, 16, 16, 16, 16, 16, 16, 16, 16, 16, H16,
	H16, H16, H16, H16, H16, H16, H16, H16,
};

int hex_decode(const char *in, uint8_t *out, size_t n)
{
	if (strnlen(in, 2 * n + 1) != 2 * n)
		return -EINVAL;
	unsigned bad = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned hi = hexval[(uint8_t)in[2 * i]], lo = hexval[(uint8_t)in[2 * i + 1]];
		bad |= hi | lo;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return bad & 16 ? -EINVAL : 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *base64_encode(const uint8_t *in, size_t n)
{
	char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		*o++ = b64[v >> 18 & 63];
		*o++ = b64[v >> 12 & 63];
		*o++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
		*o++ = i + 2 < n ? b64[v & 63] : '=';
	}
	*o = 0;
	return out;
}

ssize_t base64_decode(const char *in, size_t n, uint8_t *out, size_t cap)
{
	if (n == 0 || n % 4)
		return -EINVAL;
	size_t len = 0;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t v = 0;
		int pad = 0;
		for (int j = 0; j < 4; j++) {
			char c = in[i + j];
			const char *p = c ? strchr(b64, c) : NULL;
			if (c == '=' && i + 4 == n && j >= 2) {
				pad++;
				v <<= 6;
				continue;
			}
			if (!p || pad)
				return -EINVAL;
			v = v << 6 | (uint32_t)(p - b64);
		}
		for (int j = 0; j < 3 - pad; j++) {
			if (len >= cap)
				return -EINVAL;
			out[len++] = (uint8_t)(v >> (16 - 8 * j));
		}
	}
	return (ssize_t)len;
}

static int digits(const char **s, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++, (*s)++) {
		if (**s < '0' || **s > '9')
			return -EINVAL;
		v = v * 10 + (**s - '0');
	}
	*out = v;
	return 0;
}

int time_parse(const char *s, int64_t *out)
{
	int Y, M, D, h, m, sec;
	if (digits(&s, 4, &Y) || *s++ != '-' || digits(&s, 2, &M) || *s++ != '-' ||
	    digits(&s, 2, &D) || (*s != 'T' && *s != 't') || !*s++ ||
	    digits(&s, 2, &h) || *s++ != ':' || digits(&s, 2, &m) || *s++ != ':' ||
	    digits(&s, 2, &sec))
		return -EINVAL;
	static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
	if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || (M == 2 && D == 29 && !leap) ||
	    h > 23 || m > 59 || sec > 60)
		return -EINVAL;
	if (*s == '.') {
		s++;
		if (*s < '0' || *s > '9')
			return -EINVAL;
		while (*s >= '0' && *s <= '9')
			s++;
	}
	int offset = 0;
	if (*s == 'Z' || *s == 'z') {
		s++;
	} else if (*s == '+' || *s == '-') {
		int sign = *s++ == '-' ? -1 : 1, oh, om;
		if (digits(&s, 2, &oh) || *s++ != ':' || digits(&s, 2, &om) || oh > 23 || om > 59)
			return -EINVAL;
		offset = sign * (oh * 3600 + om * 60);
	} else {
		return -EINVAL;
	}
	if (*s)
		return -EINVAL;
	/* Days from civil (Howard Hinnant's algorithm): no timegm, no TZ. */
	int y = Y - (M <= 2);
	int era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (unsigned)((153 * (M + (M > 2 ? -3 : 9)) + 2) / 5 + D - 1);
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	int64_t days = (int64_t)era * 146097 + doe - 719468;
	int64_t t = days * 86400 + h * 3600 + m * 60 + (sec > 59 ? 59 : sec) - offset;
	/* Only what time_format writes back as the same text: 1970 to 9999.
	 * (The fuzzer found year 506 accepted and written as "506-...".) */
	if (t < 0 || t > INT64_C(253402300799))
		return -EINVAL;
	*out = t;
	return 0;
}

void time_format(int64_t t, char out[32])
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (!gmtime_r(&tt, &tm)) {
		snprintf(out, 32, "1970-01-01T00:00:00Z");
		return;
	}
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int parse_u64(const char *s, uint64_t *out)
{
	/* digits only: strtoull would skip leading white space of any kind
	 * (tab, CR, VT, FF) and take a sign */
	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

struct scratch {
	uint8_t *p[SCRATCH_SLOTS];
	size_t cap[SCRATCH_SLOTS];
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v)
{
	struct scratch *sc = v;
	for (int i = 0; i < SCRATCH_SLOTS; i++)
		free(sc->p[i]);
	free(sc);
}

static void scratch_key_init(void)
{
	pthread_key_create(&scratch_key, scratch_free);
}

void *thread_scratch(unsigned slot, size_t need)
{
	pthread_once(&scratch_once, scratch_key_init);
	struct scratch *sc = pthread_getspecific(scratch_key);
	if (!sc) {
		if (!(sc = calloc(1, sizeof(*sc))))
			return NULL;
		pthread_setspecific(scratch_key, sc);
	}
	if (sc->cap[slot] < need) {
		uint8_t *p = realloc(sc->p[slot], need);
		if (!p)
			return NULL;
		sc->p[slot] = p;
		sc->cap[slot] = need;
	}
	return sc->p[slot];
}

void text_escape(const char *in, char *out, size_t n)
{
	size_t o = 0;
	for (; *in; in++) {
		unsigned char c = (unsigned char)*in;
		bool ctl = c < 0x20 || c == 0x7f;
		if (o + (ctl ? 4 : 1) >= n)
			break;
		if (ctl) {
			snprintf(out + o, 5, "\\x%02x", c);
			o += 4;
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = 0;
}
