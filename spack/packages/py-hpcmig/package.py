# hpcmig's Spack recipe. NOT CHECKED WITH SPACK: Spack is not on PyPI nor in Debian 12, the
# only package sources of the machine it was written on, so `spack info`, `spack spec` and
# `spack install` never ran on it. It is kept minimal on purpose: the dependencies of
# pyproject.toml, CRIU and Slurm, DMTCP as a variant. It follows the Spack 0.x package API
# (repository API v1); Spack 1.x reads such repositories but prefers the v2 layout
# (spack_repo/hpcmig/packages/py_hpcmig/, PythonPackage from
# spack_repo.builtin.build_systems.python).
#
# There is no published source yet: build from a checkout, e.g. with the environment at the
# top of the repository (its `develop:` section points here), or
#   spack repo add spack && spack develop --path . py-hpcmig@=0.1.0 && spack install py-hpcmig
# The SPANK plugin and the native libraries are not built here: build them with
#   make -C slurm-plugins/spank install PREFIX=<prefix>   (against the site's Slurm)
#   make -C native install PREFIX=<prefix>                (docs/admin.md)

from spack.package import *


class PyHpcmig(PythonPackage):
    """Keep MPI jobs alive on Slurm clusters: containers, live migration, topology mapping."""

    license("BSD-3-Clause")

    version("0.1.0")

    variant("dmtcp", default=False, description="DMTCP as a checkpoint engine (engine=dmtcp, experimental)")

    depends_on("python@3.11:", type=("build", "run"))
    depends_on("py-setuptools@77:", type="build")
    depends_on("py-wheel", type="build")

    # [project] dependencies of pyproject.toml, same lower bounds
    depends_on("py-numpy@1.26:", type=("build", "run"))
    depends_on("py-numba@0.59:", type=("build", "run"))
    depends_on("py-mpi4py@4.1.1:", type=("build", "run"))
    depends_on("py-h5py@3.10:", type=("build", "run"))
    depends_on("py-psutil@5.9:", type=("build", "run"))
    depends_on("py-rich@13.0:", type=("build", "run"))
    depends_on("py-jsonschema@4.20:", type=("build", "run"))
    depends_on("py-matplotlib@3.8:", type=("build", "run"))
    depends_on("py-scipy@1.11:", type=("build", "run"))
    depends_on("py-xxhash@3.0:", type=("build", "run"))
    depends_on("py-prometheus-client@0.20:", type=("build", "run"))

    # What hpcmig drives: Slurm's commands (and spank.h for the plugin), CRIU 4.x (on Linux
    # 6.16+ with the patches in scripts/criu/), DMTCP when asked for.
    depends_on("slurm", type="run")
    depends_on("criu", type="run")
    depends_on("dmtcp", type="run", when="+dmtcp")
