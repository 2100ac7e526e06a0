/*
 * libhpcmig-dmtcp.so: a DMTCP plugin (dmtcp_launch --with-plugin) that lets DMTCP 4.2.0
 * checkpoint and restart a job whose processes run on more than one host. hpcmig run loads it
 * for engine=dmtcp. Five defects of DMTCP 4.2.0, measured on the testbed:
 *
 * 1. The checkpoint hangs ("Still draining socket... perhaps remote host is not running under
 *    DMTCP?"). After draining its sockets a process waits only for the processes of its own
 *    host ("Socket::Drain" is a local barrier since upstream commit 391d33b3), then sends its
 *    handshake on every connection. A peer on another host that has not yet seen the drain
 *    cookie receives cookie and handshake together, never finds the cookie at the end of its
 *    buffer and waits for ever. Here that barrier is global again, as it was before 391d33b3:
 *    no handshake is sent before every process of the job has drained.
 * 2. The restart fails ("failed to restore connection ... Connection refused"). A restarted
 *    process publishes the address of its restore socket as 0.0.0.0:<port>, and 0.0.0.0 is,
 *    for a process on another host, its own loopback. Here the published address is the
 *    process's own (the address it reaches the coordinator from: in hpcmig, its container's
 *    /32).
 *
 * 3. The restart never ends. DMTCP's ssh plugin reconnects a restored dmtcp_sshd by forking,
 *    from the restored dmtcp_ssh, `dmtcp_nocheckpoint rsh <host> dmtcp_sshd --listenAddr ..`.
 *    DMTCP's fork wrapper first registers the child with the coordinator, which does not answer
 *    while the computation restarts (4.2.0 has its pass-through for this case commented out):
 *    dmtcp_ssh waits for ever, and so does the dmtcp_sshd waiting for its streams. Here a fork
 *    made while DMTCP is not running user code (its checkpoint and restart hooks) is glibc's
 *    _Fork (no atfork handlers); the child, which only execs a program not under DMTCP, makes
 *    its dup2 and execvp as system calls of its own (DMTCP wraps syscall(), dup3 and execve)
 *    and execs with the user's own LD_PRELOAD.
 *
 * 4. After a restart, checkpoints overwrite the generation the job was restarted from. A
 *    restarted process takes as its checkpoint directory the real path of the directory it
 *    was restarted with (ProcessInfo::restart reads it back from an open descriptor), so a
 *    symbolic link given to dmtcp_launch --ckptdir (hpcmig's `current`, pointed at each new
 *    generation in turn) is resolved once and for all. Here every checkpoint goes to the
 *    directory the job was launched with ($DMTCP_CHECKPOINT_DIR, which dmtcp_launch sets and
 *    a restored process keeps in its environment), as it did before the restart.
 *
 * 5. A job across hosts sometimes never ends. dmtcp_ssh's SIGCHLD handler calls exit() when
 *    its rsh ends (`dmtcp_ssh.cpp`, signal_handler); measured on the testbed, the signal came
 *    while dmtcp_ssh was inside free() with the malloc lock held, the handler's exit handlers
 *    called free() and waited for that lock for ever (a hung dmtcp_ssh, a zombie proxy, an
 *    mpiexec that never returns). Here exit() called from a SIGCHLD handler of dmtcp_ssh
 *    (SIGCHLD blocked, as it is while its handler runs) ends the process at once, with the
 *    same status, as _exit() would; everywhere else exit() is the C library's.
 *
 * DMTCP preloads the libraries of --with-plugin before its own, so the definitions here come
 * first for the calls DMTCP's IPC plugin makes through its PLT; each passes on to DMTCP's own
 * definition, except a fork made in DMTCP's hooks and its child's dup2 and execvp (3.) and
 * dmtcp_ssh's exit from its SIGCHLD handler (5.). The event hook (4.) registers as any DMTCP
 * plugin's does (DMTCP_DECL_PLUGIN), before DMTCP's own plugins, so it runs first before a
 * checkpoint. 2. interposes dmtcp::kvdb::set, a C++ function of libdmtcp.so: its
 * strings are libstdc++'s (C++11 ABI) with DMTCP's allocator; only the characters of the value
 * are rewritten in place (same length), nothing is allocated.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* DMTCP's plugin API (dmtcp.h), weak: the library loads (and does nothing) outside DMTCP */
void dmtcp_global_barrier(const char *barrier) __attribute__((weak));
void *dmtcp_dlsym(void *handle, const char *symbol) __attribute__((weak));
void dmtcp_get_local_ip_addr(struct in_addr *in) __attribute__((weak));
int dmtcp_is_running_state(void) __attribute__((weak));
const char *dmtcp_get_ckpt_dir(void) __attribute__((weak));
int dmtcp_set_ckpt_dir(const char *dir) __attribute__((weak));

static void *next_definition(const char *symbol)
{
  return dmtcp_dlsym ? dmtcp_dlsym(RTLD_NEXT, symbol) : dlsym(RTLD_NEXT, symbol);
}

EXPORT void dmtcp_local_barrier(const char *barrier)
{
  static void (*next)(const char *);

  if (strcmp(barrier, "Socket::Drain") == 0 && dmtcp_global_barrier) {
    dmtcp_global_barrier(barrier);
    return;
  }
  if (!next)
    next = (void (*)(const char *))next_definition("dmtcp_local_barrier");
  next(barrier);
}

/* libstdc++'s std::basic_string (C++11 ABI): the data pointer, then the length */
struct cxx_string {
  char *data;
  size_t length;
};

/* dmtcp::kvdb::KVDBResponse dmtcp::kvdb::set(string const &db, string const &key,
 *                                            string const &value, string *old) */
#define KVDB_SET "_ZN5dmtcp4kvdb3setERKNSt7__cxx1112basic_stringIcSt11char_traitsIcENS_" \
                 "10DmtcpAllocIcEEEES9_S9_PS7_"
typedef int (*kvdb_set_fn)(const struct cxx_string *, const struct cxx_string *,
                           const struct cxx_string *, struct cxx_string *);
EXPORT int hpcmig_kvdb_set(const struct cxx_string *, const struct cxx_string *,
                           const struct cxx_string *, struct cxx_string *) __asm__(KVDB_SET);

static const char RESTORE_DB[] = "/plugin/socket/rst"; /* connectionrewirer.cpp */
/* DMTCP's base64 (include/base64.h): the URL alphabet, '.' pads; decoding accepts +/ too */
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
#define ENCODED_SOCKADDR_IN 24 /* 16 bytes: 5 groups of 3, then 1 byte and 2 pads */

static int b64_value(char c)
{
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  const char *p = c ? strchr(B64, c) : NULL;
  return p ? (int)(p - B64) : -1;
}

/* The restore address `value` (base64 of a sockaddr_in) with 0.0.0.0 replaced by ours. */
static void publish_own_address(char *value)
{
  unsigned char raw[18];
  for (int g = 0; g < 6; g++) {
    uint32_t word = 0;
    for (int i = 0; i < 4; i++) {
      char c = value[4 * g + i];
      int v = (g == 5 && i >= 2) ? 0 : b64_value(c);
      if (v < 0)
        return;  /* not what DMTCP 4.2.0 publishes: leave it alone */
      word = (word << 6) | (uint32_t)v;
    }
    raw[3 * g] = (unsigned char)(word >> 16);
    raw[3 * g + 1] = (unsigned char)(word >> 8);
    raw[3 * g + 2] = (unsigned char)word;
  }
  struct sockaddr_in addr;
  memcpy(&addr, raw, sizeof addr);
  if (addr.sin_family != AF_INET || addr.sin_addr.s_addr != htonl(INADDR_ANY))
    return;
  dmtcp_get_local_ip_addr(&addr.sin_addr);
  memcpy(raw, &addr, sizeof addr);
  for (int g = 0; g < 5; g++) {  /* the address lies in groups 1-2; the last byte is kept */
    uint32_t word = ((uint32_t)raw[3 * g] << 16) | ((uint32_t)raw[3 * g + 1] << 8) |
                    raw[3 * g + 2];
    for (int i = 0; i < 4; i++)
      value[4 * g + i] = B64[(word >> (18 - 6 * i)) & 63];
  }
}

int hpcmig_kvdb_set(const struct cxx_string *db, const struct cxx_string *key,
                    const struct cxx_string *value, struct cxx_string *old)
{
  static kvdb_set_fn next;

  if (db->length == sizeof RESTORE_DB - 1 && memcmp(db->data, RESTORE_DB, db->length) == 0 &&
      value->length == ENCODED_SOCKADDR_IN && dmtcp_get_local_ip_addr)
    publish_own_address(value->data);
  if (!next)
    next = (kvdb_set_fn)next_definition(KVDB_SET);
  return next(db, key, value, old);
}

/* --- 3. fork during DMTCP's hooks --- */
static int plain_child; /* this process is the child of such a fork: no DMTCP until exec */

/* A system call that DMTCP does not see: DMTCP wraps syscall(), dup3() and execve() of libc.
 * Returns -errno on failure, as the kernel does. */
static long plain_syscall4(long number, long a, long b, long c, long d)
{
#if defined(__x86_64__)
  long ret;
  register long r10 __asm__("r10") = d;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10)
                   : "rcx", "r11", "memory");
  return ret;
#elif defined(__aarch64__)
  register long x8 __asm__("x8") = number;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
  return x0;
#else
#error "plain_syscall: add this architecture"
#endif
}

static long plain_syscall(long number, long a, long b, long c)
{
  return plain_syscall4(number, a, b, c, 0);
}

/* glibc >= 2.34: fork without the atfork handlers (DMTCP's register the child with the
 * coordinator) and without DMTCP's fork wrapper; glibc still resets its own state */
pid_t _Fork(void) __attribute__((weak));

EXPORT pid_t fork(void)
{
  static pid_t (*next)(void);

  if (_Fork && dmtcp_is_running_state && !dmtcp_is_running_state()) {
    pid_t pid = _Fork();
    if (pid == 0)
      plain_child = 1;
    return pid;
  }
  if (!next)
    next = (pid_t (*)(void))next_definition("fork");
  return next();
}

EXPORT int dup2(int oldfd, int newfd)
{
  static int (*next)(int, int);

  if (plain_child) {
    long ret = oldfd == newfd ? plain_syscall(SYS_fcntl, oldfd, F_GETFD, 0)
                              : plain_syscall(SYS_dup3, oldfd, newfd, 0);
    return ret < 0 ? -1 : newfd;
  }
  if (!next)
    next = (int (*)(int, int))next_definition("dup2");
  return next(oldfd, newfd);
}

#define ORIG_PRELOAD "DMTCP_ORIG_LD_PRELOAD=" /* the user's own LD_PRELOAD (constants.h) */
#define MAX_ENV 4096
static char *plain_env[MAX_ENV + 2];
static char plain_preload[4096], plain_path[4096];

/* environ with LD_PRELOAD set back to the user's own (static storage: no malloc here) */
static char **environment_without_dmtcp(void)
{
  extern char **environ;
  size_t n = 0;
  const char *orig = NULL;

  for (char **e = environ; *e; e++)
    if (strncmp(*e, ORIG_PRELOAD, sizeof ORIG_PRELOAD - 1) == 0)
      orig = *e + sizeof ORIG_PRELOAD - 1;
  for (char **e = environ; *e && n < MAX_ENV; e++)
    if (strncmp(*e, "LD_PRELOAD=", 11) != 0)
      plain_env[n++] = *e;
  if (orig && *orig && strlen(orig) + 12 <= sizeof plain_preload) {
    strcpy(plain_preload, "LD_PRELOAD=");
    strcat(plain_preload, orig);
    plain_env[n++] = plain_preload;
  }
  plain_env[n] = NULL;
  return plain_env;
}

EXPORT int execvp(const char *file, char *const argv[])
{
  static int (*next)(const char *, char *const[]);

  if (!plain_child) {
    if (!next)
      next = (int (*)(const char *, char *const[]))next_definition("execvp");
    return next(file, argv);
  }
  char **envp = environment_without_dmtcp();
  if (strchr(file, '/'))
    return (int)plain_syscall(SYS_execve, (long)file, (long)argv, (long)envp);
  const char *path = getenv("PATH");
  for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
    size_t len = strcspn(p, ":");
    if (len + strlen(file) + 2 <= sizeof plain_path) {
      memcpy(plain_path, p, len);
      plain_path[len] = '/';
      strcpy(plain_path + len + 1, file);
      plain_syscall(SYS_execve, (long)plain_path, (long)argv, (long)envp);
    }
    p += len + (p[len] == ':');
  }
  return -1;
}

/* --- 4. the checkpoint directory after a restart --- */
#define CHECKPOINT_DIR_ENV "DMTCP_CHECKPOINT_DIR" /* constants.h, set by dmtcp_launch */
enum { EVENT_PRECHECKPOINT = 16 };                /* DmtcpEvent_t of DMTCP 4.2.0 */

struct plugin_descriptor { /* DmtcpPluginDescriptor_t, plugin API "3" */
  const char *api_version, *dmtcp_version, *name, *author, *email, *description;
  void (*event_hook)(int event, void *data);
};
void dmtcp_register_plugin(struct plugin_descriptor descriptor) __attribute__((weak));

/* Before DMTCP writes anything of a checkpoint (this plugin registers first, so its
 * pre-checkpoint hook runs before DMTCP's own), point it back at the launch directory. */
static void event_hook(int event, void *data)
{
  (void)data;
  if (event != EVENT_PRECHECKPOINT || !dmtcp_get_ckpt_dir || !dmtcp_set_ckpt_dir)
    return;
  const char *launched = getenv(CHECKPOINT_DIR_ENV), *now = dmtcp_get_ckpt_dir();
  if (launched && *launched && (!now || strcmp(now, launched) != 0))
    dmtcp_set_ckpt_dir(launched);
}

EXPORT void dmtcp_initialize_plugin(void)
{
  static const struct plugin_descriptor descriptor = {
      "3", "4.2.0", "hpcmig", "hpcmig", "", "DMTCP across hosts (libhpcmig-dmtcp.so)",
      event_hook};
  void (*next)(void);

  if (dmtcp_register_plugin)
    dmtcp_register_plugin(descriptor);
  next = (void (*)(void))next_definition("dmtcp_initialize_plugin");
  if (next)
    next();
}

/* --- 5. dmtcp_ssh's exit from its SIGCHLD handler --- */
extern char *program_invocation_short_name; /* glibc */

static int in_sigchld_handler(void)
{
  uint64_t blocked = 0; /* the kernel's sigset: 64 bits on Linux */
  if (plain_syscall4(SYS_rt_sigprocmask, SIG_BLOCK, 0, (long)&blocked, sizeof blocked) < 0)
    return 0;
  return (blocked >> (SIGCHLD - 1)) & 1;
}

EXPORT void exit(int status)
{
  static void (*next)(int);

  if (program_invocation_short_name &&
      strcmp(program_invocation_short_name, "dmtcp_ssh") == 0 && in_sigchld_handler())
    plain_syscall(SYS_exit_group, status, 0, 0);
  if (!next)
    next = (void (*)(int))next_definition("exit");
  if (next)
    next(status);
  plain_syscall(SYS_exit_group, status, 0, 0);
  __builtin_unreachable();
}
