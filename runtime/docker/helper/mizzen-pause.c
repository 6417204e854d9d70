/*
 * mizzen-pause: the first process of a job's pod on a container engine.
 *
 * A job with sidecars runs as several containers that share one network
 * namespace, as the containers of a Kubernetes pod do. This process holds
 * that namespace: it does nothing but wait, and ends on SIGTERM or SIGINT.
 *
 * `mizzen-pause probe-tcp PORT` exits 0 when something accepts TCP
 * connections on PORT of the pod's localhost (IPv4 or IPv6), 1 when nothing
 * does and 2 when PORT is not a port number. Mizzen runs it inside the pod
 * (exec) to learn when a sidecar that declared `readiness: { tcpPort }` is
 * ready.
 *
 * It is linked statically so that its image needs nothing else.
 */
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void stop(int signal_number) {
  (void)signal_number;
  _exit(0);
}

static int accepts(int family, const struct sockaddr *address, socklen_t length) {
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  int connected = connect(fd, address, length) == 0;
  close(fd);
  return connected;
}

static int probe_tcp(const char *text) {
  char *end = NULL;
  long port = strtol(text, &end, 10);
  if (end == text || *end != '\0' || port < 1 || port > 65535) return 2;

  struct sockaddr_in v4;
  memset(&v4, 0, sizeof v4);
  v4.sin_family = AF_INET;
  v4.sin_port = htons((unsigned short)port);
  v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (accepts(AF_INET, (const struct sockaddr *)&v4, sizeof v4)) return 0;

  struct sockaddr_in6 v6;
  memset(&v6, 0, sizeof v6);
  v6.sin6_family = AF_INET6;
  v6.sin6_port = htons((unsigned short)port);
  v6.sin6_addr = in6addr_loopback;
  if (accepts(AF_INET6, (const struct sockaddr *)&v6, sizeof v6)) return 0;
  return 1;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "probe-tcp") == 0) return probe_tcp(argv[2]);
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  for (;;) pause();
}
