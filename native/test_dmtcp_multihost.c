/*
 * `make -C native check`: libhpcmig-dmtcp.so against a stand-in for DMTCP (no DMTCP needed).
 * The plugin is dlopen'ed; this program exports what it takes from DMTCP (dmtcp_dlsym,
 * dmtcp_global_barrier, dmtcp_get_local_ip_addr, dmtcp_is_running_state,
 * dmtcp_register_plugin, dmtcp_get_ckpt_dir, dmtcp_set_ckpt_dir) and the definitions it
 * passes on to.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define KVDB_SET "_ZN5dmtcp4kvdb3setERKNSt7__cxx1112basic_stringIcSt11char_traitsIcENS_" \
                 "10DmtcpAllocIcEEEES9_S9_PS7_"
struct cxx_string {
  char *data;
  size_t length;
};

static int failures;
#define CHECK(cond)                                                                      \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);           \
      failures++;                                                                        \
    }                                                                                    \
  } while (0)

/* --- DMTCP's side, as the plugin sees it --- */
static char global_seen[64], local_seen[64], set_value[64];

void dmtcp_global_barrier(const char *barrier)
{
  snprintf(global_seen, sizeof global_seen, "%s", barrier);
}

static void real_local_barrier(const char *barrier)
{
  snprintf(local_seen, sizeof local_seen, "%s", barrier);
}

static int real_kvdb_set(const struct cxx_string *db, const struct cxx_string *key,
                         const struct cxx_string *value, struct cxx_string *old)
{
  (void)db, (void)key, (void)old;
  snprintf(set_value, sizeof set_value, "%.*s", (int)value->length, value->data);
  return 0;
}

/* DMTCP's state and its fork, dup2 and execvp wrappers: a wrapper called where the plugin
 * must not call one ends the process with 3 */
static int running = 1, wrapped_forks;

int dmtcp_is_running_state(void)
{
  return running;
}

static pid_t wrapper_fork(void)
{
  wrapped_forks++;
  return -1;
}

static int wrapper_dup2(int oldfd, int newfd)
{
  (void)oldfd, (void)newfd;
  _exit(3);
}

static int wrapper_execvp(const char *file, char *const argv[])
{
  (void)file, (void)argv;
  _exit(3);
}

/* DMTCP's plugin registry and checkpoint directory */
struct plugin_descriptor {
  const char *api_version, *dmtcp_version, *name, *author, *email, *description;
  void (*event_hook)(int event, void *data);
};
static struct plugin_descriptor registered;
static int next_initialized;
static char ckpt_dir[256];

void dmtcp_register_plugin(struct plugin_descriptor descriptor)
{
  registered = descriptor;
}

static void next_initialize_plugin(void)
{
  next_initialized = registered.event_hook != NULL;  /* called after the registration */
}

const char *dmtcp_get_ckpt_dir(void)
{
  return ckpt_dir;
}

int dmtcp_set_ckpt_dir(const char *dir)
{
  snprintf(ckpt_dir, sizeof ckpt_dir, "%s", dir);
  return 1;
}

void *dmtcp_dlsym(void *handle, const char *symbol)
{
  if (handle != RTLD_NEXT)
    return NULL;
  if (strcmp(symbol, "dmtcp_local_barrier") == 0)
    return (void *)real_local_barrier;
  if (strcmp(symbol, KVDB_SET) == 0)
    return (void *)real_kvdb_set;
  if (strcmp(symbol, "fork") == 0)
    return (void *)wrapper_fork;
  if (strcmp(symbol, "dup2") == 0)
    return (void *)wrapper_dup2;
  if (strcmp(symbol, "execvp") == 0)
    return (void *)wrapper_execvp;
  if (strcmp(symbol, "dmtcp_initialize_plugin") == 0)
    return (void *)next_initialize_plugin;
  if (strcmp(symbol, "exit") == 0)
    return (void *)exit;
  return NULL;
}

void dmtcp_get_local_ip_addr(struct in_addr *in)
{
  inet_pton(AF_INET, "10.252.0.2", in);
}

/* --- DMTCP's base64 (URL alphabet, '.' pads) --- */
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void encode(const unsigned char *in, size_t n, char *out)
{
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t w = (uint32_t)in[i] << 16;
    if (i + 1 < n) w |= (uint32_t)in[i + 1] << 8;
    if (i + 2 < n) w |= in[i + 2];
    out[o++] = B64[(w >> 18) & 63];
    out[o++] = B64[(w >> 12) & 63];
    out[o++] = i + 1 < n ? B64[(w >> 6) & 63] : '.';
    out[o++] = i + 2 < n ? B64[w & 63] : '.';
  }
  out[o] = '\0';
}

static void encode_addr(const char *ip, int port, char *out)
{
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  inet_pton(AF_INET, ip, &sa.sin_addr);
  encode((const unsigned char *)&sa, sizeof sa, out);
}

typedef int (*kvdb_set_fn)(const struct cxx_string *, const struct cxx_string *,
                           const struct cxx_string *, struct cxx_string *);

static const char *published(kvdb_set_fn set, const char *db, const char *value)
{
  static char buf[64];
  snprintf(buf, sizeof buf, "%s", value);
  struct cxx_string d = {(char *)db, strlen(db)}, k = {(char *)"id", 2},
                    v = {buf, strlen(buf)};
  set_value[0] = '\0';
  CHECK(set(&d, &k, &v, NULL) == 0);
  return set_value;
}

/* dmtcp_ssh's SIGCHLD handler: reap the child, exit with its status (dmtcp_ssh.cpp) */
static void (*plugin_exit)(int);

static void sigchld_handler(int sig)
{
  (void)sig;
  wait(NULL);
  plugin_exit(7);
}

static void exit_handler(void)
{
  _exit(9);  /* the exit handlers ran: the process ends with 9 */
}

/* The exit status of a process named `name` whose child ends (exit from the SIGCHLD
 * handler, 7), or that calls exit(7) itself; 9 when the exit handlers ran. */
static int exit_status(const char *name, int from_handler)
{
  pid_t pid = fork();
  if (pid == 0) {
    program_invocation_short_name = (char *)name;
    atexit(exit_handler);
    if (!from_handler)
      plugin_exit(7);
    signal(SIGCHLD, sigchld_handler);
    if (fork() == 0)
      _exit(0);
    for (;;)
      pause();
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
    return -1;
  return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: %s libhpcmig-dmtcp.so\n", argv[0]);
    return 2;
  }
  void *plugin = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!plugin) {
    fprintf(stderr, "%s\n", dlerror());
    return 1;
  }
  void (*local_barrier)(const char *) =
      (void (*)(const char *))dlsym(plugin, "dmtcp_local_barrier");
  kvdb_set_fn set = (kvdb_set_fn)dlsym(plugin, KVDB_SET);
  CHECK(local_barrier && set);
  if (!local_barrier || !set)
    return 1;

  /* the barrier after the socket drain is global; every other one stays local */
  local_barrier("Socket::Drain");
  CHECK(strcmp(global_seen, "Socket::Drain") == 0 && local_seen[0] == '\0');
  global_seen[0] = '\0';
  local_barrier("File::DRAIN");
  CHECK(strcmp(local_seen, "File::DRAIN") == 0 && global_seen[0] == '\0');

  /* a restore socket published as 0.0.0.0:<port> is published at our address instead */
  char any[32], ours[32], other[32];
  encode_addr("0.0.0.0", 40123, any);
  encode_addr("10.252.0.2", 40123, ours);
  encode_addr("10.252.0.7", 40123, other);
  CHECK(strlen(any) == 24);
  CHECK(strcmp(published(set, "/plugin/socket/rst", any), ours) == 0);
  /* anything else passes unchanged: a real address, another database, another length */
  CHECK(strcmp(published(set, "/plugin/socket/rst", other), other) == 0);
  CHECK(strcmp(published(set, "/plugin/socket/ckpt", any), any) == 0);
  CHECK(strcmp(published(set, "/plugin/socket/rst", "AAAA"), "AAAA") == 0);
  CHECK(strcmp(published(set, "/plugin/socket/rst", "!!!!!!!!!!!!!!!!!!!!!!!!"),
               "!!!!!!!!!!!!!!!!!!!!!!!!") == 0);

  /* a fork while DMTCP runs user code is DMTCP's; one in its hooks is a plain fork whose
   * child dups and execs without DMTCP, with the user's own LD_PRELOAD */
  pid_t (*fork_)(void) = (pid_t (*)(void))dlsym(plugin, "fork");
  int (*dup2_)(int, int) = (int (*)(int, int))dlsym(plugin, "dup2");
  int (*execvp_)(const char *, char *const[]) =
      (int (*)(const char *, char *const[]))dlsym(plugin, "execvp");
  CHECK(fork_ && dup2_ && execvp_);
  if (!fork_ || !dup2_ || !execvp_)
    return 1;
  CHECK(fork_() == -1 && wrapped_forks == 1);
  setenv("LD_PRELOAD", "/dmtcp/lib/libdmtcp.so", 1);
  setenv("DMTCP_ORIG_LD_PRELOAD", "libc.so.6", 1);
  int out[2];
  CHECK(pipe(out) == 0);
  running = 0;
  pid_t child = fork_();
  if (child == 0) {
    close(out[0]);
    dup2_(out[1], STDOUT_FILENO);
    char *const argv[] = {(char *)"sh", (char *)"-c", (char *)"printf %s \"$LD_PRELOAD\"",
                          NULL};
    execvp_("sh", argv);
    _exit(4);
  }
  running = 1;
  close(out[1]);
  char got[128] = {0};
  ssize_t n, len = 0;
  while ((n = read(out[0], got + len, sizeof got - 1 - (size_t)len)) > 0)
    len += n;
  int status = 0;
  CHECK(child > 0 && waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && wrapped_forks == 1);
  CHECK(strcmp(got, "libc.so.6") == 0);
  /* outside such a child, dup2 is DMTCP's (its stand-in ends the process with 3) */
  child = fork();
  if (child == 0) {
    dup2_(STDERR_FILENO, STDERR_FILENO);
    _exit(0);
  }
  CHECK(child > 0 && waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3);

  /* the plugin registers its event hook, then lets the next plugin register; before a
   * checkpoint it points DMTCP back at the launch directory, which a restart had resolved */
  void (*initialize)(void) = (void (*)(void))dlsym(plugin, "dmtcp_initialize_plugin");
  CHECK(initialize);
  if (!initialize)
    return 1;
  initialize();
  CHECK(registered.event_hook && next_initialized);
  CHECK(registered.api_version && strcmp(registered.api_version, "3") == 0);
  if (!registered.event_hook)
    return 1;
  enum { PRECHECKPOINT = 16, RESUME = 17, RESTART = 18 };
  setenv("DMTCP_CHECKPOINT_DIR", "/job/current", 1);
  dmtcp_set_ckpt_dir("/job/gen-1");
  registered.event_hook(RESTART, NULL);
  registered.event_hook(RESUME, NULL);
  CHECK(strcmp(ckpt_dir, "/job/gen-1") == 0);
  registered.event_hook(PRECHECKPOINT, NULL);
  CHECK(strcmp(ckpt_dir, "/job/current") == 0);
  unsetenv("DMTCP_CHECKPOINT_DIR");  /* not launched by dmtcp_launch: left alone */
  dmtcp_set_ckpt_dir("/elsewhere");
  registered.event_hook(PRECHECKPOINT, NULL);
  CHECK(strcmp(ckpt_dir, "/elsewhere") == 0);

  /* exit from dmtcp_ssh's SIGCHLD handler ends it at once, with the status it gave; exit
   * anywhere else runs the exit handlers */
  plugin_exit = (void (*)(int))dlsym(plugin, "exit");
  CHECK(plugin_exit);
  if (!plugin_exit)
    return 1;
  CHECK(exit_status("dmtcp_ssh", 1) == 7);
  CHECK(exit_status("dmtcp_ssh", 0) == 9);
  CHECK(exit_status("python3", 1) == 9);

  if (failures)
    fprintf(stderr, "test_dmtcp_multihost: %d check(s) failed\n", failures);
  else
    printf("test_dmtcp_multihost: all checks passed\n");
  return failures ? 1 : 0;
}
