/*
 * ring: the C twin of hpcmig.workloads.ring -- same algorithm, same checksum, same output.
 *
 *   ring [--elements N] [--rounds R] [--memory-mb M] [--seconds S]
 *
 * Rank r starts with v_r[k] = (r * 7919 + k) mod 65521. Each round every rank sends its
 * vector to rank r+1 (MPI_Sendrecv) and adds what it receives from rank r-1, element-wise
 * modulo 2^31-1. The checksum is the MPI_SUM over ranks of the sum of every held element.
 * Rank 0 recomputes it serially (and `python -c "from hpcmig.workloads.ring import expected;
 * print(expected(size, N, R))"` prints the same number), so a run disturbed by migration
 * passes only if the result is exact. --memory-mb keeps that much touched ballast per rank,
 * verified at the end; --seconds stretches the run to at least that long (the pause is
 * spread over the rounds). Integer arithmetic only: the result does not depend on the MPI
 * implementation, the number of nodes or the reduction order.
 *
 * Build: make -C jobs   (jobs/build/ring.mpich and jobs/build/ring.openmpi)
 */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MOD 2147483647LL /* 2^31 - 1 */

static void start_vector(int rank, long n, int64_t *v)
{
	for (long k = 0; k < n; k++)
		v[k] = ((int64_t)rank * 7919 + k) % 65521;
}

static int64_t vector_sum(const int64_t *v, long n)
{
	int64_t s = 0;
	for (long k = 0; k < n; k++)
		s += v[k];
	return s;
}

/* The checksum `size` ranks must print, computed without MPI. */
static int64_t expected(int size, long n, long rounds)
{
	int64_t *cur = malloc(sizeof(int64_t) * (size_t)size * (size_t)n);
	int64_t *nxt = malloc(sizeof(int64_t) * (size_t)size * (size_t)n);
	int64_t total = 0;

	if (!cur || !nxt) {
		fprintf(stderr, "ring: out of memory for the serial check\n");
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	for (int r = 0; r < size; r++)
		start_vector(r, n, cur + (size_t)r * n);
	for (long i = 0; i < rounds; i++) {
		for (int r = 0; r < size; r++) {
			const int64_t *mine = cur + (size_t)r * n;
			const int64_t *left = cur + (size_t)((r - 1 + size) % size) * n;
			for (long k = 0; k < n; k++)
				nxt[(size_t)r * n + k] = (mine[k] + left[k]) % MOD;
		}
		int64_t *t = cur;
		cur = nxt;
		nxt = t;
	}
	for (int r = 0; r < size; r++)
		total += vector_sum(cur + (size_t)r * n, n);
	free(cur);
	free(nxt);
	return total;
}

static int64_t *ballast(int rank, long megabytes, long *count)
{
	long n = megabytes * 1024L * 1024L / 8;
	int64_t *b = NULL;

	*count = n;
	if (n == 0)
		return NULL;
	b = malloc(sizeof(int64_t) * (size_t)n);
	if (!b) {
		fprintf(stderr, "ring: cannot allocate %ld MiB of ballast\n", megabytes);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	for (long i = 0; i < n; i++)
		b[i] = (i * (int64_t)(rank + 3)) % 1000003;
	return b;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pause_for(double seconds)
{
	struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
	while (nanosleep(&ts, &ts) != 0)
		;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

static long arg_long(const char *name, const char *value)
{
	char *end = NULL;
	long v = strtol(value ? value : "", &end, 10);
	if (!value || *end || v < 0) {
		fprintf(stderr, "ring: %s needs a non-negative integer\n", name);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	long elements = 4096, rounds = 50, memory_mb = 0;
	double seconds = 0.0;
	int rank, size, ok, all_ok;

	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(argv[i], "--elements"))
			elements = arg_long(argv[i], v), i++;
		else if (!strcmp(argv[i], "--rounds"))
			rounds = arg_long(argv[i], v), i++;
		else if (!strcmp(argv[i], "--memory-mb"))
			memory_mb = arg_long(argv[i], v), i++;
		else if (!strcmp(argv[i], "--seconds"))
			seconds = v ? atof(v) : -1.0, i++;
		else {
			fprintf(stderr, "usage: ring [--elements N] [--rounds R] [--memory-mb M] "
					"[--seconds S]\n");
			return 2;
		}
	}
	if (elements < 1 || seconds < 0) {
		fprintf(stderr, "ring: --elements must be >= 1 and --seconds >= 0\n");
		return 2;
	}

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);

	long nb = 0;
	int64_t *extra = ballast(rank, memory_mb, &nb);
	int64_t extra_sum = extra ? vector_sum(extra, nb) : 0;
	int64_t *vec = malloc(sizeof(int64_t) * (size_t)elements);
	int64_t *recv = malloc(sizeof(int64_t) * (size_t)elements);
	if (!vec || !recv)
		MPI_Abort(MPI_COMM_WORLD, 2);
	start_vector(rank, elements, vec);
	int right = (rank + 1) % size, left = (rank - 1 + size) % size;
	double pause = seconds / (double)(rounds > 0 ? rounds : 1);
	double t0 = now();

	for (long i = 0; i < rounds; i++) {
		MPI_Sendrecv(vec, (int)elements, MPI_INT64_T, right, 0, recv, (int)elements,
			     MPI_INT64_T, left, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		for (long k = 0; k < elements; k++)
			vec[k] = (vec[k] + recv[k]) % MOD;
		if (pause > 0)
			pause_for(pause);
	}
	/* rank 0's serial check before the last collectives: every rank then reaches
	 * MPI_Finalize at about the same time (MPICH 4.0 ch4:ucx over TCP can hang in
	 * Finalize when one rank arrives long after the others) */
	int64_t want = rank == 0 ? expected(size, elements, rounds) : 0;
	int64_t mine = vector_sum(vec, elements), total = 0;
	MPI_Allreduce(&mine, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
	ok = extra == NULL || vector_sum(extra, nb) == extra_sum;
	MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);

	char host[MPI_MAX_PROCESSOR_NAME] = {0};
	int len = 0;
	MPI_Get_processor_name(host, &len);
	char *hosts = rank == 0 ? calloc((size_t)size, MPI_MAX_PROCESSOR_NAME) : NULL;
	MPI_Gather(host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, hosts, MPI_MAX_PROCESSOR_NAME,
		   MPI_CHAR, 0, MPI_COMM_WORLD);

	int code = 0;
	if (rank == 0) {
		const char *status = total == want && all_ok ? "PASS" : "FAIL";
		char version[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
		int vlen = 0;
		MPI_Get_library_version(version, &vlen);
		version[strcspn(version, "\n")] = '\0';
		qsort(hosts, (size_t)size, MPI_MAX_PROCESSOR_NAME, cmp_str);
		printf("ring: %s checksum=%lld expected=%lld ranks=%d nodes=", status,
		       (long long)total, (long long)want, size);
		for (int r = 0; r < size; r++) {
			const char *h = hosts + (size_t)r * MPI_MAX_PROCESSOR_NAME;
			if (r == 0 || strcmp(h, h - MPI_MAX_PROCESSOR_NAME))
				printf("%s%s", r ? "," : "", h);
		}
		printf(" seconds=%.2f mpi=%s\n", now() - t0, version);
		fflush(stdout);
		code = status[0] == 'P' ? 0 : 1;
		free(hosts);
	}
	free(extra);
	free(vec);
	free(recv);
	MPI_Barrier(MPI_COMM_WORLD);
	MPI_Finalize();
	return code;
}
