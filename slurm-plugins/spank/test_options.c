/*
 * test_options.c: the --hpcmig parser against a table of cases, without Slurm.
 * `make -C slurm-plugins/spank check` builds and runs it; tests/unit/test_spank.py too.
 */
#include <stdio.h>
#include <string.h>

#include "options.h"

struct tcase {
	const char *arg;       /* NULL: bare --hpcmig */
	const char *cwd;       /* NULL: remote side, paths kept as given */
	const char *expect;    /* canonical form, or NULL if refused */
	const char *error;     /* the whole error line, when refused */
};

static const struct tcase cases[] = {
	{ NULL, "/home/u", "", NULL },
	{ "", "/home/u", "", NULL },
	{ "spares=1", "/home/u", "spares=1", NULL },
	{ "mpi=openmpi,spares=2,runtime=lxc", NULL, "spares=2,runtime=lxc,mpi=openmpi", NULL },
	{ "spares=0,engine=dmtcp,ckpt=auto", NULL, "spares=0,engine=dmtcp,ckpt=auto", NULL },
	{ "ckpt=600,engine=app", NULL, "engine=app,ckpt=600", NULL },
	{ "image=/images/app.sif", "/home/u", "image=/images/app.sif", NULL },
	{ "image=app.sif", "/home/u", "image=/home/u/app.sif", NULL },
	{ "image=./rootfs", "/home/u/", "image=/home/u/rootfs", NULL },
	{ "image=app.sif", NULL, "image=app.sif", NULL },
	{ "image=/images/ubuntu-22.04", "/", "image=/images/ubuntu-22.04", NULL },
	{ "bogus=1", "/", NULL,
	  "hpcmig: unknown option key 'bogus' (known: spares, image, runtime, mpi, engine, ckpt)" },
	{ "spares", "/", NULL, "hpcmig: option 'spares' needs a value (spares=VALUE)" },
	{ "spares=", "/", NULL, "hpcmig: option 'spares' needs a value (spares=VALUE)" },
	{ "spares=-1", "/", NULL, "hpcmig: spares must be a whole number >= 0, not '-1'" },
	{ "spares=1x", "/", NULL, "hpcmig: spares must be a whole number >= 0, not '1x'" },
	{ "spares= 1", "/", NULL, "hpcmig: spares must be a whole number >= 0, not ' 1'" },
	{ "spares=1,spares=2", "/", NULL, "hpcmig: option 'spares' is given twice" },
	{ "spares=1,", "/", NULL,
	  "hpcmig: empty option in 'spares=1,' (give key=value pairs separated by commas)" },
	{ "runtime=docker", "/", NULL, "hpcmig: runtime must be ns or lxc, not 'docker'" },
	{ "mpi=intel", "/", NULL, "hpcmig: mpi must be mpich or openmpi, not 'intel'" },
	{ "engine=blcr", "/", NULL, "hpcmig: engine must be criu, dmtcp or app, not 'blcr'" },
	{ "ckpt=0", "/", NULL, "hpcmig: ckpt must be a number of seconds > 0 or auto, not '0'" },
	{ "ckpt=1h", "/", NULL, "hpcmig: ckpt must be a number of seconds > 0 or auto, not '1h'" },
	{ "image=docker://ubuntu", "/", NULL,
	  "hpcmig: image 'docker://ubuntu' is a URI; give the path of a .sif file or of a "
	  "directory" },
	{ "image=/images/app.sqsh", "/", NULL,
	  "hpcmig: image '/images/app.sqsh' must be a .sif file or a directory" },
	{ " spares=1", "/", NULL,
	  "hpcmig: unknown option key ' spares' (known: spares, image, runtime, mpi, engine, "
	  "ckpt)" },
};

int main(void)
{
	int failed = 0;
	size_t n = sizeof(cases) / sizeof(cases[0]);

	for (size_t i = 0; i < n; i++) {
		const struct tcase *c = &cases[i];
		struct hpcmig_opts o = { 0, "untouched" };
		char err[HPCMIG_ERR_MAX] = "";
		int rc = hpcmig_opts_parse(c->arg, c->cwd, &o, err, sizeof(err));
		int ok;

		if (c->expect)
			ok = rc == 0 && o.given && strcmp(o.canonical, c->expect) == 0;
		else
			ok = rc == -1 && !o.given && strcmp(o.canonical, "untouched") == 0
			     && strcmp(err, c->error) == 0;
		if (!ok) {
			failed++;
			fprintf(stderr, "FAIL --hpcmig=%s (cwd %s): rc=%d canonical='%s' err='%s'\n",
				c->arg ? c->arg : "(none)", c->cwd ? c->cwd : "(none)", rc,
				o.canonical, err);
		}
	}
	printf("test_options: %zu cases, %d failed\n", n, failed);
	return failed ? 1 : 0;
}
