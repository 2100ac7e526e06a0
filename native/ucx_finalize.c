/*
 * libhpcmig-ucx-finalize.so: lets MPICH 4.0.2 (ch4:ucx) finish MPI_Finalize over UCX 1.13's
 * TCP transport. Preloaded into MPICH ranks by `hpcmig run` (hpcmig/mpi.py).
 *
 * The hang it removes: in MPI_Finalize every rank closes its endpoints in flush mode
 * (ucp_disconnect_nb), progresses until its own closes complete, then waits in a PMI barrier
 * without progressing UCX. UCX 1.13's uct_tcp_ep_flush turns a flush of an endpoint that has
 * sent data into a zero-length PUT and completes only when the peer acknowledges it; a peer
 * already in the barrier never does, so the job hangs with all its output written (about one
 * job in four with 6 ranks on this machine). Later UCX releases complete the flush locally
 * once the socket has taken the data, which is what this does, and only once the process has
 * started closing endpoints (MPI_Finalize): RMA flushes before that keep their remote
 * completion. Data is not lost: TCP delivers what the socket took, and a correct MPI program
 * has matched every message before it finalizes.
 *
 * The flag it clears (UCT_TCP_EP_FLAG_NEED_FLUSH, bit 0x400 of the 16-bit flags at offset
 * 0xc of uct_tcp_ep_t) is UCX 1.13's layout, so it acts only when libucp says 1.13; with any
 * other UCX, or in a process without UCX, it only forwards the calls.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>

typedef void *ucs_status_ptr_t;
typedef int8_t ucs_status_t; /* UCX: a packed (one-byte) enum */
typedef void *ep_t;

#define NEED_FLUSH_OFFSET 0xc
#define NEED_FLUSH_BIT 0x400u

static int closing;
static int layout_known = -1;

static void *next(const char *lib, const char *sym)
{
    void *handle = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
    return handle ? dlsym(handle, sym) : NULL;
}

static int ucx_1_13(void)
{
    if (layout_known < 0) {
        void (*version)(unsigned *, unsigned *, unsigned *) =
            (void (*)(unsigned *, unsigned *, unsigned *))next("libucp.so.0", "ucp_get_version");
        unsigned major = 0, minor = 0, release = 0;
        if (version)
            version(&major, &minor, &release);
        layout_known = (major == 1 && minor == 13);
    }
    return layout_known;
}

ucs_status_ptr_t ucp_ep_close_nb(ep_t ep, unsigned mode)
{
    static ucs_status_ptr_t (*real)(ep_t, unsigned);
    if (!real)
        real = (ucs_status_ptr_t (*)(ep_t, unsigned))next("libucp.so.0", "ucp_ep_close_nb");
    closing = 1;
    return real(ep, mode);
}

ucs_status_t uct_tcp_ep_flush(ep_t ep, unsigned flags, void *comp)
{
    static ucs_status_t (*real)(ep_t, unsigned, void *);
    if (!real)
        real = (ucs_status_t (*)(ep_t, unsigned, void *))next("libuct.so.0", "uct_tcp_ep_flush");
    if (closing && ucx_1_13())
        *(uint16_t *)((char *)ep + NEED_FLUSH_OFFSET) &= (uint16_t)~NEED_FLUSH_BIT;
    return real(ep, flags, comp);
}
