/*
 * options.h: strict parsing of `--hpcmig[=key=value,...]` (pure libc, no Slurm).
 *
 * The plugin's dispatch file (hpcmig.c) calls this from Slurm's option callback; the unit
 * test driver (test_options.c) calls it directly. Nothing here is exported from the .so.
 */
#ifndef HPCMIG_SPANK_OPTIONS_H
#define HPCMIG_SPANK_OPTIONS_H

#include <stddef.h>

/* Longest accepted `--hpcmig=` value and the canonical form built from it. */
#define HPCMIG_OPTS_MAX 4096
#define HPCMIG_ERR_MAX 512

/* The keys `hpcmig run` and the prolog understand, in canonical order. */
#define HPCMIG_KNOWN_KEYS "spares, image, runtime, mpi, engine, ckpt"

struct hpcmig_opts {
	int given;                        /* --hpcmig was on the command line */
	char canonical[HPCMIG_OPTS_MAX];  /* "spares=1,image=/abs/app.sif", "" for no keys */
};

/*
 * Parse `arg` (NULL or "" for a bare --hpcmig). A relative image path is made absolute
 * against `cwd` when `cwd` is not NULL (the submitting side), kept as given otherwise.
 * Returns 0 and fills `out`, or -1 with one line (starting "hpcmig: ") in `err`;
 * `out` is left untouched on error.
 */
int hpcmig_opts_parse(const char *arg, const char *cwd, struct hpcmig_opts *out,
		      char *err, size_t errlen);

#endif
