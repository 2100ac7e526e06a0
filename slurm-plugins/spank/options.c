/*
 * options.c: strict parsing of `--hpcmig[=key=value,...]`.
 *
 * Owns the syntax of the opt-in at submission: which keys exist, which values each takes,
 * and the canonical text handed to the prolog. It checks syntax only; whether an image
 * exists or a spare count fits the allocation is the prolog's business (on the nodes).
 * Pure libc: no Slurm calls, so test_options.c runs it without Slurm.
 */
#define _GNU_SOURCE
#include "options.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum key { K_SPARES, K_IMAGE, K_RUNTIME, K_MPI, K_ENGINE, K_CKPT, K_COUNT };

static const char *const key_names[K_COUNT] = {
	"spares", "image", "runtime", "mpi", "engine", "ckpt",
};

/* Formats that are not a .sif file or a directory: refused before the job waits in queue. */
static const char *const foreign_image_suffixes[] = {
	".img", ".simg", ".sqsh", ".squashfs", ".tar", ".tar.gz", ".tgz", ".qcow2", NULL,
};

__attribute__((format(printf, 3, 4)))
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(err, errlen, "hpcmig: ");

	if (n > 0 && (size_t)n < errlen) {
		va_start(ap, fmt);
		vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int find_key(const char *name)
{
	for (int k = 0; k < K_COUNT; k++)
		if (strcmp(name, key_names[k]) == 0)
			return k;
	return -1;
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A whole decimal number in [min, max]: digits only (no sign, no space, no hex). */
static int whole_number(const char *v, long min, long max)
{
	char *end = NULL;
	long n;

	if (v[0] < '0' || v[0] > '9')
		return 0;
	errno = 0;
	n = strtol(v, &end, 10);
	return errno == 0 && *end == '\0' && n >= min && n <= max;
}

static int one_of(const char *v, const char *a, const char *b, const char *c)
{
	return strcmp(v, a) == 0 || strcmp(v, b) == 0 || (c && strcmp(v, c) == 0);
}

static int check_image(const char *v, char *err, size_t errlen)
{
	size_t n = strlen(v);

	for (const char *p = v; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return fail(err, errlen, "image path has a control character");
	if (v[0] == ' ' || v[n - 1] == ' ')
		return fail(err, errlen, "image path '%s' starts or ends with a space", v);
	if (strstr(v, "://"))
		return fail(err, errlen, "image '%s' is a URI; give the path of a .sif file "
			    "or of a directory", v);
	for (int i = 0; foreign_image_suffixes[i]; i++)
		if (ends_with(v, foreign_image_suffixes[i]))
			return fail(err, errlen, "image '%s' must be a .sif file or a directory",
				    v);
	return 0;
}

static int check_value(int key, const char *v, char *err, size_t errlen)
{
	if (v[0] == '\0')
		return fail(err, errlen, "option '%s' needs a value (%s=VALUE)",
			    key_names[key], key_names[key]);
	switch (key) {
	case K_SPARES:
		if (!whole_number(v, 0, 100000))
			return fail(err, errlen, "spares must be a whole number >= 0, not '%s'", v);
		return 0;
	case K_IMAGE:
		return check_image(v, err, errlen);
	case K_RUNTIME:
		if (!one_of(v, "ns", "lxc", NULL))
			return fail(err, errlen, "runtime must be ns or lxc, not '%s'", v);
		return 0;
	case K_MPI:
		if (!one_of(v, "mpich", "openmpi", NULL))
			return fail(err, errlen, "mpi must be mpich or openmpi, not '%s'", v);
		return 0;
	case K_ENGINE:
		if (!one_of(v, "criu", "dmtcp", "app"))
			return fail(err, errlen, "engine must be criu, dmtcp or app, not '%s'", v);
		return 0;
	case K_CKPT:
		if (strcmp(v, "auto") != 0 && !whole_number(v, 1, 2147483647L))
			return fail(err, errlen, "ckpt must be a number of seconds > 0 or auto, "
				    "not '%s'", v);
		return 0;
	}
	return fail(err, errlen, "internal error: no check for key %d", key);
}

/* Append ",key=value" (no comma first) to out; -1 if it does not fit. */
static int append(char *out, size_t outlen, const char *key, const char *value)
{
	size_t used = strlen(out);
	int n = snprintf(out + used, outlen - used, "%s%s=%s", used ? "," : "", key, value);

	return (n < 0 || (size_t)n >= outlen - used) ? -1 : 0;
}

int hpcmig_opts_parse(const char *arg, const char *cwd, struct hpcmig_opts *out,
		      char *err, size_t errlen)
{
	const char *values[K_COUNT] = { NULL };
	char canonical[HPCMIG_OPTS_MAX] = "", image[HPCMIG_OPTS_MAX];
	char *copy = NULL, *item, *next;
	int rc = -1;

	if (arg == NULL)
		arg = "";
	if (strlen(arg) >= HPCMIG_OPTS_MAX) {
		fail(err, errlen, "--hpcmig value is too long (at most %d characters)",
		     HPCMIG_OPTS_MAX - 1);
		goto out;
	}
	if (!(copy = strdup(arg))) {
		fail(err, errlen, "out of memory");
		goto out;
	}
	for (item = copy; *arg && item; item = next) {
		char *eq;
		int key;

		next = strchr(item, ',');
		if (next)
			*next++ = '\0';
		if (*item == '\0') {
			fail(err, errlen, "empty option in '%s' (give key=value pairs separated "
			     "by commas)", arg);
			goto out;
		}
		eq = strchr(item, '=');
		if (eq)
			*eq = '\0';
		if ((key = find_key(item)) < 0) {
			fail(err, errlen, "unknown option key '%s' (known: %s)", item,
			     HPCMIG_KNOWN_KEYS);
			goto out;
		}
		if (values[key]) {
			fail(err, errlen, "option '%s' is given twice", item);
			goto out;
		}
		if (check_value(key, eq ? eq + 1 : "", err, errlen) < 0)
			goto out;
		values[key] = eq + 1;
	}
	if (values[K_IMAGE] && cwd && values[K_IMAGE][0] != '/') {
		const char *rel = values[K_IMAGE];
		int n;

		if (strncmp(rel, "./", 2) == 0)
			rel += 2;
		n = snprintf(image, sizeof(image), "%s%s%s", cwd, ends_with(cwd, "/") ? "" : "/",
			     rel);
		if (n < 0 || (size_t)n >= sizeof(image))
			goto too_long;
		values[K_IMAGE] = image;
	}
	for (int k = 0; k < K_COUNT; k++)
		if (values[k] && append(canonical, sizeof(canonical), key_names[k], values[k]) < 0)
			goto too_long;
	out->given = 1;
	memcpy(out->canonical, canonical, sizeof(canonical));
	rc = 0;
	goto out;
too_long:
	fail(err, errlen, "--hpcmig options are too long once the image path is made absolute");
out:
	free(copy);
	return rc;
}
