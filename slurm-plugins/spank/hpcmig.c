/*
 * hpcmig.c: hpcmig's SPANK plugin, the dispatch file (every slurm_spank_* entry point).
 *
 * It adds `--hpcmig[=key=value,...]` to sbatch, salloc and srun. The option is parsed at
 * submission (options.c; a bad key or value is refused there, with one `hpcmig: ` line) and
 * its canonical form goes into the job control environment as HPCMIG; Slurm prepends
 * SPANK_, so Prolog= and Epilog= (hpcmig-prolog, hpcmig-epilog) see SPANK_HPCMIG.
 * It must not do anything else: no containers, no RPC, no files; the prolog acts.
 * Only the slurm_spank_* functions and the plugin identification symbols are exported.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <slurm/spank.h>

#include "options.h"

#define EXPORT __attribute__((visibility("default")))

#pragma GCC visibility push(default)
SPANK_PLUGIN(hpcmig, 1)
#pragma GCC visibility pop

/* Slurm passes it to Prolog/Epilog as SPANK_HPCMIG (hpcmig/hooks.py reads that). */
#define CONTROL_ENV "HPCMIG"

static struct hpcmig_opts opts;

static int on_option(int val, const char *optarg, int remote);

static struct spank_option hpcmig_option = {
	"hpcmig", "[key=value,...]",
	"Run the job in hpcmig's virtual cluster (containers that can move between nodes "
	"while the job runs). Keys: spares=N, image=PATH (.sif or directory), runtime=ns|lxc, "
	"mpi=mpich|openmpi, engine=criu|dmtcp|app, ckpt=SECONDS|auto.",
	2, 0, on_option,
};

/* Slurm calls this for `--hpcmig` (remote == 0: sbatch/salloc/srun) and again in
 * slurmstepd (remote == 1). The last --hpcmig given wins (the command line over #SBATCH). */
static int on_option(int val, const char *optarg, int remote)
{
	char err[HPCMIG_ERR_MAX];
	char cwd[PATH_MAX];
	const char *base = NULL;

	(void)val;
	if (!remote && getcwd(cwd, sizeof(cwd)))
		base = cwd;  /* a relative image= is the submitter's */
	if (hpcmig_opts_parse(optarg, base, &opts, err, sizeof(err)) < 0) {
		slurm_error("%s", err);
		return -1;
	}
	return 0;
}

EXPORT int slurm_spank_init(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();
	spank_err_t e;
	int rc = 0;

	for (int i = 0; i < ac; i++) {
		slurm_error("hpcmig: unknown argument '%s' in plugstack.conf (hpcmig_spank.so "
			    "takes none)", av[i]);
		rc = -1;
	}
	if (rc)
		goto out;
	if (ctx != S_CTX_ALLOCATOR && ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE)
		goto out;  /* slurmd: nothing to do */
	e = spank_option_register(sp, &hpcmig_option);
	if (e != ESPANK_SUCCESS) {
		slurm_error("hpcmig: cannot register --hpcmig: %s", spank_strerror(e));
		rc = -1;
	}
out:
	return rc;
}

EXPORT int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();
	spank_err_t e;
	int rc = 0;

	(void)ac;
	(void)av;
	if (!opts.given || (ctx != S_CTX_ALLOCATOR && ctx != S_CTX_LOCAL))
		goto out;
	if (ctx == S_CTX_LOCAL && getenv("SLURM_JOB_ID"))
		slurm_spank_log("hpcmig: --hpcmig on srun inside an allocation changes nothing; "
				"give it to sbatch or salloc, and launch with `hpcmig run`");
	e = spank_job_control_setenv(sp, CONTROL_ENV, opts.canonical, 1);
	if (e != ESPANK_SUCCESS) {
		slurm_error("hpcmig: cannot pass --hpcmig to the prolog: %s", spank_strerror(e));
		rc = -1;
	}
out:
	return rc;
}
