/*
 * DMAPI from C, each figure beside a baseline measured in the same run:
 *   query N        dm_query_session round trips, p50, against a raw Unix
 *                  SOCK_SEQPACKET ping-pong (forked echo process) of the same sizes
 *   events N       dm_send_msg(DM_MSGTYPE_SYNC) from one thread answered by
 *                  another thread's dm_get_events + dm_respond_event: the
 *                  event round trip through the node daemon, p50, against the
 *                  same ping-pong
 *   readinvis PATH N   dm_read_invis of 1 MiB against pread (O_DIRECT) of the
 *                  same range through the mount, MB/s
 * Prints one "BENCH name=value ..." line per figure.
 */
#define _GNU_SOURCE
#include <dmapi.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double p50(double *v, int n)
{
	qsort(v, n, sizeof *v, cmp);
	return v[n / 2];
}

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(1);
}

/* Raw SOCK_SEQPACKET ping-pong, req/resp bytes, p50 µs. */
static double pingpong(int n, size_t req, size_t resp)
{
	int sv[2];
	char buf[4096] = { 0 };
	double *t = malloc(n * sizeof *t);
	pid_t kid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv))
		die("socketpair");
	kid = fork();
	if (kid == 0) {
		close(sv[0]);
		while (recv(sv[1], buf, sizeof buf, 0) > 0)
			send(sv[1], buf, resp, 0);
		_exit(0);
	}
	close(sv[1]);
	for (int i = 0; i < n + n / 10; i++) {
		double s = now_us();
		send(sv[0], buf, req, 0);
		recv(sv[0], buf, sizeof buf, 0);
		if (i >= n / 10)
			t[i - n / 10] = now_us() - s;
	}
	close(sv[0]);
	waitpid(kid, NULL, 0);
	double r = p50(t, n);
	free(t);
	return r;
}

static dm_sessid_t sid;

static void *answerer(void *arg)
{
	static char buf[65536];
	int n = *(int *)arg;
	size_t rlen;

	while (n > 0) {
		if (dm_get_events(sid, 16, DM_EV_WAIT, sizeof buf, buf, &rlen)) {
			if (errno == EINTR)
				continue;
			die("dm_get_events");
		}
		for (dm_eventmsg_t *m = (dm_eventmsg_t *)buf; m; m = DM_STEP_TO_NEXT(m, dm_eventmsg_t *)) {
			if (m->ev_token != DM_INVALID_TOKEN &&
			    dm_respond_event(sid, m->ev_token, DM_RESP_CONTINUE, 0, 0, NULL))
				die("dm_respond_event");
			n--;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	char *ver;
	int n = argc > 2 ? atoi(argv[argc - 1]) : 10000;

	if (argc < 2)
		return 2;
	if (dm_init_service(&ver))
		die("dm_init_service");
	if (dm_create_session(DM_NO_SESSION, "c-bench", &sid))
		die("dm_create_session");
	if (!strcmp(argv[1], "query")) {
		char info[64];
		size_t rlen;
		double *t = malloc(n * sizeof *t);
		for (int i = 0; i < n + n / 10; i++) {
			double s = now_us();
			if (dm_query_session(sid, sizeof info, info, &rlen))
				die("dm_query_session");
			if (i >= n / 10)
				t[i - n / 10] = now_us() - s;
		}
		double q = p50(t, n), b = pingpong(n, 16, 40);
		printf("BENCH query_p50_us=%.1f pingpong_p50_us=%.1f ratio=%.2f\n", q, b, q / b);
	} else if (!strcmp(argv[1], "events")) {
		pthread_t th;
		int total = n + n / 10;
		double *t = malloc(n * sizeof *t);
		char msg[8] = "ping";
		pthread_create(&th, NULL, answerer, &total);
		for (int i = 0; i < total; i++) {
			double s = now_us();
			if (dm_send_msg(sid, DM_MSGTYPE_SYNC, sizeof msg, msg))
				die("dm_send_msg");
			if (i >= n / 10)
				t[i - n / 10] = now_us() - s;
		}
		pthread_join(th, NULL);
		double e = p50(t, n), b = pingpong(n, 64, 64);
		printf("BENCH event_rtt_p50_us=%.1f pingpong_p50_us=%.1f ratio=%.2f\n", e, b, e / b);
	} else if (!strcmp(argv[1], "readinvis") && argc == 4) {
		const size_t len = 1 << 20;
		void *h, *buf;
		size_t hl;
		int fd = open(argv[2], O_RDONLY | O_DIRECT);
		double ti = 0, tp = 0;

		if (fd < 0)
			die("open O_DIRECT");
		if (posix_memalign(&buf, 4096, len))
			die("posix_memalign");
		if (dm_path_to_handle(argv[2], &h, &hl))
			die("dm_path_to_handle");
		for (int i = 0; i < n; i++) {
			double s = now_us();
			if (dm_read_invis(sid, h, hl, DM_NO_TOKEN, 0, len, buf) != (dm_ssize_t)len)
				die("dm_read_invis");
			ti += now_us() - s;
			s = now_us();
			if (pread(fd, buf, len, 0) != (ssize_t)len)
				die("pread");
			tp += now_us() - s;
		}
		double mi = n * (double)len / ti, mp = n * (double)len / tp;
		printf("BENCH read_invis_MBps=%.0f pread_direct_MBps=%.0f ratio=%.2f\n", mi, mp, mi / mp);
	} else {
		return 2;
	}
	dm_destroy_session(sid);
	return 0;
}
